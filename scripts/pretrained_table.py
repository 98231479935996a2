"""Tables of the pretrained-stand-in regime (issue 23) from finished run folders: calibration and comparison.

    python3 scripts/pretrained_table.py --pretrained FILE.pt.json \
        --calibration 0.95=RUN_DIR 0.5=RUN_DIR --comparison RUN_DIR ... \
        --out_json docs/results/pretrained.json --out_md docs/results/pretrained.md

``--calibration`` takes ERM runs (``run.py --mode erm``) by spurious ratio; ``--comparison`` takes
``run.py --mode all`` folders of any seeds (a run with ``--recipe original`` reports its methods as
``<method>_original``, one with ``--clusters_auto`` its cluster-dependent methods as ``<method>_auto``). The comparison gives mean ± sample std over seeds and, with 2 or more seeds, the
paired difference to retrain-only with its 95% t interval; it lists the seeds each method has.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.cli import OneLineErrorParser, exit_code  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.results import atomic_write_text  # noqa: E402
from utils.sweep_report import paired_interval  # noqa: E402

CRITERIA = ("test avg >= 90% and worst-group >= 15 points below avg (ImageNet ERM on Waterbirds: about 97 / 60-75). "
            "The Waterbirds figures weigh the group accuracies by the training groups' shares (weighted avg "
            "here); the balanced avg (every test group alike) is shown beside it")
ORDER = ("erm", "retrain_only", "prusc_no_con", "prusc", "retrain_only_auto", "prusc_no_con_auto", "prusc_auto",
         "erm_original", "prusc_original", "jtt", "dfr", "groupdro")


def read(folder: str) -> dict:
    path = Path(folder) / "results.json"
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass a finished run folder")
    return json.loads(path.read_text())


def calibration_row(ratio: str, folder: str) -> dict:
    res = read(folder)
    test = res["splits"]["test"]
    avg, weighted, worst = (100 * test[key] for key in ("avg_acc", "weighted_avg_acc", "worst_group_acc"))
    return {"ratio": float(ratio), "run": folder, "seed": res["seed"], "time_s": res["time_s"],
            "epochs": res["args"]["epochs"], "lr": res["args"]["lr"], "test_avg": avg,
            "test_weighted_avg": weighted, "test_worst": worst, "gap": weighted - worst,
            "groups": {g: 100 * m["acc"] for g, m in test["groups"].items()},
            "meets_criteria": weighted >= 90 and weighted - worst >= 15 if float(ratio) > 0.5 else None}


def row_name(method: str, args: dict) -> str:
    """The table row of a method's result: runs with ``--recipe original`` (which also changes ERM's settings)
    or ``--clusters_auto`` (other clusters) get rows of their own, so that they never mix with the defaults."""
    if args.get("recipe") == "original":
        return f"{method}_original"
    return f"{method}_auto" if args.get("clusters_auto") and method != "erm" else method


BLOCKS = ("stem", "layer1", "layer2", "layer3", "layer4", "head")


def block_of(layer: str) -> str:
    """The ResNet block of a masked layer's name (``backbone.layer3.0.conv2`` -> ``layer3``)."""
    parts = layer.split(".")
    return "head" if parts[0] == "head" else next((p for p in parts if p.startswith("layer")), "stem")


def inside_the_mask(method: dict) -> dict:
    """What a masked method's results.json says about its mask: the mean density of the layers of each
    ResNet block, and the worst-cluster val score (its selection score, no group labels) when pruning
    starts, for the mask kept, and after retraining (the epoch selected)."""
    per_layer = method["density"]["per_layer"]
    blocks = {b: [d for name, d in per_layer.items() if block_of(name) == b] for b in BLOCKS}
    kept = next((p for p in method["pruning"] if p.get("kept")), method["pruning"][-1])
    return {"block_density": {b: 100 * statistics.mean(d) for b, d in blocks.items() if d},
            "score_start": 100 * method["pruning"][0]["score"], "score_kept": 100 * kept["score"],
            "score_retrained": 100 * method["selection_scores"][method["best_epoch"]]}


