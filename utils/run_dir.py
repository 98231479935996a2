"""The life of an output folder: created and checked once, one writer at a time, recorded arguments,
``--overwrite`` that never mixes two runs, orphan clean-up and per-step resume state.

A command-line tool opens its folder with :func:`open_run` before any long work::

    with open_run(args.out_dir, plain_args(args), overwrite=args.overwrite) as run:
        ...  # write into run.path; a long step keeps its state in StepState(run.path, "erm")

What it guarantees:

- **Checked up front**: the folder (and no file in its place or above it) can be created, is
  writable and has free space, before anything is trained.
- **One writer**: a lock file beside the folder (``.<name>.lock``) holds an exclusive ``flock``.
  The kernel drops it when the process dies, so a killed run never leaves a stuck lock; the file
  names the holder (pid, host, start time) for the message a second run prints.
- **Never mixed**: the run's arguments are recorded in ``run_args.json``; a rerun whose arguments
  differ is refused with the differing flags named. ``--overwrite`` first moves the old folder
  aside as a whole (``.<name>.replaced``, one rename) and deletes it only when the new run has
  finished, so the folder always holds one run. After a kill, the next start puts the old run
  back, unless it is the same command again (then the unfinished new run is kept).
- **No orphans**: temporary files of an atomic write interrupted by a kill are removed.
- **Resume**: a long step (an ERM training, a pruning, a retraining) saves its state after every
  epoch in ``resume/<step>.pt`` (:class:`StepState`); rerunning the same command finds it and
  continues there. The folder ``resume/`` is deleted when the run finishes.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from utils.distributed import is_main, world_size
from utils.errors import UserError
from utils.results import RESULTS_NAME, atomic_write, atomic_write_text

ARGS_NAME = "run_args.json"
STATE_DIR = "resume"
MIN_FREE_BYTES = 64 * 2**20
NOT_COMPARED = ("out_dir", "overwrite", "num_workers", "skip_image_check")
INTERRUPTED_EXIT = 130
SHOWN_DIFFERENCES = 6


class RunInterrupted(UserError):
    """Ctrl-C inside an open run: the message says where it stopped and what to do."""


@dataclass(frozen=True)
class RunKind:
    """What marks a finished run, where its arguments are recorded, and whether ``--overwrite``
    replaces the whole folder (False: the tool shares the folder with another run's files)."""

    finished: str = RESULTS_NAME
    args_name: str = ARGS_NAME
    replace_folder: bool = True


RESULTS_RUN = RunKind()


def check_folder_path(path: Path, flag: str = "--out_dir") -> Path:
    """``path`` made absolute; a file at it or at any folder above it is named."""
    path = Path(path).expanduser().absolute()
    for place in (path, *path.parents):
        if place.exists() and not place.is_dir():
            where = "is a file" if place == path else f"lies under {place}, which is a file"
            raise UserError(f"{flag} {path} {where}, not a folder; pass a folder path")
    return path


def make_folder(path: Path, flag: str = "--out_dir", min_free_bytes: int = MIN_FREE_BYTES) -> Path:
    """Create ``path`` and prove it writable by writing a probe file; require ``min_free_bytes`` free."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path / ".write_probe", "")
        (path / ".write_probe").unlink()
    except OSError as exc:
        raise UserError(f"{flag} {path} cannot be written ({exc.strerror or exc}); "
                        "pass a folder you can write to") from exc
    require_free_space(path, min_free_bytes, flag)
    return path


def require_free_space(path: Path, needed: int, flag: str = "--out_dir") -> None:
    """Refuse to start when the device of ``path`` has less than ``needed`` bytes free."""
    free = shutil.disk_usage(path).free
    if free < needed:
        raise UserError(f"{flag} {path} has {free / 2**20:.0f} MiB free, less than the {needed / 2**20:.0f} MiB "
                        "this run needs; free some space or choose another folder")


def remove_orphans(path: Path) -> list[Path]:
    """Delete temporary files that an atomic write (``.<name>.<random>.tmp``) left when it was killed.

    Only safe while holding the folder's lock: no other writer can be mid-write.
    """
    orphans = [p for p in path.rglob(".*.tmp") if p.is_file()]
    for orphan in orphans:
        orphan.unlink(missing_ok=True)
    return orphans


def prepare_out_dir(out_dir: str | os.PathLike, overwrite: bool, finished: str = RESULTS_NAME) -> Path:
    """The output folder of a run. Inside :func:`open_run` it is that run's folder (all checks done);
    otherwise (library use) it is checked and created, and a finished result is kept unless ``overwrite``."""
    path = check_folder_path(Path(out_dir))
    if _ACTIVE is not None and _ACTIVE.path == path:
        return Path(out_dir)
    if (path / finished).exists() and not overwrite:
        raise UserError(finished_message(out_dir, finished))
    make_folder(path)
    return Path(out_dir)


def finished_message(out_dir: str | os.PathLike, finished: str) -> str:
    return (f"--out_dir {out_dir} already holds {finished}, a finished result; "
            "choose another --out_dir or pass --overwrite")


class FolderLock:
    """An exclusive, non-blocking ``flock`` on ``.<name>.lock`` beside a folder."""

    def __init__(self, folder: Path, flag: str = "--out_dir") -> None:
        self.folder = folder
        self.path = folder.parent / f".{folder.name}.lock"
        self.flag = flag
        self.fd: int | None = None

    def acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 4096).decode(errors="replace")
                os.close(fd)
                raise UserError(self._busy_message(holder)) from None
            except OSError as exc:  # a file system without locks: run, but say so
                print(f"warning: cannot lock {self.path} ({exc.strerror}); a second run on this folder would "
                      "not be noticed", file=sys.stderr)
            try:
                same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same_file = False
            if same_file:  # else the previous holder deleted it between our open and flock: retry
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        self.fd = fd

    def _busy_message(self, holder: str) -> str:
        try:
            info = json.loads(holder)
            who = f"pid {info['pid']} on {info['host']}, started {info['started']}"
        except (ValueError, KeyError, TypeError):
            who = "another process"
        return (f"{self.flag} {self.folder} is in use by another run ({who}); "
                "wait for it to finish or choose another folder")

    def release(self) -> None:
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)  # while still held, so no one else holds this inode
        os.close(self.fd)
        self.fd = None


def differing_args(recorded: dict[str, Any], requested: dict[str, Any],
                   ignore: Iterable[str] = NOT_COMPARED) -> list[str]:
    """``--flag NEW (recorded OLD)`` for each argument that differs, ignoring ``ignore``."""
    skip = set(ignore)
    keys = sorted((set(recorded) | set(requested)) - skip)
    return [f"--{k} {requested.get(k, '(absent)')} (recorded {recorded.get(k, '(absent)')})"
            for k in keys if recorded.get(k) != requested.get(k)]


def read_args(path: Path) -> dict[str, Any] | None:
    """The recorded arguments in ``path``, or None when there is no readable record."""
    try:
        return json.loads(path.read_text())["args"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


class RunDir:
    """An open run: its folder, lock and recorded arguments; a context manager (see module docstring)."""

    def __init__(self, path: Path, args: dict[str, Any], kind: RunKind, overwrite: bool, tool: str) -> None:
        self.path = path
        self.args = args
        self.kind = kind
        self.overwrite = overwrite
        self.tool = tool
        self.backup = path.parent / f".{path.name}.replaced"
        self.lock = FolderLock(path)

    # -- opening ---------------------------------------------------------------------------------
    def open(self, inputs: Iterable[str | os.PathLike], min_free_bytes: int) -> "RunDir":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        try:
            self._recover_interrupted_overwrite()
            self._refuse_finished_or_other_args()
            if self.overwrite and self.kind.replace_folder and self._has_content():
                self._move_old_aside(inputs)
            make_folder(self.path, min_free_bytes=min_free_bytes)
            remove_orphans(self.path)
            atomic_write_text(self.path / self.kind.args_name,
                              json.dumps({"tool": self.tool, "args": self.args}, indent=2) + "\n")
        except BaseException:
            self.lock.release()
            raise
        return self

    def _has_content(self) -> bool:
        return self.path.is_dir() and any(self.path.iterdir())

    def _holds_outputs(self) -> bool:
        return any(p.name != self.kind.args_name for p in self.path.iterdir())

    def _recorded_args(self) -> dict[str, Any] | None:
        return read_args(self.path / self.kind.args_name)

    def _same_args(self) -> bool:
        recorded = self._recorded_args()
        return recorded is not None and not differing_args(recorded, self.args)

    def _recover_interrupted_overwrite(self) -> None:
        """An earlier ``--overwrite`` was killed: keep one run of the two, never both."""
        if not self.backup.exists():
            return
        if not self.path.exists():
            self.backup.rename(self.path)
        elif (self.path / self.kind.finished).exists() or self._same_args():
            shutil.rmtree(self.backup)  # the new run finished, or is being continued
        else:
            shutil.rmtree(self.path)
            self.backup.rename(self.path)
            print(f"note: an interrupted --overwrite had left an unfinished run in {self.path}; "
                  "the run it was replacing is back in place", file=sys.stderr)

    def _refuse_finished_or_other_args(self) -> None:
        if self.overwrite:
            return
        if (self.path / self.kind.finished).exists():
            raise UserError(finished_message(self.path, self.kind.finished))
        recorded = self._recorded_args()
        differ = differing_args(recorded, self.args) if recorded is not None else []
        if differ and self._holds_outputs():  # a start that failed before writing anything leaves nothing to mix
            raise UserError(f"--out_dir {self.path} holds an unfinished run started with other arguments: "
                            f"{'; '.join(differ[:SHOWN_DIFFERENCES])}"
                            f"{f' and {len(differ) - SHOWN_DIFFERENCES} more' if len(differ) > SHOWN_DIFFERENCES else ''}"
                            "; rerun with its arguments, choose another --out_dir, "
                            "or pass --overwrite")

    def _move_old_aside(self, inputs: Iterable[str | os.PathLike]) -> None:
        for item in inputs:
            if item and self.path in Path(item).expanduser().absolute().parents:
                raise UserError(f"{item} lies inside --out_dir {self.path}, which --overwrite replaces; "
                                "copy it elsewhere or choose another --out_dir")
        self.path.rename(self.backup)

    # -- closing ---------------------------------------------------------------------------------
    def finish(self) -> None:
        """The run completed: drop the replaced run and the resume states."""
        wait_for_saves()
        if self.backup.exists():
            shutil.rmtree(self.backup)
        shutil.rmtree(self.path / STATE_DIR, ignore_errors=True)

    def close(self) -> None:
        global _ACTIVE
        try:
            wait_for_saves()  # no write may outlive the lock
        except Exception:  # noqa: BLE001 - the run is failing already; that first error is the one to show
            pass
        self.lock.release()
        if _ACTIVE is self:
            _ACTIVE = None

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: Any) -> None:
        try:
            if kind is None:
                self.finish()
        finally:
            self.close()
        if kind is not None and issubclass(kind, KeyboardInterrupt):
            from utils.runtime import current_task  # here: runtime is not needed to open a run
            where = f" during {current_task()}" if current_task() else ""
            raise RunInterrupted(f"interrupted{where}; {self.path} keeps every finished epoch and method; rerun "
                                 "the same command to continue from there") from None


_ACTIVE: RunDir | None = None


def _cpu_copy(value: Any) -> Any:
    """``value`` with every tensor copied to the CPU: training may change the originals in place."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _cpu_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu_copy(v) for v in value)
    return value


class _BackgroundWriter:
    """One thread that writes resume states while a GPU goes on training; a failed write (e.g. a full
    disk) is raised by the next call. Only one write is in flight: the next one waits for it."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def submit(self, write: Callable[[], Any]) -> None:
        self.wait()

        def run() -> None:
            try:
                write()
            except BaseException as exc:  # noqa: BLE001 - handed to the training thread by wait()
                self.error = exc

        self.thread = threading.Thread(target=run, name="resume-writer")
        self.thread.start()

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            error, self.error = self.error, None
            raise error


_WRITER = _BackgroundWriter()


def wait_for_saves() -> None:
    """Block until every resume state handed to the background writer is on disk (or raise its error)."""
    _WRITER.wait()


class StepState:
    """The resume file of one long step of a run, ``<folder>/resume/<name>.pt``.

    Saved atomically (a kill leaves the previous state), by rank 0 only under ``torchrun``; every
    rank loads it. Each state records the number of processes that wrote it: a run continued with
    another number would draw other batches, so it is refused. With ``background`` (runs on a GPU)
    the state is copied to the CPU and written by a thread while training goes on, so a kill just
    after an epoch can lose that epoch too; on the CPU the write is done before training goes on.
    """

    def __init__(self, folder: str | os.PathLike, name: str, background: bool = False) -> None:
        self.name = name
        self.path = Path(folder) / STATE_DIR / f"{name}.pt"
        self.background = background

    def save(self, state: dict[str, Any]) -> None:
        """Replace the saved state with ``state`` (tensors and plain values only)."""
        if not is_main():
            return
        self.path.parent.mkdir(exist_ok=True)
        content = {**state, "world_size": world_size()}
        if not self.background:
            wait_for_saves()
            atomic_write(self.path, lambda tmp: torch.save(content, tmp))
            return
        content = _cpu_copy(content)
        _WRITER.submit(lambda: atomic_write(self.path, lambda tmp: torch.save(content, tmp)))

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when the step never saved one."""
        wait_for_saves()
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a save is atomic, so this is damage from outside
            raise UserError(f"resume state {self.path} is unreadable ({type(exc).__name__}); delete it to run "
                            f"step {self.name} again from its start") from exc
        if state.get("world_size", 1) != world_size():
            raise UserError(f"resume state {self.path} was written by {state.get('world_size', 1)} process(es), "
                            f"this run has {world_size()}; continue with the same number of processes, or delete "
                            f"it to run step {self.name} again from its start")
        return state

    def clear(self) -> None:
        """Forget the state (its step's outputs are saved elsewhere now)."""
        wait_for_saves()
        if is_main():
            self.path.unlink(missing_ok=True)


def open_run(out_dir: str | os.PathLike, args: dict[str, Any], overwrite: bool, kind: RunKind = RESULTS_RUN,
             inputs: Iterable[str | os.PathLike] = (), tool: str = "", min_free_bytes: int = MIN_FREE_BYTES) -> RunDir:
    """Open the run in ``out_dir`` (checks, lock, ``--overwrite``, argument record; module docstring).

    ``args`` are plain values (``utils.checkpoint.plain_args``); ``inputs`` are files the run reads,
    which must not lie in a folder that ``--overwrite`` replaces.
    """
    global _ACTIVE
    run = RunDir(check_folder_path(Path(out_dir)), args, kind, overwrite, tool).open(inputs, min_free_bytes)
    _ACTIVE = run
    return run

