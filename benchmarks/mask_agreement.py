"""What a learned mask changes before any retraining: the model with the kept mask (``<method>_pruned.pt``)
against the dense ERM model it was learned on, on the val and test splits of the run.

    python3 benchmarks/mask_agreement.py RUN_DIR [RUN_DIR ...] [--methods prusc_no_con,prusc] [--json FILE]

PruSC's claim is that the mask removes the weights that carry the spurious feature, so the masked
model should already decide differently on the minority. This prints, per run and method, the
share of samples whose predicted class the mask changed, test average / worst-group accuracy of the
dense and the masked model, and the share of the absolute weight the mask removed (per ResNet block
in ``--json``). A mask that changes almost no prediction earns its results in the retraining that
follows, not by itself; one that removes most weights but almost none of the weight's magnitude
removed weights that were already about zero. The ERM model is the run's ``--checkpoint`` when it was
given, else ``RUN_DIR/erm.pt``; the data are rebuilt from the run's recorded arguments.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from data import build_splits  # noqa: E402
from models.factory import load_model  # noqa: E402
from models.masking import split_state  # noqa: E402
from models.resnet import block_of  # noqa: E402
from training.loops import predict  # noqa: E402
from utils.cli import OneLineErrorParser, exit_code  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.metrics import compute_metrics, group_counts  # noqa: E402
from utils.results import RESULTS_NAME, atomic_write_text  # noqa: E402
from utils.sweep_report import load_results  # noqa: E402

SPLITS = ("val", "test")


def removed_weight_share(model: torch.nn.Module) -> dict[str, float]:
    """Per ResNet block (``all`` for every masked layer): the share of the absolute weight the fixed mask
    removes. Near 0 with a low density: the mask removed weights that were already about zero."""
    removed: dict[str, float] = {}
    total: dict[str, float] = {}
    weights, logits = split_state(model)
    for name, layer_logits in logits.items():
        weight = weights[f"{name}.weight"].abs()
        off = float(weight[layer_logits < 0].sum())
        for block in (block_of(name), "all"):
            removed[block] = removed.get(block, 0.0) + off
            total[block] = total.get(block, 0.0) + float(weight.sum())
    return {block: removed[block] / total[block] for block in total if total[block] > 0}


def compare_run(folder: Path, methods: list[str]) -> list[dict[str, Any]]:
    """One record per masked method of the run in ``folder``: changed predictions and accuracies per split."""
    results_file = folder / RESULTS_NAME
    if not results_file.is_file():
        raise UserError(f"{folder} has no {RESULTS_NAME}; pass a finished run folder of run.py")
    args = load_results(results_file).get("args")
    if not isinstance(args, dict):
        raise UserError(f"{results_file} records no 'args'; pass a finished run folder of run.py")
    dense_path = Path(args.get("checkpoint") or folder / "erm.pt")
    masked = [m for m in methods if (folder / f"{m}_pruned.pt").is_file()]
    if not masked:
        raise UserError(f"{folder} holds none of {', '.join(f'{m}_pruned.pt' for m in methods)}; "
                        "pass a run of a masked method (--methods prusc or prusc_no_con)")
    splits = build_splits(argparse.Namespace(**args))
    device = torch.device("cpu")
    counts = group_counts(splits["train"].y, splits["train"].a)
    dense = load_model(dense_path).model
    dense_preds = {s: predict(dense, splits[s], device).argmax(1) for s in SPLITS}
    records = []
    for method in masked:
        model = load_model(folder / f"{method}_pruned.pt").model
        record: dict[str, Any] = {"run": str(folder), "method": method, "dense": str(dense_path),
                                  "removed_weight_share": removed_weight_share(model)}
        for split in SPLITS:
            data, before = splits[split], dense_preds[split]
            after = predict(model, data, device).argmax(1)
            metrics = {name: compute_metrics(p, data.y, data.a, counts) for name, p in (("dense", before),
                                                                                       ("masked", after))}
            record[split] = {"changed": float((after != before).float().mean()),
                             **{f"{name}_{key}": m[key] for name, m in metrics.items()
                                for key in ("avg_acc", "worst_group_acc")}}
        records.append(record)
    return records


def check_records_file(path: Path) -> None:
    """Refuse, before any work, a --json path this tool cannot write or must not replace: only a records
    file it wrote before is rewritten (a run's results.json or a user's file never is)."""
    if path.is_dir() or not path.parent.is_dir():
        raise UserError(f"--json {path}: {'is a folder' if path.is_dir() else f'{path.parent} is not a folder'}; "
                        "pass a file in an existing folder")
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = None
        if not (isinstance(old, list) and all(isinstance(r, dict) and {"run", "method"} <= set(r) for r in old)):
            raise UserError(f"--json {path} exists and is not a records file of mask_agreement.py; nothing was "
                            "written; choose a new file")


def table(records: list[dict[str, Any]]) -> str:
    lines = ["| run | method | predictions changed by the mask, val / test | test avg: dense → masked | "
             "test worst-group: dense → masked | share of the absolute weight removed |", "|---|---|---|---|---|---|"]
    for r in records:
        val, test = r["val"], r["test"]
        lines.append(f"| {r['run']} | {r['method']} | {100 * val['changed']:.1f}% / {100 * test['changed']:.1f}% | "
                     f"{100 * test['dense_avg_acc']:.1f} → {100 * test['masked_avg_acc']:.1f} | "
                     f"{100 * test['dense_worst_group_acc']:.1f} → {100 * test['masked_worst_group_acc']:.1f} | "
                     f"{100 * r['removed_weight_share']['all']:.1f}% |")
    return "\n".join(lines)


def run(argv: list[str] | None) -> None:
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders of run.py with masked methods")
    parser.add_argument("--methods", default="prusc_no_con,prusc", help="masked methods to compare")
    parser.add_argument("--json", type=Path, help="also write the records here")
    args = parser.parse_args(argv)
    if args.json:
        check_records_file(args.json)
    records = [r for folder in args.runs for r in compare_run(folder, args.methods.split(","))]
    print(table(records))
    if args.json:
        atomic_write_text(args.json, json.dumps(records, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    return exit_code("mask_agreement.py", lambda: run(argv))


if __name__ == "__main__":
    sys.exit(main())
