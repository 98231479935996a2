"""Which ERM reference model gives clusters that follow the spurious attribute, not the labels?

    python3 benchmarks/reference_model_study.py --settings 1:1e-4 5:1e-4 30:1e-4 --data digits --label_noise 0.25

For each ``EPOCHS:WEIGHT_DECAY`` setting it trains ERM (``run.py --mode erm``), clusters the
training set with the defaults (2 clusters over all samples) and with ``--per_class``
(``run.py --mode cluster``), and prints one table row: final training loss, test worst-group
accuracy, and the clusters' NMI against the attribute within each class. Every other flag is
passed to run.py unchanged (data set, seeds, architecture). Runs go to ``--out_root``; ``--summary
FILE`` keeps the rows as JSON, from which ``docs/build_results.py`` writes the tables of
docs/clustering.md (``--table FILE`` prints one).
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


HEADER = ["| epochs | weight decay | final train loss | test worst-group acc | conflicting | label NMI "
          "| attribute NMI (purity/baseline) within each class, 2 global clusters | same, --per_class 2 |",
          "|---|---|---|---|---|---|---|---|"]


def within_class(quality: dict) -> str:
    """``nmi (purity/baseline)`` of the attribute inside each class."""
    return "  ".join(f"{c}: {q['nmi']:.3f} ({q['purity']:.3f}/{q['baseline']:.3f})" for c, q in quality.items())


def line(row: dict) -> str:
    """One Markdown row of a setting's numbers."""
    return (f"| {row['epochs']} | {row['weight_decay']} | {row['train_loss']:.3f} | {100 * row['test_worst_group']:.2f} "
            f"| {100 * row['conflicting']:.2f}% | {row['label_nmi']:.3f} | {within_class(row['global'])} "
            f"| {within_class(row['per_class'])} |")


def table(summary: dict) -> list[str]:
    """The Markdown table of a ``--summary`` file."""
    return HEADER + [line(row) for row in summary["rows"]]


def study(setting: str, root: Path, run_flags: list[str]) -> dict:
    """ERM with ``EPOCHS:WEIGHT_DECAY``, clustered globally and per class: the numbers of one row."""
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
    return {"epochs": int(epochs), "weight_decay": weight_decay, "train_loss": erm["methods"]["erm"]["train_loss"][-1],
            "test_worst_group": erm["splits"]["test"]["worst_group_acc"],
            "conflicting": summaries[0]["conflicting_fraction"], "label_nmi": summaries[0]["vs_label"]["nmi"],
            "global": summaries[0]["vs_attribute"]["within_class"],
            "per_class": summaries[1]["vs_attribute"]["within_class"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=["1:1e-4", "5:1e-4", "30:1e-4"],
                        help="reference-model recipes, EPOCHS:WEIGHT_DECAY")
    parser.add_argument("--out_root", default="runs/reference_study", help="folder of the ERM and cluster runs")
    parser.add_argument("--summary", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--table", default=None, help="print the table of a --summary file and stop")
    args, run_flags = parser.parse_known_args()
    if args.table:
        print("\n".join(table(json.loads(Path(args.table).read_text()))))
        return
    print("\n".join(HEADER), flush=True)
    rows = []
    for setting in args.settings:
        rows.append(study(setting, Path(args.out_root), run_flags))
        print(line(rows[-1]), flush=True)
    if args.summary:
        Path(args.summary).write_text(json.dumps({"command": " ".join(["python3 benchmarks/reference_model_study.py",
                                                                        *sys.argv[1:]]), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
