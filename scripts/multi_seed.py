"""Run one command over several seeds and report mean ± std of every method (any mode, IRM included).

    python3 scripts/multi_seed.py --seeds 0 1 2 3 4 --out_dir runs/digits_5seeds -- --data digits
    python3 scripts/multi_seed.py --tool irm --seeds 0 1 2 --out_dir runs/irm -- --minority_env E/minority --balance_env E/balanced

Everything after ``--`` is passed on unchanged. ``--tool run`` (default) runs ``run.py --mode all``
(or the ``--mode`` given after ``--``) with ``--seed s --data_seed s`` (model initialisation, batch
order *and* the data split/colouring vary); ``--tool irm`` runs ``invariant_learning/irm.py`` with
``--seed s``. Each seed goes to ``<out_dir>/seed<s>``; a finished seed folder is reused, not rerun.
The summary (mean ± sample std over seeds) is printed as Markdown and saved as
``<out_dir>/summary.json``, with the per-group picture ``<out_dir>/report.png``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import run  # noqa: E402
from invariant_learning import irm  # noqa: E402
from utils.report import collect, markdown_table, write_report  # noqa: E402
from utils.results import RESULTS_NAME, atomic_write_text  # noqa: E402

TOOLS: dict[str, tuple[Callable[[list[str]], int], Callable[[int], list[str]]]] = {
    "run": (run.main, lambda s: ["--seed", str(s), "--data_seed", str(s)]),
    "irm": (irm.main, lambda s: ["--seed", str(s)]),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--tool", choices=sorted(TOOLS), default="run", help="run.py or invariant_learning/irm.py")
    opts = parser.parse_args(own)
    entry, seed_flags = TOOLS[opts.tool]
    if opts.tool == "run" and "--mode" not in passthrough:
        passthrough = ["--mode", "all", *passthrough]
    results = []
    for seed in opts.seeds:
        seed_dir = Path(opts.out_dir) / f"seed{seed}"
        if not (seed_dir / RESULTS_NAME).exists():
            rc = entry([*passthrough, *seed_flags(seed), "--out_dir", str(seed_dir)])
            if rc != 0:
                return rc
        results.append(json.loads((seed_dir / RESULTS_NAME).read_text()))
    table = collect(results)
    summary = {"tool": opts.tool, "seeds": opts.seeds, "run_args": passthrough, "std": "sample (n - 1)",
               "test_percent": table}
    atomic_write_text(Path(opts.out_dir) / "summary.json", json.dumps(summary, indent=2))
    print(markdown_table(results))
    print(f"picture: {write_report(Path(opts.out_dir) / 'report.png', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
