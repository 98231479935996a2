"""Run a grid of settings × seeds as parallel jobs, locally or on Slurm, and report them together.

    python3 scripts/sweep.py --seeds 0 1 2 3 4 --out_dir runs/digits_5seeds -- --data digits
    python3 scripts/sweep.py --grid lambda_sparse=1e-8,5e-8,2e-7 --seeds 0 1 2 --workers 2 \\
        --out_dir runs/lambda_curve -- --data digits --methods erm,retrain_only,prusc
    python3 scripts/sweep.py --executor slurm --partition gpu --time 240 --gpus_per_job 1 \\
        --grid grid.toml --seeds 0 1 2 --out_dir /scratch/me/sweep -- --data waterbirds ...

Everything after ``--`` is the base command of ``run.py`` (``--mode all`` unless another
``--mode`` is given) or, with ``--tool irm``, of ``invariant_learning/irm.py``. ``--grid`` takes
``flag=v1,v2`` items (their product is the grid) or one ``.toml``/``.json`` file mapping flags to
lists of values (true/false: the flag is given or not). Each grid point × seed is one run in
``<out_dir>/<flag=value,...>/seed<s>`` (``<out_dir>/seed<s>`` without a grid) with ``--seed s``
(and ``--data_seed s`` for run.py); ``{seed}`` in the base command becomes ``s`` (e.g.
``--checkpoint runs/cmp/seed{seed}/erm.pt``: every point reuses its seed's reference model). The run
lifecycle does the bookkeeping: a rerun of the same sweep reuses finished runs, continues interrupted
ones, and refuses a folder recorded with other arguments (``--overwrite`` reruns those). A failing job
is listed with its last log line and its folder; the others go on. At the end the report
(``scripts/report.py``'s) is printed and written to ``<out_dir>`` as report.md, report.csv,
worst_group.png, density.png and, when a numeric setting varies, curves.png (each metric against it);
each job's output is in ``<out_dir>/logs/``.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import os
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.sweep_exec import TOOLS, Job, Outcome, differences, run_local, run_submitit  # noqa: E402
from utils.cli import OneLineErrorParser, exit_code, non_negative, positive_int, seed_int  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.results import RESULTS_NAME  # noqa: E402
from utils.run_dir import ARGS_NAME, SHOWN_DIFFERENCES, RunInterrupted, check_folder_path, read_args  # noqa: E402
from utils.sweep_report import report  # noqa: E402

SEED_FLAGS = {"run": ("seed", "data_seed"), "irm": ("seed",)}
SWEEP_SETS = ("out_dir", "overwrite")  # besides the seed flags
SEED_FIELD = "{seed}"  # in the base command: the job's seed
SAFE_NAME = re.compile(r"[^A-Za-z0-9._=,+-]")
MAX_NAME = 120


def tool_module(tool: str) -> Any:
    """The tool's command-line module (imported here: the sweep checks flags and recorded arguments with it)."""
    import importlib

    return importlib.import_module(TOOLS[tool][0])


# -- the grid -----------------------------------------------------------------------------------
def value_text(value: Any) -> str:
    """A grid value as its flag would be typed."""
    return repr(value) if isinstance(value, float) else str(value)


def parse_grid(items: list[str]) -> list[tuple[str, list[Any]]]:
    """``flag=v1,v2`` items, or one TOML/JSON file of ``flag = [values]``, as (flag, values) in order."""
    if len(items) == 1 and items[0].endswith((".toml", ".json")):
        return grid_file(Path(items[0]))
    grid = []
    for item in items:
        flag, sep, values = item.partition("=")
        if not sep or not flag or not values:
            raise UserError(f"--grid {item}: write FLAG=VALUE1,VALUE2 (or pass one .toml/.json file)")
        grid.append((flag.lstrip("-"), values.split(",")))
    return grid


def toml_loads(text: str) -> Any:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        raise UserError("a .toml grid needs Python 3.11 or later; write the grid as .json") from None
    return tomllib.loads(text)


def grid_file(path: Path) -> list[tuple[str, list[Any]]]:
    try:
        text = path.read_text()
        table = toml_loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as exc:  # tomllib.TOMLDecodeError is a ValueError
        raise UserError(f"--grid {path} cannot be read ({exc}); it must map each flag to a list of values") from exc
    table = table.get("grid", table) if isinstance(table, dict) else table
    if not isinstance(table, dict) or not all(isinstance(v, list) and v for v in table.values()):
        raise UserError(f"--grid {path} must map each flag to a non-empty list of values, e.g. pruning_ep = [5, 20]")
    bad = [f"{k} = {v!r}" for k, vs in table.items() for v in vs if not isinstance(v, (str, int, float, bool))]
    if bad:
        raise UserError(f"--grid {path}: {bad[0]} is not a string, number or true/false")
    return [(flag.lstrip("-"), values) for flag, values in table.items()]


