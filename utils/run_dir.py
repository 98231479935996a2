"""The life of an output folder: created and checked once, one writer at a time, recorded arguments
and inputs, ``--overwrite`` that replaces one run folder and nothing else, orphan clean-up and
per-step resume state. This module owns the folder; :mod:`utils.results` only writes files.

A command-line tool opens its folder with :func:`open_run` before any long work::

    with open_run(args.out_dir, plain_args(args), overwrite=args.overwrite, inputs={"--metadata": ...}) as run:
        ...  # write into run.path; a long step keeps its state in StepState(run.path, "erm")

What it guarantees (docs/reliability.md lists the cases and their tests):

- **Checked up front**: the folder path is not empty, not a file or under one; the folder can be
  created and written and has free space, before the lock is taken and anything is trained.
- **Only runs are touched**: a folder that holds files but no readable record of a run of this
  toolkit (``run_args.json``) is refused, with or without ``--overwrite``.
- **One writer**: the lock is taken on the folder's real path (symlinks and ``..`` resolved), in a
  file beside it (``.<name>.lock``; inside it when the parent cannot be written), with an
  exclusive ``flock`` that the kernel drops when the process dies. Long names are shortened with a
  hash, so any valid folder name works.
- **Never mixed**: the run's arguments and a fingerprint of its input files
  (:mod:`utils.fingerprint`) are recorded in ``run_args.json``; a rerun whose arguments or inputs
  differ is refused, naming them. Every resume state records the arguments and inputs that shaped
  it and is checked against the run's when the folder is opened.
- **--overwrite replaces one run folder and nothing else**: never the current folder or one above
  it, a folder holding other runs or a live lock, or a folder holding an input of the run. The old
  folder is moved aside as a whole (``.<name>.replaced``, one rename) and deleted only when the new
  run has finished, so the folder always holds one run. After a kill, the same command continues
  the unfinished new run (same arguments and inputs, no result yet); another command puts the old
  run back.
- **No orphans**: temporary files of an atomic write interrupted by a kill are removed.
- **Resume**: a long step (an ERM training, a pruning, a retraining) saves its state after every
  epoch in ``resume/<step>.pt`` (:class:`StepState`); rerunning the same command finds it and
  continues there. The folder ``resume/`` is deleted when the run finishes.
- **Honest times**: the run's clock (:class:`RunClock`, ``resume/clock.json``) is saved with every
  resume state, so the ``time_s`` of a continued run counts the earlier processes' work too (up to
  their last save: what came after it is done again and counted then).
"""
from __future__ import annotations

import fcntl
import hashlib
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

from utils.distributed import is_main, run_on_main, world_size
from utils.errors import UserError
from utils.fingerprint import Inputs, changed_inputs, fingerprint_inputs, named_inputs
from utils.results import RESULTS_NAME, atomic_write, atomic_write_text

ARGS_NAME = "run_args.json"
CLUSTER_ARGS_NAME = "cluster_args.json"  # the record of a clustering run (cluster/fit.py)
STATE_DIR = "resume"
CLOCK_NAME = "clock.json"
MIN_FREE_BYTES = 64 * 2**20
NOT_COMPARED = ("out_dir", "overwrite", "num_workers", "skip_image_check")
INTERRUPTED_EXIT = 130
SHOWN_DIFFERENCES = 6
NAME_MAX = 255  # bytes in one file name on Linux and macOS file systems
INSIDE_LOCK = ".run.lock"  # the lock's place when the folder's parent cannot be written
WRITE_PROBE = ".write_probe"
NOT_GIVEN = "(no longer given)"


class RunInterrupted(UserError):
    """Ctrl-C inside an open run: the message says where it stopped and what to do."""


@dataclass(frozen=True)
class RunKind:
    """What marks a finished run, where its arguments are recorded, and whether ``--overwrite``
    replaces the whole folder (False: the tool shares the folder with another run's files)."""

    finished: str = RESULTS_NAME
    args_name: str = ARGS_NAME
    replace_folder: bool = True

    def __post_init__(self) -> None:
        RECORD_NAMES.add(self.args_name)


