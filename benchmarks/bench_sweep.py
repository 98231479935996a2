"""Sweep parallelism on one machine: 8 jobs of ``run.py --mode all`` on the embedded Colored Digits
(4 seeds × 2 values of ``--lambda_sparse``) through the local executor, 1 worker against N workers,
each job with the same ``--threads`` (so that the results can be identical: a float sum over 2
threads differs in its last bits from one over 1).

    python3 benchmarks/bench_sweep.py --out_dir /tmp/bench_sweep          # 1 vs 2 workers, 1 thread each

Prints, for each, the wall seconds and the total CPU seconds (the sweep process, from wait4, plus
every job, from the last line of its log), the wall ratio, and whether every results.json equals the
1-worker run's (times and paths aside). Epochs are small so that the whole benchmark takes minutes;
on a machine shared with other work the ratio understates what idle cores give.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CPU_LINE = re.compile(r"^=== exit 0: [\d.]+ s wall, ([\d.]+) s CPU$", re.M)


def comparable(path: Path, root: Path) -> object:
    """A results.json without what differs between identical runs in two folders: paths and times."""
    def strip(value: object) -> object:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "time_s"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value.replace(str(root), "ROOT") if isinstance(value, str) else value
    return strip(json.loads(path.read_text()))


def run_sweep(folder: Path, workers: int, args: argparse.Namespace) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one sweep."""
    command = [sys.executable, str(ROOT / "scripts" / "sweep.py"), "--out_dir", str(folder),
               "--grid", "lambda_sparse=1e-8,5e-8", "--seeds", "0", "1", "2", "3", "--workers", str(workers),
               "--threads_per_job", str(args.threads), "--",
               "--data", "digits", "--device", "cpu", "--epochs", str(args.epochs), "--pruning_ep",
               str(args.pruning_ep), "--retrain_ep", str(args.retrain_ep), "--methods", "erm,retrain_only,prusc"]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"the sweep with {workers} worker(s) failed; see {folder / 'logs'}")
    jobs = sum(float(m[-1]) for log in folder.glob("logs/**/*.log") for m in [CPU_LINE.findall(log.read_text())])
    return wall, usage.ru_utime + usage.ru_stime + jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out_dir", required=True, help="a new folder for the two sweeps")
    parser.add_argument("--workers", type=int, default=2, help="workers of the parallel sweep")
    parser.add_argument("--threads", type=int, default=1, help="threads per job, in both sweeps")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--pruning_ep", type=int, default=5)
    parser.add_argument("--retrain_ep", type=int, default=5)
    args = parser.parse_args()
    out = Path(args.out_dir)
    if out.exists() and any(out.iterdir()):
        sys.exit(f"--out_dir {out} is not empty; pass a new folder")
    serial, parallel = out / "workers1", out / f"workers{args.workers}"
    cores = len(os.sched_getaffinity(0))
    results = {}
    for workers, folder in ((1, serial), (args.workers, parallel)):
        results[workers] = run_sweep(folder, workers, args)
        print(f"{workers} worker(s): {results[workers][0]:7.1f} s wall, {results[workers][1]:7.1f} s CPU", flush=True)
    files = sorted(p.relative_to(serial) for p in serial.glob("*/seed*/results.json"))
    same = len(files) == 8 and all(comparable(serial / f, serial) == comparable(parallel / f, parallel) for f in files)
    ratio = results[1][0] / results[args.workers][0]
    print(f"{cores} CPU(s); 8 jobs, {args.threads} thread(s) each; wall ratio 1 / {args.workers} workers: {ratio:.2f}x; "
          f"results identical to the 1-worker run: {same}")


if __name__ == "__main__":
    main()
