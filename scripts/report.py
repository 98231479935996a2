"""Compare methods across finished runs: per setting and method, mean ± std over seeds and paired differences.

    python3 scripts/report.py runs/sweep_lambda                       # a sweep (any depth of run folders)
    python3 scripts/report.py runs/a runs/b/results.json --reference erm --out reports/ab

Each argument is a results.json, a run folder or a folder of run folders (searched at any depth).
Runs are grouped by configuration (data, architecture and every argument but the seeds); each
group and method gets mean ± sample std over seeds of test average and worst-group accuracy and
density, and the paired difference by seed against ``--reference`` with a 95% t-interval.
Unfinished folders are named and skipped, a file given twice counts once, and runs of different
configurations are pooled only with ``--pool`` (with a warning). The Markdown table is printed;
``--out DIR`` also writes report.md, report.csv, worst_group.png and (where masks were learned)
density.png there (never into a run folder).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.cli import OneLineErrorParser, exit_code  # noqa: E402
from utils.sweep_report import report  # noqa: E402


def run(argv: list[str] | None = None) -> None:
    parser = OneLineErrorParser(prog="report.py", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="results.json files, run folders or folders of run folders")
    parser.add_argument("--reference", default="retrain_only",
                        help="method the others are compared with, seed by seed (e.g. erm)")
    parser.add_argument("--pool", action="store_true",
                        help="treat all runs as one configuration (warns, naming the arguments that differ)")
    parser.add_argument("--out", default=None, help="folder for report.md, report.csv and the pictures")
    args = parser.parse_args(argv)
    print(report(args.runs, args.reference, args.pool, Path(args.out) if args.out else None))
    if args.out is None:
        print("(pass --out DIR to save report.md, report.csv and the pictures)")


def main(argv: list[str] | None = None) -> int:
    return exit_code("report.py", lambda: run(argv))


if __name__ == "__main__":
    sys.exit(main())
