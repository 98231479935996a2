"""Where the jobs of a sweep run: :func:`execute` runs one job in the current process (the same
function on every executor), :func:`run_local` runs N at once on this machine, :func:`run_submitit`
sends them to Slurm (or to submitit's local executor, which runs them here the same way).

A job is one ``run.py`` or ``invariant_learning/irm.py`` run in its own folder; its output goes to
its log file. The tool is called in-process (or, with ``nproc > 1``, as a ``torchrun`` job), so
the run lifecycle (lock, recorded arguments, resume) does the bookkeeping and a failing job ends
with its own one-line error, the last line of its log.

Locally each job is a process forked from a fork server that imported the tools once: a job does
not pay the import of torch again, and the server never ran a parallel region or touched CUDA, so
its children can set their own thread count and ``CUDA_VISIBLE_DEVICES``.
"""
from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import multiprocessing.connection
import multiprocessing.forkserver
import os
import resource
import subprocess
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.errors import UserError  # noqa: E402
from utils.results import RESULTS_NAME  # noqa: E402
from utils.run_dir import ARGS_NAME, NOT_COMPARED, differing_args, read_args  # noqa: E402

TOOLS = {"run": ("run", "run.py"), "irm": ("cli.irm", "invariant_learning/irm.py")}
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
INTERRUPTED_EXIT = 130
MARK = "=== "  # the sweep's own lines in a job's log: the command, then the exit code and times


@dataclass(frozen=True)
class Job:
    """One run of a sweep: the tool, its arguments (``--out_dir`` included), where its output goes."""

    name: str
    tool: str
    argv: tuple[str, ...]
    folder: str
    log: str
    cwd: str
    threads: int | None = None
    nproc: int = 1


@dataclass(frozen=True)
class Outcome:
    """How a job ended: ``finished`` or ``failed`` (with the last line of its log), and its seconds."""

    job: Job
    status: str
    error: str = ""
    seconds: float = 0.0


def last_line(log: str | os.PathLike) -> str:
    """The last non-empty line of a log (after the last carriage return, for progress bars)."""
    try:
        text = Path(log).read_text(errors="replace")
    except OSError:
        return "(no log)"
    lines = [line.rsplit("\r", 1)[-1].strip() for line in text.splitlines()]
    return next((line for line in reversed(lines) if line and not line.startswith(MARK)), "(empty log)")


@contextlib.contextmanager
def output_to(log: Path) -> Iterator[None]:
    """Send this process's output to ``log``: Python's ``sys.stdout``/``sys.stderr`` and file descriptors
    1 and 2 (so subprocesses and C libraries too)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "a", buffering=1) as stream:
        try:
            os.dup2(stream.fileno(), 1)
            os.dup2(stream.fileno(), 2)
            with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
                yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for handle in saved:
                os.close(handle)


@contextlib.contextmanager
def in_folder(folder: str) -> Iterator[None]:
    """Work in the sweep's folder (relative paths of the base command), then come back."""
    here = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(here)


