"""How bf16 changes results: the same seeds of ``run.py`` without and with ``--amp force``, paired.

    python3 benchmarks/bf16_accuracy.py --seeds 0 1 [--json FILE] [-- run.py flags, e.g. --data digits]

Runs ``run.py`` (default ``--mode all`` on the embedded Colored Digits) once per seed in fp32 and once
with ``--amp force`` (bf16 autocast whatever the CPU or GPU: on a CPU without native bf16 this is the
emulated path, slow but numerically what a bf16 CPU computes), then prints, per method, test
average and worst-group accuracy of both, and the paired difference (bf16 - fp32): its mean and,
with 3 or more seeds, a 95% t interval. ``--json`` keeps the per-seed numbers and the summary.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
T95 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262}  # two-sided, n-1 df
METRICS = ("avg_acc", "worst_group_acc")


def run_seed(seed: int, bf16: bool, extra: list[str], out: Path) -> dict:
    """Test metrics per method of one run.py run."""
    flags = ["--amp", "force"] if bf16 else []
    subprocess.run([sys.executable, str(ROOT / "run.py"), *extra, *flags, "--seed", str(seed), "--out_dir", str(out),
                    "--overwrite"], check=True, stdout=subprocess.DEVNULL)
    results = json.loads((out / "results.json").read_text())
    return {name: {k: m["splits"]["test"][k] for k in METRICS} for name, m in results["methods"].items()}


def paired(differences: list[float]) -> str:
    mean = statistics.mean(differences)
    if len(differences) < 3:
        return f"{100 * mean:+.2f} (n={len(differences)}, too few seeds for an interval)"
    half = T95.get(len(differences), 1.96) * statistics.stdev(differences) / math.sqrt(len(differences))
    return f"{100 * mean:+.2f} ± {100 * half:.2f} (95% t interval, n={len(differences)})"


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    runs: dict[str, dict[int, dict]] = {"fp32": {}, "bf16": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for name in runs:
                runs[name][seed] = run_seed(seed, name == "bf16", extra, Path(tmp) / f"{name}_{seed}")
                print(f"seed {seed} {name}: " + "  ".join(f"{m} {100 * r['worst_group_acc']:.2f}"
                                                        for m, r in runs[name][seed].items()), flush=True)
    summary = {}
    print(f"\nrun.py {' '.join(extra)}; seeds {args.seeds}; test accuracy (%), bf16 = --amp force")
    print("| method | metric | fp32 mean | bf16 mean | bf16 - fp32 (paired) |\n|---|---|---|---|---|")
    for method in runs["fp32"][args.seeds[0]]:
        for metric in METRICS:
            fp32 = [runs["fp32"][s][method][metric] for s in args.seeds]
            bf16 = [runs["bf16"][s][method][metric] for s in args.seeds]
            diff = paired([b - f for f, b in zip(fp32, bf16)])
            summary[f"{method} {metric}"] = {"fp32": fp32, "bf16": bf16, "difference": diff}
            print(f"| {method} | {metric} | {100 * statistics.mean(fp32):.2f} | {100 * statistics.mean(bf16):.2f} "
                  f"| {diff} |")
    if args.json is not None:
        args.json.write_text(json.dumps({"run_args": extra, "seeds": args.seeds, "per_seed": runs,
                                         "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