def comparison(folders: list[str]) -> dict:
    """row -> seed -> {worst, avg, density, time_s}. The same row and seed from two folders must agree (the
    ERM that a default and a ``--clusters_auto`` sweep share); different numbers are refused, never mixed."""
    table: dict[str, dict[int, dict]] = {}
    for folder in folders:
        res = read(folder)
        for name, m in res["methods"].items():
            key, test = row_name(name, res["args"]), m["splits"]["test"]
            row = {"worst": 100 * test["worst_group_acc"], "avg": 100 * test["avg_acc"],
                   "density": 100 * m["density"]["overall"] if isinstance(m.get("density"), dict) else None,
                   "time_s": m.get("time_s"), "group_labels": m.get("uses_group_labels", False), "run": folder}
            if m.get("pruning"):
                row["inside"] = inside_the_mask(m)
            seen = table.setdefault(key, {}).get(res["seed"])
            if seen is not None and (seen["worst"], seen["avg"]) != (row["worst"], row["avg"]):
                raise UserError(f"{folder} and {seen['run']} give different {key} results for seed {res['seed']}; "
                                "pass runs of one configuration per seed")
            table[key].setdefault(res["seed"], row)
    return table


def paired(rows: dict[int, dict], base: dict[int, dict]) -> dict | None:
    seeds = sorted(set(rows) & set(base))
    if len(seeds) < 2:
        return None
    mean, low, high = paired_interval([rows[s]["worst"] - base[s]["worst"] for s in seeds])
    return {"seeds": seeds, "mean": mean, "ci95": [low, high]}


def baseline(row: str) -> str | None:
    """The retrain-only row a row is paired with: the one on the same clusters (None for retrain-only itself)."""
    base = "retrain_only_auto" if row.endswith("_auto") else "retrain_only"
    return None if row == base else base


def summarise(table: dict[str, dict[int, dict]]) -> dict:
    out = {}
    for name in [n for n in ORDER if n in table] + sorted(set(table) - set(ORDER)):
        rows = table[name]
        worst = [r["worst"] for r in rows.values()]
        out[name] = {"seeds": sorted(rows), "worst": worst, "avg": [r["avg"] for r in rows.values()],
                     "density": [r["density"] for r in rows.values()],
                     "time_s": [r["time_s"] for r in rows.values()],
                     "group_labels": any(r["group_labels"] for r in rows.values()),
                     "paired_vs_retrain_only": paired(rows, table[base]) if (base := baseline(name)) in table else None}
        inside = {str(seed): r["inside"] for seed, r in sorted(rows.items()) if "inside" in r}
        if inside:
            out[name]["inside"] = inside
    return out


def fmt(values: list[float]) -> str:
    if len(values) >= 2:
        return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"
    return f"{values[0]:.1f} (1 seed)" if values else "—"


