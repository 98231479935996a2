"""Run one command over several seeds: an alias of ``scripts/sweep.py`` without a grid.

    python3 scripts/multi_seed.py --seeds 0 1 2 3 4 --out_dir runs/digits_5seeds -- --data digits
    # is  python3 scripts/sweep.py --seeds 0 1 2 3 4 --out_dir runs/digits_5seeds -- --data digits

Its flags (``--seeds``, ``--out_dir``, ``--tool``, ``--overwrite``, and any other of sweep.py's)
and its folders (``<out_dir>/seed<s>``) are the sweep's. Besides the sweep's report it keeps
writing what it always wrote: ``<out_dir>/summary.json`` (per method, the test metrics of every
seed in %) and the per-group picture ``<out_dir>/report.png``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts import sweep  # noqa: E402
from utils.cli import exit_code  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.report import collect, write_report  # noqa: E402
from utils.results import RESULTS_NAME, atomic_write_text  # noqa: E402


def multi_seed(argv: list[str]) -> None:
    own, passthrough = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    opts = sweep.build_parser().parse_args(own)
    if opts.grid:
        raise UserError("multi_seed.py runs one setting; for --grid use scripts/sweep.py")
    folders = sweep.sweep(argv)
    results = [json.loads((folder / RESULTS_NAME).read_text()) for folder in folders]
    summary = {"tool": opts.tool, "seeds": opts.seeds, "run_args": passthrough, "std": "sample (n - 1)",
               "test_percent": collect(results)}
    atomic_write_text(Path(opts.out_dir) / "summary.json", json.dumps(summary, indent=2))
    print(f"picture: {write_report(Path(opts.out_dir) / 'report.png', results)}")


def main(argv: list[str] | None = None) -> int:
    return exit_code("multi_seed.py", lambda: multi_seed(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
