"""Run ``run.py --mode all`` over several seeds and report mean ± std of every method.

    python3 scripts/multi_seed.py --seeds 0 1 2 3 4 --out_dir runs/digits_5seeds -- --data digits

Everything after ``--`` is passed to run.py unchanged. Each seed ``s`` runs with
``--seed s --data_seed s`` (model initialisation, batch order *and* the data split/colouring vary)
into ``<out_dir>/seed<s>``; a finished seed folder is reused, not rerun. The summary table is
printed as Markdown and saved as ``<out_dir>/summary.json``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import run  # noqa: E402
from utils.results import RESULTS_NAME, atomic_write_text  # noqa: E402

METRICS = ("avg_acc", "worst_group_acc", "mean_group_acc")


def summarise(results: list[dict]) -> dict[str, dict[str, list[float]]]:
    """Per method, the list over seeds of each test metric (in %) and of the density."""
    table: dict[str, dict[str, list[float]]] = {}
    for res in results:
        for method, out in res["methods"].items():
            row = table.setdefault(method, {m: [] for m in (*METRICS, "density")})
            for m in METRICS:
                row[m].append(100 * out["splits"]["test"][m])
            row["density"].append(100 * out.get("sparsity", {}).get("overall", 1.0))
    return table


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {std:.1f}"


def markdown(table: dict[str, dict[str, list[float]]], n_seeds: int) -> str:
    lines = [f"| method ({n_seeds} seeds) | test avg | test worst-group | test mean-group | density % |",
             "|---|---|---|---|---|"]
    for method, row in table.items():
        lines.append(f"| {method} | " + " | ".join(mean_std(row[m]) for m in (*METRICS, "density")) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out_dir", required=True)
    opts = parser.parse_args(own)
    results = []
    for seed in opts.seeds:
        seed_dir = Path(opts.out_dir) / f"seed{seed}"
        if not (seed_dir / RESULTS_NAME).exists():
            rc = run.main(["--mode", "all", "--seed", str(seed), "--data_seed", str(seed),
                           "--out_dir", str(seed_dir), *passthrough])
            if rc != 0:
                return rc
        results.append(json.loads((seed_dir / RESULTS_NAME).read_text()))
    table = summarise(results)
    atomic_write_text(Path(opts.out_dir) / "summary.json",
                      json.dumps({"seeds": opts.seeds, "run_args": passthrough, "test_percent": table}, indent=2))
    print(markdown(table, len(opts.seeds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