RECORD_NAMES = {ARGS_NAME, CLUSTER_ARGS_NAME}  # the argument records of every kind of run: a folder with one is a run


RESULTS_RUN = RunKind()


def check_folder_path(path: str | os.PathLike, flag: str = "--out_dir") -> Path:
    """``path`` as a real absolute path (symlinks and ``..`` resolved); an empty path and a file at it
    or at any folder above it are refused."""
    if not str(path).strip():
        raise UserError(f"{flag} is empty; pass a folder path (the current folder is never used by default)")
    path = Path(path).expanduser().absolute()
    for place in (path, *path.parents):
        if place.exists() and not place.is_dir():
            where = "is a file" if place == path else f"lies under {place}, which is a file"
            raise UserError(f"{flag} {path} {where}, not a folder; pass a folder path")
    return path.resolve()


def make_folder(path: Path, flag: str = "--out_dir", min_free_bytes: int = MIN_FREE_BYTES) -> Path:
    """Create ``path`` and prove it writable by writing a probe file; require ``min_free_bytes`` free."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path / WRITE_PROBE, "")
        (path / WRITE_PROBE).unlink()
    except OSError as exc:
        raise UserError(f"{flag} {path} cannot be written ({exc.strerror or exc}); "
                        "pass a folder you can write to") from exc
    require_free_space(path, min_free_bytes, flag)
    return path


def check_writable(path: Path, flag: str = "--out_dir") -> None:
    """Without creating anything: ``path``, or the nearest existing folder above it, can be written."""
    place = path
    while not place.exists():
        place = place.parent
    if not os.access(place, os.W_OK | os.X_OK):
        what = "is not writable" if place == path else f"cannot be created: {place} is not writable"
        raise UserError(f"{flag} {path} {what}; pass a folder you can write to")


def require_free_space(path: Path, needed: int, flag: str = "--out_dir") -> None:
    """Refuse to start when the device of ``path`` has less than ``needed`` bytes free."""
    free = shutil.disk_usage(path).free
    if free < needed:
        raise UserError(f"{flag} {path} has {free / 2**20:.0f} MiB free, less than the {needed / 2**20:.0f} MiB "
                        "this run needs; free some space or choose another folder")


def is_orphan(path: Path) -> bool:
    """A temporary file of an interrupted atomic write (``.<name>.<random>.tmp``) or a write probe."""
    return path.name == WRITE_PROBE or (path.name.startswith(".") and path.name.endswith(".tmp"))


def remove_orphans(path: Path) -> list[Path]:
    """Delete temporary files that an atomic write left when it was killed.

    Only safe while holding the folder's lock (no other writer can be mid-write), in a folder known
    to be a run of this toolkit.
    """
    orphans = [p for p in path.rglob(".*") if p.is_file() and is_orphan(p)]
    for orphan in orphans:
        orphan.unlink(missing_ok=True)
    return orphans


def prepare_out_dir(out_dir: str | os.PathLike, overwrite: bool, finished: str = RESULTS_NAME) -> Path:
    """The output folder of a run, prepared by rank 0 under ``torchrun``. Inside :func:`open_run` it is
    that run's folder (all checks done); otherwise (library use) it is checked and created, and a
    finished result is kept unless ``overwrite``."""
    return run_on_main(_prepare_out_dir, out_dir, overwrite, finished, where="while preparing --out_dir")


def _prepare_out_dir(out_dir: str | os.PathLike, overwrite: bool, finished: str) -> Path:
    path = check_folder_path(out_dir)
    if _ACTIVE is not None and _ACTIVE.path == path:
        return Path(out_dir)
    if (path / finished).exists() and not overwrite:
        raise UserError(finished_message(out_dir, finished))
    make_folder(path)
    return Path(out_dir)


def finished_message(out_dir: str | os.PathLike, finished: str) -> str:
    return (f"--out_dir {out_dir} already holds {finished}, a finished result; "
            "choose another --out_dir or pass --overwrite")


def sibling(folder: Path, suffix: str) -> Path:
    """``.<name><suffix>`` beside ``folder``; a name too long for the file system is shortened and
    made unique with a hash of the full name."""
    name = f".{folder.name}{suffix}"
    if len(name.encode()) > NAME_MAX:
        tag = hashlib.sha1(folder.name.encode()).hexdigest()[:12]
        keep = folder.name.encode()[: NAME_MAX - len(suffix.encode()) - len(tag) - 3].decode(errors="ignore")
        name = f".{keep}-{tag}{suffix}"
    return folder.parent / name


def lock_path(folder: Path) -> Path:
    """Where the lock of ``folder`` lives: beside it, or inside it when its parent cannot be written
    (a writable scratch folder under a read-only mount point)."""
    beside = sibling(folder, ".lock")
    if beside.exists() or os.access(folder.parent, os.W_OK | os.X_OK) or not folder.is_dir():
        return beside
    return folder / INSIDE_LOCK


def lock_is_held(path: Path) -> bool:
    """Whether a live process holds the ``flock`` of the lock file ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


