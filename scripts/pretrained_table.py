"""Tables of the pretrained-stand-in regime (issue 23) from finished run folders: calibration and comparison.

    python3 scripts/pretrained_table.py --pretrained FILE.pt.json \
        --calibration 0.95=RUN_DIR 0.5=RUN_DIR --comparison RUN_DIR ... \
        --out_json docs/results/pretrained.json --out_md docs/results/pretrained.md

``--calibration`` takes ERM runs (``run.py --mode erm``) by spurious ratio; ``--comparison`` takes
``run.py --mode all`` folders of any seeds (a run with ``--recipe original`` reports its methods as
``<method>_original``, one with ``--clusters_auto`` its cluster-dependent methods as ``<method>_auto``);
``--retrained NAME=DIR`` adds ``run.py --mode retrain`` folders (a saved mask retrained) as the row NAME. The
comparison gives mean ± sample std over seeds and, with 2 or more seeds, the paired difference to
retrain-only with its 95% t interval; it lists the seeds each method has. ``--agreement`` takes the JSON of
``benchmarks/mask_agreement.py`` (what each kept mask changes before retraining) for the masks' table.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.resnet import BLOCKS, block_of  # noqa: E402
from utils.cli import OneLineErrorParser, exit_code  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.results import atomic_write_text  # noqa: E402
from utils.sweep_report import paired_interval  # noqa: E402

CRITERIA = ("test avg >= 90% and worst-group >= 15 points below avg (ImageNet ERM on Waterbirds: about 97 / 60-75). "
            "The Waterbirds figures weigh the group accuracies by the training groups' shares (weighted avg "
            "here); the balanced avg (every test group alike) is shown beside it")
HEAD_ONLY = "retrain_only_head"  # the dense ERM model, last layer retrained: the cheapest annotation-free repair
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


def inside_the_mask(method: dict, agreement: dict | None = None) -> dict:
    """What a masked method's results.json says about its mask: the mean density of the layers of each
    ResNet block, and the worst-cluster val score (its selection score, no group labels) when pruning
    starts, for the mask kept, and after retraining (the epoch selected); with ``agreement`` (a record of
    ``benchmarks/mask_agreement.py``) the share of test predictions the kept mask changed, the test
    worst-group accuracy of the ERM model and of the masked one, both before any retraining, and the share
    of the absolute weight of the masked layers that the mask removed."""
    per_layer = method["density"]["per_layer"]
    blocks = {b: [d for name, d in per_layer.items() if block_of(name) == b] for b in BLOCKS}
    kept = next((p for p in method["pruning"] if p.get("kept")), method["pruning"][-1])
    inside = {"block_density": {b: 100 * statistics.mean(d) for b, d in blocks.items() if d},
              "score_start": 100 * method["pruning"][0]["score"], "score_kept": 100 * kept["score"],
              "score_retrained": 100 * method["selection_scores"][method["best_epoch"]]}
    if agreement is not None:
        test = agreement["test"]
        inside |= {"test_changed": 100 * test["changed"], "test_worst_dense": 100 * test["dense_worst_group_acc"],
                   "test_worst_mask_alone": 100 * test["masked_worst_group_acc"],
                   "weight_removed": 100 * agreement["removed_weight_share"]["all"]}
    return inside


def comparison(folders: list[str], agreement: dict[tuple[str, str], dict] | None = None,
               retrained: list[list[str]] = ()) -> dict:
    """row -> seed -> {worst, avg, density, time_s}, rows named by :func:`row_name`, and the ``--mode retrain``
    folders of ``retrained`` ([row name, folder] pairs) as the rows they name; ``agreement`` (by resolved
    folder and method) adds what the kept mask alone changed. The same row and seed from two folders must
    agree (the ERM that a default and a ``--clusters_auto`` sweep share); different numbers are refused,
    never mixed."""
    table: dict[str, dict[int, dict]] = {}
    agreement = agreement or {}
    for folder, named in [(d, None) for d in folders] + [(d, name) for name, d in retrained]:
        res = read(folder)
        for name, m in res["methods"].items():
            key, test = named or row_name(name, res["args"]), m["splits"]["test"]
            row = {"worst": 100 * test["worst_group_acc"], "avg": 100 * test["avg_acc"],
                   "density": 100 * m["density"]["overall"] if isinstance(m.get("density"), dict) else None,
                   "time_s": m.get("time_s"), "group_labels": m.get("uses_group_labels", False), "run": folder}
            if m.get("pruning"):
                row["inside"] = inside_the_mask(m, agreement.get((str(Path(folder).resolve()), name)))
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
    """The retrain-only row a row is paired with: the one on the same clusters, or with the same retraining
    scope for rows ending in ``_head`` (None for a retrain-only row itself)."""
    base = next((f"retrain_only{end}" for end in ("_auto", "_head") if row.endswith(end)), "retrain_only")
    return None if row == base else base


def summarise(table: dict[str, dict[int, dict]]) -> dict:
    """Per row: the seeds' values, and the paired worst-group differences to its retrain-only row (:func:`baseline`)
    and, when that row exists, to :data:`HEAD_ONLY`, the dense model with its last layer retrained."""
    out = {}
    for name in [n for n in ORDER if n in table] + sorted(set(table) - set(ORDER)):
        rows = table[name]
        worst = [r["worst"] for r in rows.values()]
        out[name] = {"seeds": sorted(rows), "worst": worst, "avg": [r["avg"] for r in rows.values()],
                     "density": [r["density"] for r in rows.values()],
                     "time_s": [r["time_s"] for r in rows.values()],
                     "group_labels": any(r["group_labels"] for r in rows.values()),
                     "paired_vs_retrain_only": paired(rows, table[base]) if (base := baseline(name)) in table else None,
                     "paired_vs_head_only": paired(rows, table[HEAD_ONLY])
                     if HEAD_ONLY in table and name != HEAD_ONLY else None}
        inside = {str(seed): r["inside"] for seed, r in sorted(rows.items()) if "inside" in r}
        if inside:
            out[name]["inside"] = inside
    return out


def fmt(values: list[float]) -> str:
    if len(values) >= 2:
        return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"
    return f"{values[0]:.1f} (1 seed)" if values else "—"


def stand_in_cost(pre: dict) -> str:
    """What making the stand-in cost, where it ran."""
    if pre.get("device", "cpu") != "cpu":
        return f"{pre['wall_s']:.0f} s wall on {pre['device']}" + (" under bf16 autocast" if pre.get("bf16") else "")
    cores = pre.get("cpus", 2)  # summaries older than the field all come from the study's 2-core machine
    return (f"{pre['cpu_s']:.0f} s CPU ({pre['wall_s']:.0f} s wall, {pre['torch_threads']} thread, {cores} shared "
            f"cores: noisy)")


def markdown(summary: dict) -> str:
    pre = summary.get("pretrained")
    lines = ["# Does the pretrained-backbone stand-in put ERM in the ImageNet-on-Waterbirds regime?", "",
             "Generated by `scripts/pretrained_table.py` from run folders (the commands are in "
             "docs/recipe.md, \"The pretrained regime\"); do not edit by hand.", ""]
    if pre:
        lines += [f"Stand-in: `{pre['out']}`, {pre['args']['arch']} at {pre['args']['size']} px, "
                  f"{pre['n_fit']} corpus images x {pre['args']['epochs']} epochs ({pre['steps']} steps), "
                  f"held-out item accuracy {100 * pre['held_out_item_acc']:.1f}%, background-family accuracy "
                  f"{100 * pre['held_out_family_acc']:.1f}%; {stand_in_cost(pre)}.", ""]
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
        head = any(row.get("paired_vs_head_only") for row in comp.values())
        lines += ["| method | seeds | worst-group | avg | density | paired worst-group diff. to retrain-only (95% CI) |"
                  + (f" paired worst-group diff. to {HEAD_ONLY} (95% CI) |" if head else ""),
                  "|---|---|---|---|---|---|" + ("---|" if head else "")]
        for name, row in comp.items():
            density = [d for d in row["density"] if d is not None]
            diffs = [row["paired_vs_retrain_only"]] + ([row.get("paired_vs_head_only")] if head else [])
            diff_text = " | ".join(f"{d['mean']:+.1f} [{d['ci95'][0]:+.1f}, {d['ci95'][1]:+.1f}]" if d else "—"
                                   for d in diffs)
            label = f"{name} [group labels]" if row["group_labels"] else name
            lines.append(f"| {label} | {','.join(map(str, row['seeds']))} | {fmt(row['worst'])} | {fmt(row['avg'])} | "
                         f"{fmt(density)} | {diff_text} |")
        masked = [(name, seed, inside) for name, row in comp.items() for seed, inside in row.get("inside", {}).items()]
        if masked:
            blocks = [b for b in BLOCKS if any(b in inside["block_density"] for _, _, inside in masked)]
            lines += ["", "## Inside the masks", "",
                      "Mean density of the layers of each block (%), and the worst-cluster val score (%, the label-free "
                      "selection score) when pruning starts, for the mask kept, and after retraining; then, from "
                      "`benchmarks/mask_agreement.py`, the test predictions the kept mask changed and the test "
                      "worst-group accuracy of the ERM model and of the masked model, both before retraining, and "
                      "the share of the absolute weight of the masked layers that the mask removed.", "",
                      "| method | seed | " + " | ".join(blocks) + " | score: start → kept mask → retrained | "
                      "test predictions changed by the mask | test worst-group: ERM → mask alone | "
                      "weight magnitude removed |",
                      "|---|---|" + "---|" * len(blocks) + "---|---|---|---|"]
            for name, seed, inside in masked:
                dens = " | ".join(f"{inside['block_density'][b]:.1f}" if b in inside["block_density"] else "—"
                                  for b in blocks)
                alone = (f"{inside['test_changed']:.1f}% | {inside['test_worst_dense']:.1f} → "
                         f"{inside['test_worst_mask_alone']:.1f} | {inside['weight_removed']:.1f}%"
                         if "test_changed" in inside else "— | — | —")
                lines.append(f"| {name} | {seed} | {dens} | {inside['score_start']:.1f} → {inside['score_kept']:.1f} → "
                             f"{inside['score_retrained']:.1f} | {alone} |")
        lines += ["", "Rows ending in `_auto` used the `--clusters_auto` clusters and are paired with "
                  "`retrain_only_auto`; rows ending in `_original` ran `--recipe original` (its own ERM settings); rows given with "
                  "`--retrained` are a saved model retrained by `run.py --mode retrain` (docs/recipe.md names each), "
                  "paired with `retrain_only`, or with `retrain_only_head` (the dense ERM model, last layer "
                  "retrained) when they end in `_head`. A single seed is a "
                  "measurement, not a conclusion; the paired interval needs 2 or more seeds."]
    return "\n".join(lines) + "\n"


def named_items(items: list[str], flag: str, example: str) -> list[list[str]]:
    """``KEY=DIR`` items as [KEY, DIR] pairs."""
    pairs = [item.split("=", 1) for item in items]
    if any(len(p) != 2 for p in pairs):
        raise UserError(f"{flag} takes KEY=DIR items, e.g. {example}")
    return pairs


def main(argv: list[str] | None = None) -> int:
    def work() -> None:
        parser = OneLineErrorParser(prog="pretrained_table.py", description=__doc__.splitlines()[0])
        parser.add_argument("--pretrained", default=None, help="the stand-in's summary (<file>.pt.json)")
        parser.add_argument("--calibration", nargs="*", default=[], metavar="RATIO=DIR")
        parser.add_argument("--comparison", nargs="*", default=[], metavar="DIR")
        parser.add_argument("--retrained", nargs="*", default=[], metavar="NAME=DIR",
                            help="run.py --mode retrain folders of a saved mask, each as the row NAME")
        parser.add_argument("--agreement", nargs="*", default=[], metavar="JSON",
                            help="the --json files of benchmarks/mask_agreement.py")
        parser.add_argument("--out_json", required=True)
        parser.add_argument("--out_md", required=True)
        args = parser.parse_args(argv)
        pairs, retrained = (named_items(items, flag, example) for items, flag, example in (
            (args.calibration, "--calibration", "0.95=runs/erm_r95"),
            (args.retrained, "--retrained", "prusc_original_mask_retrained=runs/orig_mask/seed0")))
        agreement = {(str(Path(r["run"]).resolve()), r["method"]): r
                     for path in args.agreement for r in json.loads(Path(path).read_text())}
        summary = {"pretrained": json.loads(Path(args.pretrained).read_text()) if args.pretrained else None,
                   "criteria": CRITERIA, "calibration": [calibration_row(r, d) for r, d in pairs],
                   "comparison": summarise(comparison(args.comparison, agreement, retrained))
                   if args.comparison or retrained else {}}
        atomic_write_text(Path(args.out_json), json.dumps(summary, indent=1) + "\n")
        atomic_write_text(Path(args.out_md), markdown(summary))
        print(markdown(summary))

    return exit_code("pretrained_table.py", work)


if __name__ == "__main__":
    sys.exit(main())
