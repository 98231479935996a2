"""Wall time of a short ``run.py --mode all`` on photos: this checkout against another one (e.g. before a change).

    python3 benchmarks/bench_mode_all.py --before DIR [--n 240] [--side 320] [--repeats 2] [-- run.py flags]

``DIR`` holds another checkout of this repository (e.g. ``git archive <commit> | tar -x -C DIR``),
used read-only. Writes a synthetic Waterbirds-layout folder (``photo_folder.py``; ``--fixture``
writes the tests' tiny 8x8 one instead), then runs the same ``--mode all`` command in both
checkouts, alternating, ``--repeats`` times. This checkout's first run builds its image cache
("cold"), the later ones reuse it ("warm"). Prints each run's CPU seconds (user + system, of run.py
and its worker processes: other jobs on a shared machine disturb them far less than the wall
clock), its wall seconds, and the ratios of CPU seconds.
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from benchmarks.photo_folder import write_photo_folder  # noqa: E402

DEFAULT_FLAGS = ["--arch", "resnet18", "--image_size", "64", "--epochs", "2", "--pruning_ep", "1", "--retrain_ep",
                 "1", "--batch_size", "32", "--device", "cpu"]


def cpu_seconds_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_run(checkout: Path, argv: list[str], out_dir: Path) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one ``run.py`` in ``checkout``."""
    cpu, wall = cpu_seconds_of_children(), time.perf_counter()
    subprocess.run([sys.executable, "run.py", *argv, "--out_dir", str(out_dir)], cwd=checkout, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return cpu_seconds_of_children() - cpu, time.perf_counter() - wall


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--n", type=int, default=240)
    parser.add_argument("--side", type=int, default=320)
    parser.add_argument("--fixture", action="store_true", help="the tests' tiny Waterbirds folder (28 8x8 JPEGs)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.fixture:
            from fixtures import write_waterbirds

            write_waterbirds(tmp / "photos")
            what = "tests' Waterbirds fixture (28 JPEGs, 8x8)"
        else:
            write_photo_folder(tmp / "photos", args.n, args.side)
            what = f"{args.n} synthetic JPEGs {args.side}x{args.side}"
        command = ["--mode", "all", "--data", "waterbirds", "--train_root_dir", str(tmp / "photos"), *DEFAULT_FLAGS,
                   *extra]
        print(f"{what}; run.py {' '.join(command[4:])}")
        before, after = [], []
        for r in range(args.repeats):
            before.append(timed_run(args.before, command, tmp / f"before{r}"))
            after.append(timed_run(ROOT, [*command, "--cache_dir", str(tmp / "cache")], tmp / f"after{r}"))
            print(f"repeat {r + 1}: before {before[-1][0]:.1f} CPU s ({before[-1][1]:.0f} s wall)   this checkout "
                  f"{after[-1][0]:.1f} CPU s ({after[-1][1]:.0f} s wall)   "
                  f"{'cold: builds the cache' if r == 0 else 'warm: cache reused'}", flush=True)
        best_before = min(cpu for cpu, _ in before)
        print(f"CPU seconds, this checkout / before: cold {after[0][0] / best_before:.2f}"
              + (f", warm {min(cpu for cpu, _ in after[1:]) / best_before:.2f} (best runs)" if args.repeats > 1
                 else ""))


if __name__ == "__main__":
    main()