class FolderLock:
    """An exclusive, non-blocking ``flock`` on the lock file of a folder (:func:`lock_path`)."""

    def __init__(self, folder: Path, flag: str = "--out_dir") -> None:
        self.folder = folder
        self.path = lock_path(folder)
        self.flag = flag
        self.fd: int | None = None

    def acquire(self) -> None:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                raise UserError(f"{self.flag} {self.folder} cannot be locked: {self.path} cannot be created "
                                f"({exc.strerror or exc}); pass a folder you can write to") from exc
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


def shown(items: list[str]) -> str:
    """The first :data:`SHOWN_DIFFERENCES` items joined, and how many more there are."""
    more = len(items) - SHOWN_DIFFERENCES
    return "; ".join(items[:SHOWN_DIFFERENCES]) + (f" and {more} more" if more > 0 else "")


def read_record(path: Path) -> dict[str, Any] | None:
    """The run record in ``path`` (``tool``, ``args``, ``inputs``), or None when it is not readable."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("args"), dict):
        return None
    return record


def read_args(path: Path) -> dict[str, Any] | None:
    """The recorded arguments in ``path``, or None when there is no readable record."""
    record = read_record(path)
    return None if record is None else record["args"]


def inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies under it."""
    return path == folder or folder in path.parents


def afresh(path: Path) -> str:
    return f"to start afresh pass --overwrite or choose a new --out_dir than {path}"