def check_flags(tool: str, grid: list[tuple[str, list[Any]]], base: list[str]) -> None:
    """Refuse, before any job, grid flags the tool does not have and flags the sweep sets itself."""
    known = tool_module(tool).build_parser()._option_string_actions
    own = {*SEED_FLAGS[tool], *SWEEP_SETS}
    given = {a.split("=", 1)[0].lstrip("-") for a in base if a.startswith("--")}
    twice = sorted(flag for flag, count in Counter(f for f, _ in grid).items() if count > 1)
    if twice:
        raise UserError(f"--grid {twice[0]}: given twice; list all its values in one item ({twice[0]}=V1,V2)")
    for flag, _ in grid:
        if f"--{flag}" not in known:
            raise UserError(f"--grid {flag}: {TOOLS[tool][1]} has no flag --{flag}")
        if flag in given:
            raise UserError(f"--{flag} is both in --grid and after --; keep it in one place")
    for flag in sorted((own & given) | (own & {f for f, _ in grid})):
        raise UserError(f"--{flag} is set by the sweep for each job; remove it (the seeds are --seeds, "
                        "the folders are under --out_dir, reruns of other arguments are --overwrite)")


def check_values(tool: str, jobs: list[Job]) -> None:
    """Refuse, before any job starts, a job whose flag values the tool's parser refuses (a grid value of the
    wrong type): otherwise the good jobs run for hours before the typo shows. Flags it does not know are
    left to the tool (irm.py still takes its former names), whose jobs then fail at once."""
    parser = tool_module(tool).build_parser()
    for job in jobs:
        def refuse(message: str, name: str = job.name) -> None:
            raise UserError(f"job {name}: {message}; nothing was started")
        parser.error = refuse  # type: ignore[method-assign]  # one line through the sweep, not the tool's exit
        parser.parse_known_args(list(job.argv))


def flags_of(point: tuple[tuple[str, Any], ...]) -> list[str]:
    flags = []
    for flag, value in point:
        if isinstance(value, bool):
            flags += [f"--{flag}"] if value else []
        else:
            flags += [f"--{flag}", value_text(value)]
    return flags


def point_name(point: tuple[tuple[str, Any], ...]) -> str:
    """The folder of a grid point, named from its settings (a hash is added when they need escaping)."""
    raw = ",".join(f"{flag}={str(value).lower() if isinstance(value, bool) else value_text(value)}"
                   for flag, value in point)
    safe = SAFE_NAME.sub("_", raw)
    if safe != raw or len(safe) > MAX_NAME:
        safe = f"{safe[:MAX_NAME]}-{hashlib.sha1(raw.encode()).hexdigest()[:8]}"
    return safe


def make_jobs(tool: str, base: list[str], grid: list[tuple[str, list[Any]]], seeds: list[int], root: Path,
              threads: int | None, nproc: int) -> list[Job]:
    """One job per grid point and seed, in grid order, seeds innermost; ``{seed}`` in ``base`` becomes the
    job's seed (each seed's own reference model: ``--checkpoint runs/cmp/seed{seed}/erm.pt``)."""
    jobs = []
    points = list(itertools.product(*[[(flag, v) for v in values] for flag, values in grid]))
    for point in points:
        for seed in seeds:
            name = f"{point_name(point)}/seed{seed}" if point else f"seed{seed}"
            seed_flags = [x for flag in SEED_FLAGS[tool] for x in (f"--{flag}", str(seed))]
            own_base = [arg.replace(SEED_FIELD, str(seed)) for arg in base]
            argv = (*own_base, *flags_of(point), *seed_flags, "--out_dir", str(root / name))
            jobs.append(Job(name, tool, argv, str(root / name), str(root / "logs" / f"{name}.log"), os.getcwd(),
                            threads, nproc))
    return jobs