def torchrun_command(job: Job) -> list[str]:
    """The ``torchrun`` command of a data-parallel job (a free port per job, so jobs can share a node)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={job.nproc}",
            str(ROOT / TOOLS[job.tool][1]), *job.argv]


def _run_tool(job: Job) -> int:
    if job.nproc > 1:
        return subprocess.call(torchrun_command(job))
    if job.threads:
        import torch

        torch.set_num_threads(job.threads)
    return importlib.import_module(TOOLS[job.tool][0]).main(list(job.argv))


def cpu_seconds() -> float:
    """CPU time of this process and of its finished subprocesses (a torchrun job's workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def differences(job: Job, compare_device: bool = True) -> list[str]:
    """The flags whose values recorded in the job's folder differ from the job's (empty: the same run).
    The tool resolves ``--device auto`` where this runs, so a submitting node compares without it."""
    recorded = read_args(Path(job.folder) / ARGS_NAME)
    if recorded is None:
        return ["(no readable run_args.json)"]
    requested = importlib.import_module(TOOLS[job.tool][0]).requested_args(list(job.argv))
    return differing_args(recorded, requested, NOT_COMPARED if compare_device else (*NOT_COMPARED, "device"))


def reusable(job: Job) -> bool:
    """The job's folder holds its finished run (checked again where the job runs: a submitting node
    may not have resolved its arguments)."""
    if "--overwrite" in job.argv or not (Path(job.folder) / RESULTS_NAME).exists():
        return False
    try:
        return not differences(job)
    except UserError:
        return False


def execute(job: Job) -> Outcome:
    """Run ``job`` here, its output appended to its log; never raises for a failing run."""
    started, cpu = time.time(), cpu_seconds()
    if job.threads:
        os.environ.update({var: str(job.threads // max(1, job.nproc) or 1) for var in THREAD_VARS})
    with in_folder(job.cwd), output_to(Path(job.log)):
        print(f"{MARK}{time.strftime('%Y-%m-%d %H:%M:%S')} {job.tool}: {' '.join(job.argv)}", flush=True)
        try:
            code = 0 if reusable(job) else _run_tool(job)
        except KeyboardInterrupt:
            code = INTERRUPTED_EXIT
        except SystemExit as exc:  # argparse refusing a flag (it printed why)
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except BaseException:  # noqa: BLE001 - a bug in one job must not stop the others
            traceback.print_exc()
            code = 1
        seconds = time.time() - started
        print(f"{MARK}exit {code}: {seconds:.1f} s wall, {cpu_seconds() - cpu:.1f} s CPU", flush=True)
    if code == 0:
        return Outcome(job, "finished", seconds=seconds)
    return Outcome(job, "failed", last_line(job.log), seconds)


def _local_child(job: Job, environment: dict[str, str]) -> None:
    """A job process forked from the fork server: the sweep's environment of now, then the job."""
    os.environ.clear()
    os.environ.update(environment)
    sys.exit(0 if execute(job).status == "finished" else 1)


def start_fork_server() -> None:
    """Start the fork server with one thread per library: a thread pool started by its imports would be
    inherited broken by every forked job (OpenMP hangs at the job's first parallel region)."""
    saved = {var: os.environ.get(var) for var in THREAD_VARS}
    os.environ.update({var: "1" for var in THREAD_VARS})
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


def run_local(jobs: list[Job], slots: list[dict[str, str]], done: Callable[[Outcome], None]) -> list[Outcome]:
    """Run ``jobs`` on this machine, one per slot at a time (a slot is the environment a job gets on top
    of its own, e.g. its ``CUDA_VISIBLE_DEVICES``); ``done`` is told of each outcome as it comes."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__, *(module for module, _ in TOOLS.values())])
    start_fork_server()
    pending, free = deque(jobs), list(slots)
    running: dict[Any, tuple[Any, Job, dict[str, str], float]] = {}
    outcomes = []
    try:
        while pending or running:
            while pending and free:
                job, slot = pending.popleft(), free.pop(0)
                process = context.Process(target=_local_child, args=(job, {**os.environ, **slot}), name=job.name)
                process.start()
                running[process.sentinel] = (process, job, slot, time.time())
            for sentinel in multiprocessing.connection.wait(list(running)):
                process, job, slot, started = running.pop(sentinel)
                process.join()
                free.append(slot)
                seconds = time.time() - started
                outcome = (Outcome(job, "finished", seconds=seconds) if process.exitcode == 0 else
                           Outcome(job, "failed", _death(process.exitcode) or last_line(job.log), seconds))
                outcomes.append(outcome)
                done(outcome)
    except KeyboardInterrupt:
        for process, *_ in running.values():  # they got the Ctrl-C too and are saving their state
            process.join(timeout=60)
            if process.is_alive():
                process.terminate()
        raise
    return outcomes


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"the job process was killed by signal {-exitcode} (out of memory?)"
    return ""


def make_executor(folder: Path, cluster: str, parameters: dict[str, Any]) -> Any:
    """A submitit executor for ``cluster`` (slurm or local); its jobs import this repository's modules."""
    try:
        import submitit
    except ImportError:
        raise UserError("--executor slurm/submitit_local need submitit: pip install submitit") from None
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    except RuntimeError as exc:  # no srun here
        raise UserError(f"--executor slurm: {exc} Submit from a node of the cluster, or use --executor local "
                        "(or submitit_local to try the sweep here)") from None
    executor.update_parameters(**parameters)
    return executor


def run_submitit(jobs: list[Job], folder: Path, cluster: str, parameters: dict[str, Any],
                 done: Callable[[Outcome], None]) -> list[Outcome]:
    """Submit ``jobs`` as one job array through submitit (``cluster`` slurm, or local to run them here the
    same way) and wait for them; a job that submitit itself reports failed is listed with its last line."""
    executor = make_executor(folder, cluster, parameters)
    submitted = executor.map_array(execute, jobs)
    print(f"submitted {len(submitted)} job(s) to {cluster} (submitit files: {folder})", flush=True)
    outcomes = []
    try:
        for job, handle in zip(jobs, submitted):
            try:
                outcome = handle.result()
            except Exception as exc:  # noqa: BLE001 - submitit's own failure (timeout, node failure)
                lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
                outcome = Outcome(job, "failed", f"{type(exc).__name__}: {lines[-1] if lines else ''}")
            outcomes.append(outcome)
            done(outcome)
    except KeyboardInterrupt:
        for handle in submitted:
            handle.cancel(check=False)
        raise
    return outcomes