def _read_clock(path: Path) -> tuple[float, dict[str, float]]:
    """The seconds and marks a clock file holds; none (0) when it is missing or damaged (times only, so
    a damaged file never stops a run)."""
    try:
        saved = json.loads(path.read_text())
        return float(saved["spent_s"]), {str(k): float(v) for k, v in saved["marks"].items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return 0.0, {}


class RunClock:
    """Seconds a run has worked, across the processes that continued it, and named marks on that clock (the
    start of each method), so that a method continued after a kill still reports its whole time.

    With a ``path`` the clock starts where the last :meth:`writer` it gave left it; without one it times
    this process only (a run without a folder)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.before, self.marks = _read_clock(path) if path is not None else (0.0, {})
        self.started = time.monotonic()

    def now(self) -> float:
        """Seconds worked so far by this run's processes (earlier ones up to their last save)."""
        return self.before + time.monotonic() - self.started

    def mark(self, name: str) -> float:
        """The clock's reading when ``name`` first happened in this run (now, unless a process before did it)."""
        if name not in self.marks:
            self.marks[name] = self.now()
        return self.marks[name]

    def writer(self) -> Callable[[], None]:
        """A function that saves the clock as it reads now (called once the resume state it goes with is
        written, so the clock never runs ahead of the work a continued run keeps)."""
        text = json.dumps({"spent_s": round(self.now(), 3), "marks": self.marks}) + "\n"
        path = self.path
        if path is None:
            return lambda: None
        return lambda: atomic_write_text(path, text)


class RunDir:
    """An open run: its folder, lock, recorded arguments and inputs; a context manager (module docstring)."""

    def __init__(self, path: Path, args: dict[str, Any], kind: RunKind, overwrite: bool, tool: str) -> None:
        self.path = path
        self.args = args
        self.kind = kind
        self.overwrite = overwrite
        self.tool = tool
        self.backup = sibling(path, ".replaced")
        self.inputs: dict[str, str] = {}
        self.previous_splits: dict[str, int] | None = None
        self.lock: FolderLock | None = None
        self.clock = RunClock()

    # -- opening ---------------------------------------------------------------------------------
    def open(self, inputs: Inputs, min_free_bytes: int) -> "RunDir":
        self._check_writable()
        self.lock = FolderLock(self.path)
        self.lock.acquire()
        try:
            self._recover_interrupted_overwrite()
            self._refuse_foreign_folder()
            self._drop_states_of_finished_run()
            self.inputs = fingerprint_inputs(inputs)
            self.previous_splits = (self._record() or {}).get("splits") if self._holds_outputs() else None
            if self.overwrite and self.kind.replace_folder and self._has_content() and not self._continues():
                self._check_replaceable(inputs)
                self.path.rename(self.backup)
                self.previous_splits = None
            elif not self.overwrite:
                self._refuse_finished_or_other_run()
            self._check_states()
            make_folder(self.path, min_free_bytes=min_free_bytes)
            remove_orphans(self.path)
            self._write_record(self.previous_splits)
            self.clock = RunClock(self.path / STATE_DIR / CLOCK_NAME)
        except BaseException:
            self.lock.release()
            raise
        return self

    def _write_record(self, splits: dict[str, int] | None) -> None:
        record = {"tool": self.tool, "args": self.args, "inputs": self.inputs}
        if splits is not None:
            record["splits"] = splits
        atomic_write_text(self.path / self.kind.args_name, json.dumps(record, indent=2) + "\n")

    def record_splits(self, sizes: dict[str, int]) -> None:
        """The split sizes, once the data is built: recorded, and compared with those of the run continued."""
        if self.previous_splits is not None and self.previous_splits != sizes:
            changes = ", ".join(f"{split} {self.previous_splits.get(split)} -> {n}" for split, n in sizes.items()
                                if self.previous_splits.get(split) != n)
            raise UserError(f"the data of the unfinished run in {self.path} changed since it started (samples per "
                            f"split: {changes}); its finished steps used the old data; {afresh(self.path)}")
        self.previous_splits = sizes
        self._write_record(sizes)

    def _check_writable(self) -> None:
        """Before the lock is created: the folder can be written (created first when it is new)."""
        check_writable(self.path)
        if not self.path.exists():
            make_folder(self.path)

    def _entries(self) -> list[Path]:
        """What the folder holds, less leftovers of this toolkit's own writes (temporary files, probe, lock)."""
        if not self.path.is_dir():
            return []
        return [p for p in self.path.iterdir() if not is_orphan(p) and p.name != INSIDE_LOCK]

    def _has_content(self) -> bool:
        return bool(self._entries())

    def _holds_outputs(self) -> bool:
        return any(p.name not in RECORD_NAMES for p in self._entries())

    def _record(self) -> dict[str, Any] | None:
        return read_record(self.path / self.kind.args_name)

    def _differences(self) -> tuple[list[str], list[str]]:
        """The differing arguments and changed inputs against the record (both empty without one)."""
        record = self._record()
        if record is None:
            return [], []
        return differing_args(record["args"], self.args), changed_inputs(record.get("inputs") or {}, self.inputs)

    def _same_run(self) -> bool:
        return self._record() is not None and self._differences() == ([], [])

    def _continues(self) -> bool:
        """``--overwrite`` on the unfinished run of the same command (killed before it finished): continue it."""
        if (self.path / self.kind.finished).exists() or not self._same_run():
            return False
        print(f"note: {self.path} holds the unfinished run of this same command; continuing it "
              "(--overwrite replaces a finished run or one with other arguments or inputs)", file=sys.stderr)
        return True

    def _refuse_foreign_folder(self) -> None:
        """A folder with files but no readable record of a run of this toolkit is never written into."""
        if not self._has_content():
            return
        if any(read_record(self.path / name) is not None for name in RECORD_NAMES):
            return
        what = f"resume states ({STATE_DIR}/*.pt)" if any((self.path / STATE_DIR).glob("*.pt")) else "files"
        raise UserError(f"--out_dir {self.path} holds {what} but no readable {self.kind.args_name}, so it is not "
                        "a run of this toolkit; nothing was changed; choose a new or empty "
                        "--out_dir (or delete that folder yourself if it is a run you no longer need)")

    def _drop_states_of_finished_run(self) -> None:
        """A kill between writing the result and cleaning up leaves resume states nothing will use."""
        if self.kind.replace_folder and (self.path / self.kind.finished).exists():
            shutil.rmtree(self.path / STATE_DIR, ignore_errors=True)

    def _recover_interrupted_overwrite(self) -> None:
        """An earlier ``--overwrite`` was killed: keep one run of the two, never both."""
        if not self.backup.exists():
            return
        if not self._has_content():  # killed between the rename and the first write
            shutil.rmtree(self.path, ignore_errors=True)
            self.backup.rename(self.path)
        elif (self.path / self.kind.finished).exists() or self._same_args():
            shutil.rmtree(self.backup)  # the new run finished, or is being continued
        elif read_record(self.path / self.kind.args_name) is not None:
            shutil.rmtree(self.path)
            self.backup.rename(self.path)
            print(f"note: an interrupted --overwrite had left an unfinished run in {self.path}; "
                  "the run it was replacing is back in place", file=sys.stderr)
        else:
            raise UserError(f"--out_dir {self.path} is not the run an interrupted --overwrite left, and "
                            f"{self.backup} holds the run it replaced; move one of them away yourself")

    def _same_args(self) -> bool:
        record = self._record()
        return record is not None and not differing_args(record["args"], self.args)

    def _refuse_finished_or_other_run(self) -> None:
        if (self.path / self.kind.finished).exists():
            raise UserError(finished_message(self.path, self.kind.finished))
        if not self._holds_outputs():  # a start that failed before writing anything leaves nothing to mix
            return
        others = self._other_records() if self.kind.replace_folder and self._record() is None else []
        if others:
            raise UserError(f"--out_dir {self.path} holds a run of another tool ({', '.join(others)}) "
                            f"and no {self.kind.args_name}; nothing was changed; choose another --out_dir")
        differ, changed = self._differences()
        if differ:
            raise UserError(f"--out_dir {self.path} holds an unfinished run started with other arguments: "
                            f"{shown(differ)}; rerun with its arguments, choose another --out_dir, "
                            "or pass --overwrite")
        if changed:
            raise UserError(f"--out_dir {self.path} holds an unfinished run whose inputs changed since it "
                            f"started: {shown([f'{name} {self.inputs.get(name, NOT_GIVEN)}' for name in changed])}; "
                            f"its finished steps used the old files; {afresh(self.path)}")

    def _check_replaceable(self, inputs: Inputs) -> None:
        """``--overwrite`` deletes exactly one run folder: refuse anything else, naming why."""
        if not os.access(self.path.parent, os.W_OK | os.X_OK):
            raise UserError(f"--overwrite moves {self.path} aside first, but {self.path.parent} is not writable; "
                            "nothing was changed; empty the folder yourself or choose another --out_dir")
        cwd = Path.cwd().resolve()
        if inside(cwd, self.path):
            raise UserError(f"--overwrite would replace {self.path}, which is the current folder or holds it; "
                            "nothing was changed; run from another folder or pass the run folder's own path")
        for name, item in named_inputs(inputs).items():
            if inside(Path(item).expanduser().resolve(), self.path):
                flag = name if name.startswith("--") else "an input"
                raise UserError(f"{flag} {item} lies inside --out_dir {self.path}, which --overwrite replaces; "
                                "nothing was changed; copy it elsewhere or choose another --out_dir")
        own_lock = self.lock.path if self.lock is not None else None
        for place in self.path.rglob("*"):
            if place.name.endswith(".lock") and place != own_lock and lock_is_held(place):
                raise UserError(f"--overwrite would replace {self.path}, but a live run holds {place}; "
                                "nothing was changed; wait for it or choose another --out_dir")
            if place.name in RECORD_NAMES and place.parent != self.path:
                raise UserError(f"--overwrite would replace {self.path}, which holds another run "
                                f"({place.parent}); nothing was changed; pass that run's own folder")
        others = self._other_records()
        if others:
            raise UserError(f"--overwrite would replace {self.path}, which also holds the run recorded in "
                            f"{others[0]} (e.g. clusters of this model); nothing was changed; move that run's files "
                            "away yourself or choose another --out_dir")

    def _other_records(self) -> list[str]:
        """The argument records of other kinds of run in this folder (a clustering run shares ERM folders)."""
        return sorted(name for name in RECORD_NAMES - {self.kind.args_name}
                      if read_record(self.path / name) is not None)

    def _check_states(self) -> None:
        """Every resume state that a continued run would use was shaped by the same arguments and inputs."""
        folder = self.path / STATE_DIR
        if not self.kind.replace_folder or not folder.is_dir():  # a tool sharing the folder keeps no states
            return
        for path in sorted(folder.glob("*.pt")):
            refuse_mismatched_state(path, self.args, self.inputs)

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
        if self.lock is not None:
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


def run_clock() -> RunClock:
    """The clock of the open run, or a clock of this process alone when no run is open."""
    return _ACTIVE.clock if _ACTIVE is not None else RunClock()


def record_splits(sizes: dict[str, int]) -> None:
    """Record the split sizes with the open run (rank 0 under ``torchrun``); a continued run whose
    data now gives other sizes is refused (:meth:`RunDir.record_splits`). Nothing outside a run."""
    run_on_main(lambda: _ACTIVE.record_splits(sizes) if _ACTIVE is not None else None,
                where="while checking the data against the run's record")


def refuse_mismatched_state(path: Path, args: dict[str, Any], inputs: dict[str, str]) -> None:
    """Refuse a resume state whose recorded arguments (seed included) or inputs are not the run's."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # a save is atomic, so this is damage from outside
        raise UserError(f"resume state {path} is unreadable ({type(exc).__name__}); delete it to run "
                        f"step {path.stem} again from its start") from exc
    written_by = state.get("world_size", 1) if isinstance(state, dict) else 1
    if written_by != world_size():
        raise UserError(f"resume states in {path.parent} were written by {written_by} process(es), this run has "
                        f"{world_size()}; continue with {written_by}, or delete {path.parent} to run the unfinished "
                        "steps again from their start")
    run = state.get("run") if isinstance(state, dict) else None
    if not isinstance(run, dict) or not isinstance(run.get("args"), dict):
        raise UserError(f"resume state {path} holds no record of the arguments that shaped it; delete it to run "
                        f"step {path.stem} again from its start")
    differ = differing_args(run["args"], args)
    if differ:
        raise UserError(f"resume state {path} was written by a run with other arguments: {shown(differ)}; "
                        f"delete it to run step {path.stem} again from its start, or rerun with its arguments")
    changed = changed_inputs(run.get("inputs") or {}, inputs)
    if changed:
        raise UserError(f"resume state {path} was written when inputs {', '.join(changed)} were other files; "
                        f"delete it to run step {path.stem} again from its start, or {afresh(path.parents[1])}")


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
        write_clock: Callable[[], None] = lambda: None
        if _ACTIVE is not None:  # what shaped the state, checked when the run is opened again
            content["run"] = {"args": _ACTIVE.args, "inputs": _ACTIVE.inputs}
            write_clock = _ACTIVE.clock.writer()

        def write(value: dict[str, Any]) -> None:
            atomic_write(self.path, lambda tmp: torch.save(value, tmp))
            write_clock()

        if not self.background:
            wait_for_saves()
            write(content)
            return
        content = _cpu_copy(content)
        _WRITER.submit(lambda: write(content))

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
             inputs: Inputs = (), tool: str = "", min_free_bytes: int = MIN_FREE_BYTES) -> RunDir:
    """Open the run in ``out_dir`` (checks, lock, ``--overwrite``, argument and input record; module docstring).

    ``args`` are plain values (``utils.checkpoint.plain_args``); ``inputs`` are the files and folders
    the run reads, ``{flag: path}`` (or a list of paths): they are fingerprinted, and ``--overwrite``
    never replaces a folder holding one.
    """
    global _ACTIVE
    run = RunDir(check_folder_path(out_dir), args, kind, overwrite, tool).open(inputs, min_free_bytes)
    _ACTIVE = run
    return run