# -- reuse, continue or refuse ------------------------------------------------------------------
def plan(jobs: list[Job], overwrite: bool, here: bool = True) -> list[Job]:
    """The jobs to run (finished runs with the same arguments are reused). A folder recorded with other
    arguments is refused (one line, before any job starts) unless ``overwrite``, which reruns it. Jobs
    that run elsewhere (``here`` False) are compared without ``--device``, and those whose arguments
    cannot be resolved on this node (``--device cuda`` on a login node) are sent, to be checked there."""
    todo, refused = [], []
    for job in jobs:
        folder = Path(job.folder)
        recorded = read_args(folder / ARGS_NAME)
        finished = (folder / RESULTS_NAME).exists()
        if not finished and (recorded is None or not any(p.name != ARGS_NAME for p in folder.iterdir())):
            todo.append(job)  # new, or a start that failed before writing anything
            continue
        try:
            differ = differences(job, compare_device=here)
        except UserError:
            if here:
                raise
            todo.append(job)
            continue
        state = "finished" if finished else "unfinished"
        if not differ:
            print(f"{folder}: {'reusing its finished run' if finished else 'continuing its unfinished run'} "
                  "(same arguments)")
            if not finished:
                todo.append(job)
        elif overwrite:
            print(f"{folder}: rerunning, its {state} run had other arguments: {'; '.join(differ[:SHOWN_DIFFERENCES])}")
            todo.append(dataclasses.replace(job, argv=(*job.argv, "--overwrite")))
        else:
            refused.append(f"{folder} holds a {state} run with other arguments: "
                           f"{'; '.join(differ[:SHOWN_DIFFERENCES])}")
    if refused:
        more = f" (and {len(refused) - 1} more folder(s))" if len(refused) > 1 else ""
        raise UserError(f"{refused[0]}{more}; choose another --out_dir, or pass --overwrite to rerun them")
    return todo


# -- executors ----------------------------------------------------------------------------------
def visible_gpus() -> list[str]:
    """The GPU ids jobs may be given (from CUDA_VISIBLE_DEVICES when set)."""
    import torch

    count = torch.cuda.device_count()
    listed = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[:count] if "CUDA_VISIBLE_DEVICES" in os.environ else [str(i) for i in range(count)]


def local_slots(workers: int | None, gpus_per_job: int | None, nproc: int) -> list[dict[str, str]]:
    """What each concurrent local job gets: its GPUs (``CUDA_VISIBLE_DEVICES``), or nothing extra on the CPU."""
    gpus = visible_gpus()
    per_job = (nproc if nproc > 1 else 1) if gpus_per_job is None and gpus else (gpus_per_job or 0)
    if per_job == 0:
        return [{"CUDA_VISIBLE_DEVICES": ""} if gpus else {}] * (workers or 1)
    if per_job > len(gpus):
        raise UserError(f"--gpus_per_job {per_job} but {len(gpus)} GPU(s) are visible; pass --gpus_per_job "
                        f"{len(gpus)} or less (0: CPU jobs)")
    groups = [gpus[i:i + per_job] for i in range(0, len(gpus) - per_job + 1, per_job)]
    return [{"CUDA_VISIBLE_DEVICES": ",".join(group)} for group in groups[:workers or len(groups)]]


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def submitit_parameters(opts: argparse.Namespace, root: Path) -> dict[str, Any]:
    """submitit's parameters for one job of the array (slurm_* ones are ignored by its local executor)."""
    gpus = opts.gpus_per_job if opts.gpus_per_job is not None else (
        0 if opts.executor == "submitit_local" else max(1, opts.nproc_per_node))
    extra = {}
    for item in opts.slurm:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--slurm {item}: write KEY=VALUE (an sbatch option without its dashes, e.g. account=abc)")
        extra[key.replace("-", "_")] = value
    return {"name": f"sweep_{root.name}", "timeout_min": opts.time, "gpus_per_node": gpus, "tasks_per_node": 1,
            "cpus_per_task": opts.cpus_per_job, "mem_gb": opts.mem_gb, "slurm_partition": opts.partition,
            "slurm_array_parallelism": opts.array_parallelism, "slurm_additional_parameters": extra or None,
            "slurm_setup": [f"export PYTHONPATH={Path(__file__).resolve().parents[1]}:$PYTHONPATH"]}


