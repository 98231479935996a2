"""Which ERM reference model gives clusters that follow the spurious attribute, not the labels?

    python3 benchmarks/reference_model_study.py --settings 1:1e-4 5:1e-4 30:1e-4 --data digits --label_noise 0.25

For each ``EPOCHS:WEIGHT_DECAY`` setting it trains ERM (``run.py --mode erm``), clusters the
training set with the defaults (2 clusters over all samples) and with ``--per_class``
(``run.py --mode cluster``), and prints one table row: final training loss, test worst-group
accuracy, and the clusters' NMI against the attribute within each class. Every other flag is
passed to run.py unchanged (data set, seeds, architecture). Runs go to ``--out_root``.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import run  # noqa: E402


def run_quietly(argv: list[str]) -> None:
    """``run.py argv`` with its printout swallowed; stop on failure with run.py's own message."""
    with contextlib.redirect_stdout(io.StringIO()):
        code = run.main([str(a) for a in argv])
    if code != 0:
        sys.exit(code)


def within_class(summary: dict) -> str:
    """``nmi (purity/baseline)`` of the attribute inside each class."""
    return "  ".join(f"{c}: {q['nmi']:.3f} ({q['purity']:.3f}/{q['baseline']:.3f})"
                     for c, q in summary["vs_attribute"]["within_class"].items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=["1:1e-4", "5:1e-4", "30:1e-4"],
                        help="reference-model recipes, EPOCHS:WEIGHT_DECAY")
    parser.add_argument("--out_root", default="runs/reference_study", help="folder of the ERM and cluster runs")
    args, run_flags = parser.parse_known_args()
    root = Path(args.out_root)
    print("| epochs | weight decay | final train loss | test worst-group acc | conflicting | label NMI "
          "| attribute NMI (purity/baseline) within each class, 2 global clusters | same, --per_class 2 |")
    print("|---|---|---|---|---|---|---|---|")
    for setting in args.settings:
        epochs, weight_decay = setting.split(":")
        erm_dir = root / f"erm_e{epochs}_wd{weight_decay}"
        run_quietly(["--mode", "erm", *run_flags, "--epochs", epochs, "--weight_decay", weight_decay,
                     "--out_dir", erm_dir, "--overwrite"])
        erm = json.loads((erm_dir / "results.json").read_text())
        summaries = []
        for scope in ([], ["--per_class"]):
            out = root / f"cluster_e{epochs}_wd{weight_decay}{'_per_class' if scope else ''}"
            run_quietly(["--mode", "cluster", *run_flags, *scope, "--checkpoint", erm_dir / "erm.pt",
                         "--out_dir", out, "--overwrite"])
            summaries.append(json.loads((out / "cluster_summary.json").read_text()))
        print(f"| {epochs} | {weight_decay} | {erm['train_loss'][-1]:.3f} "
              f"| {100 * erm['splits']['test']['worst_group_acc']:.2f} "
              f"| {100 * summaries[0]['conflicting_fraction']:.2f}% | {summaries[0]['vs_label']['nmi']:.3f} "
              f"| {within_class(summaries[0])} | {within_class(summaries[1])} |", flush=True)


if __name__ == "__main__":
    main()