def markdown(summary: dict) -> str:
    pre = summary.get("pretrained")
    lines = ["# Does the pretrained-backbone stand-in put ERM in the ImageNet-on-Waterbirds regime?", "",
             "Generated by `scripts/pretrained_table.py` from run folders (the commands are in "
             "docs/recipe.md, \"The pretrained regime\"); do not edit by hand.", ""]
    if pre:
        lines += [f"Stand-in: `{pre['out']}`, {pre['args']['arch']} at {pre['args']['size']} px, "
                  f"{pre['n_fit']} corpus images x {pre['args']['epochs']} epochs ({pre['steps']} steps), "
                  f"held-out item accuracy {100 * pre['held_out_item_acc']:.1f}%, background-family accuracy "
                  f"{100 * pre['held_out_family_acc']:.1f}%; {pre['cpu_s']:.0f} s CPU ({pre['wall_s']:.0f} s wall, "
                  f"{pre['torch_threads']} thread, 2 shared cores: noisy).", ""]
    lines += ["## Calibration (ERM fine-tuned from the stand-in)", "", f"Target (ratio 0.95): {CRITERIA}.", "",
              "| spurious ratio | seed | ERM epochs | test weighted avg | test balanced avg | test worst-group | gap "
              "(weighted − worst) | groups (y,a) | meets target | run time |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for row in summary["calibration"]:
        groups = ", ".join(f"{g} {v:.1f}" for g, v in sorted(row["groups"].items()))
        lines.append(f"| {row['ratio']} | {row['seed']} | {row['epochs']} | {row['test_weighted_avg']:.1f} | "
                     f"{row['test_avg']:.1f} | "
                     f"{row['test_worst']:.1f} | {row['gap']:.1f} | {groups} | "
                     f"{ {True: 'yes', False: 'no', None: '— (balanced reference)'}[row['meets_criteria']]} | {row['time_s']:.0f} s |")
    comp = summary.get("comparison") or {}
    lines += ["", "## Comparison (test, percent; mean ± sample std over seeds)", ""]
    if not comp:
        lines.append("No comparison run has finished yet.")
    else:
        lines += ["| method | seeds | worst-group | avg | density | paired worst-group diff. to retrain-only (95% CI) |",
                  "|---|---|---|---|---|---|"]
        for name, row in comp.items():
            density = [d for d in row["density"] if d is not None]
            diff = row["paired_vs_retrain_only"]
            diff_text = (f"{diff['mean']:+.1f} [{diff['ci95'][0]:+.1f}, {diff['ci95'][1]:+.1f}]" if diff else "—")
            label = f"{name} [group labels]" if row["group_labels"] else name
            lines.append(f"| {label} | {','.join(map(str, row['seeds']))} | {fmt(row['worst'])} | {fmt(row['avg'])} | "
                         f"{fmt(density)} | {diff_text} |")
        masked = [(name, seed, inside) for name, row in comp.items() for seed, inside in row.get("inside", {}).items()]
        if masked:
            blocks = [b for b in BLOCKS if any(b in inside["block_density"] for _, _, inside in masked)]
            lines += ["", "## Inside the masks", "",
                      "Mean density of the layers of each block (%), and the worst-cluster val score (%, the label-free "
                      "selection score) when pruning starts, for the mask kept, and after retraining.", "",
                      "| method | seed | " + " | ".join(blocks) + " | score: start → kept mask → retrained |",
                      "|---|---|" + "---|" * len(blocks) + "---|"]
            for name, seed, inside in masked:
                dens = " | ".join(f"{inside['block_density'][b]:.1f}" if b in inside["block_density"] else "—"
                                  for b in blocks)
                lines.append(f"| {name} | {seed} | {dens} | {inside['score_start']:.1f} → {inside['score_kept']:.1f} → "
                             f"{inside['score_retrained']:.1f} |")
        lines += ["", "Rows ending in `_auto` used the `--clusters_auto` clusters and are paired with `retrain_only_auto`; "
                  "rows ending in `_original` ran `--recipe original` (its own ERM settings). A single seed is a "
                  "measurement, not a conclusion; the paired interval needs 2 or more seeds."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    def work() -> None:
        parser = OneLineErrorParser(prog="pretrained_table.py", description=__doc__.splitlines()[0])
        parser.add_argument("--pretrained", default=None, help="the stand-in's summary (<file>.pt.json)")
        parser.add_argument("--calibration", nargs="*", default=[], metavar="RATIO=DIR")
        parser.add_argument("--comparison", nargs="*", default=[], metavar="DIR")
        parser.add_argument("--out_json", required=True)
        parser.add_argument("--out_md", required=True)
        args = parser.parse_args(argv)
        pairs = [item.split("=", 1) for item in args.calibration]
        if any(len(p) != 2 for p in pairs):
            raise UserError("--calibration takes RATIO=DIR items, e.g. 0.95=runs/erm_r95")
        summary = {"pretrained": json.loads(Path(args.pretrained).read_text()) if args.pretrained else None,
                   "criteria": CRITERIA, "calibration": [calibration_row(r, d) for r, d in pairs],
                   "comparison": summarise(comparison(args.comparison)) if args.comparison else {}}
        atomic_write_text(Path(args.out_json), json.dumps(summary, indent=1) + "\n")
        atomic_write_text(Path(args.out_md), markdown(summary))
        print(markdown(summary))

    return exit_code("pretrained_table.py", work)


if __name__ == "__main__":
    sys.exit(main())