# -- the command --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="sweep.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out_dir", required=True, help="the sweep's folder: one run folder per point and seed")
    parser.add_argument("--tool", choices=sorted(TOOLS), default="run", help="run.py or invariant_learning/irm.py")
    parser.add_argument("--seeds", type=seed_int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--grid", nargs="+", default=[], help="FLAG=V1,V2 ... or one .toml/.json file")
    parser.add_argument("--overwrite", action="store_true",
                        help="rerun the jobs whose folders hold runs with other arguments (else refused)")
    parser.add_argument("--reference", default="retrain_only", help="method the report compares with, seed by seed")
    parser.add_argument("--executor", choices=["local", "slurm", "submitit_local"], default="local",
                        help="local: jobs as processes here; slurm: a job array through submitit; submitit_local: "
                             "the slurm code path run on this machine (a dry run of a cluster sweep)")
    parser.add_argument("--nproc_per_node", type=positive_int, default=1,
                        help="processes per job: >1 makes each job a torchrun (DDP) job")
    parser.add_argument("--gpus_per_job", type=non_negative(int), default=None,
                        help="GPUs per job (default: max(1, --nproc_per_node), locally only where GPUs are "
                             "visible, else 0)")
    local = parser.add_argument_group("local executor")
    local.add_argument("--workers", type=positive_int, default=None,
                       help="jobs at once (default: one per GPU group where GPUs are visible, else 1)")
    local.add_argument("--threads_per_job", type=positive_int, default=None,
                       help="CPU threads per job (default: the CPUs divided among the workers)")
    slurm = parser.add_argument_group("slurm executor")
    slurm.add_argument("--partition", default=None, help="Slurm partition")
    slurm.add_argument("--time", type=positive_int, default=240, help="minutes per job (the Slurm time limit)")
    slurm.add_argument("--cpus_per_job", type=positive_int, default=None, help="CPUs per job (also its threads)")
    slurm.add_argument("--mem_gb", type=positive_int, default=None, help="memory per job")
    slurm.add_argument("--array_parallelism", type=positive_int, default=64, help="jobs of the array at once")
    slurm.add_argument("--slurm", nargs="+", default=[], metavar="KEY=VALUE",
                       help="more sbatch options, e.g. account=abc qos=high constraint=a100")
    return parser


def sweep(argv: list[str]) -> list[Path]:
    """Run the sweep ``argv`` describes; return the finished run folders (raise when a job failed)."""
    own, base = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    opts = build_parser().parse_args(own)
    if opts.tool == "run" and not any(a == "--mode" or a.startswith("--mode=") for a in base):
        base = ["--mode", "all", *base]
    if not opts.out_dir.strip():
        raise UserError("--out_dir is empty; pass a folder path for the sweep")
    opts.seeds = list(dict.fromkeys(opts.seeds))
    grid = [(flag, list(dict.fromkeys(values))) for flag, values in parse_grid(opts.grid)]
    check_flags(opts.tool, grid, base)
    root = check_folder_path(Path(opts.out_dir))
    if (root / ARGS_NAME).exists() or (root / RESULTS_NAME).exists():
        raise UserError(f"--out_dir {root} is a run folder; a sweep needs a folder of its own (its runs go below it)")
    if opts.executor == "local":
        slots = local_slots(opts.workers, opts.gpus_per_job, opts.nproc_per_node)
        threads = opts.threads_per_job or max(1, cpu_count() // len(slots))
    else:
        slots, threads = [], opts.cpus_per_job
    jobs = make_jobs(opts.tool, base, grid, opts.seeds, root, threads, opts.nproc_per_node)
    check_values(opts.tool, jobs)
    todo = plan(jobs, opts.overwrite, here=opts.executor == "local")
    try:
        outcomes = run_jobs(todo, opts, root, slots)
    except KeyboardInterrupt:
        raise RunInterrupted("interrupted; finished jobs are kept and interrupted ones keep their last epoch: "
                             "rerun the same command to finish the sweep") from None
    failed = [o for o in outcomes if o.status != "finished"]
    finished = [Path(j.folder) for j in jobs if (Path(j.folder) / RESULTS_NAME).exists()]
    if finished:
        print(report([str(f) for f in finished], opts.reference, out=root))
    if failed:
        for outcome in failed:
            print(f"failed: {outcome.job.folder}: {outcome.error} (log: {outcome.job.log})", file=sys.stderr)
        raise UserError(f"{len(failed)} of {len(jobs)} job(s) failed (listed above); fix them and rerun the same "
                        "command: finished jobs are reused, interrupted ones continue")
    return finished


def run_jobs(todo: list[Job], opts: argparse.Namespace, root: Path, slots: list[dict[str, str]]) -> list[Outcome]:
    if not todo:
        print("every job has finished already")
        return []
    count = iter(range(1, len(todo) + 1))

    def done(outcome: Outcome) -> None:
        where = "" if outcome.status == "finished" else f": {outcome.error} (log: {outcome.job.log})"
        print(f"[{next(count)}/{len(todo)}] {outcome.status} {outcome.job.name} in {outcome.seconds:.0f} s{where}",
              flush=True)

    if opts.executor == "local":
        print(f"running {len(todo)} job(s), {len(slots)} at once, {todo[0].threads} thread(s) each"
              f"{'' if not slots[0] else ', ' + ' / '.join(s['CUDA_VISIBLE_DEVICES'] or 'no GPU' for s in slots)};"
              f" logs in {root / 'logs'}", flush=True)
        return run_local(todo, slots, done)
    cluster = "slurm" if opts.executor == "slurm" else "local"
    return run_submitit(todo, root / "submitit", cluster, submitit_parameters(opts, root), done)


def main(argv: list[str] | None = None) -> int:
    return exit_code("sweep.py", lambda: sweep(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
