"""Write the result tables of README.md and docs/ from the summary files kept in docs/.

A generated table sits between ``<!-- table:NAME -->`` and ``<!-- /table -->`` in a Markdown file,
NAME being a key of ``TABLES``. ``python3 docs/build_results.py`` rewrites every such table;
``--check`` writes nothing and exits 1 naming each table that differs from its summary
(``tests/test_docs.py`` runs it), so a typed number cannot drift from the file it came from.
The pages ``docs/results/pretrained*.md`` are written whole by ``scripts/pretrained_table.py``; they
are checked and rewritten here from their ``.json`` the same way.
Formatting (decimals, bold, row labels) belongs to each table below; the numbers come from the JSON.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
import sys
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from pathlib import Path
from typing import Callable

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # the scripts and benchmarks that write some pages whole
from utils.cli import OneLineErrorParser, exit_code  # noqa: E402
from utils.errors import UserError  # noqa: E402

MARKER = re.compile(r"(<!-- table:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


@lru_cache(maxsize=None)
def summary(relative: str) -> dict:
    path = DOCS / relative
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read it as JSON ({exc}); restore it (git checkout) or rerun the command "
                        "its page names") from None


def fixed(value: float, digits: int = 1) -> str:
    """``value`` to ``digits`` decimals, halves rounded up as a reader rounds the printed number
    (60.15 -> 60.2, where binary floating point and ``format`` give 60.1)."""
    return str(Decimal(repr(value)).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def mean_std(values: list[float], digits: int = 1) -> str:
    """``mean ± sample std`` (n − 1), the convention of every table here."""
    return f"{fixed(statistics.mean(values), digits)} ± {fixed(statistics.stdev(values), digits)}"


def typed(pair: list, digits: int = 1) -> str:
    """A ``[mean, std]`` pair of a summary typed from the README; a dense model's density is ``[100, null]``."""
    mean, std = pair
    return fixed(mean, 0) if std is None else f"{fixed(mean, digits)} ± {fixed(std, digits)}"


def bold(text: str, on: bool) -> str:
    return f"**{text}**" if on else text


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"

    return [line(header), "|" + "---|" * len(header)] + [line(row) for row in rows]


# --- Colored Digits (docs/digits/summary_from_readme.json) ---

DIGITS = "digits/summary_from_readme.json"
DIGITS_ROWS = [  # (method, label in the results page, label in the README, bold)
    ("erm", "ERM", "ERM", False),
    ("retrain_only", "retrain-only (same retraining, no mask)", "retrain-only", False),
    ("prusc_no_con", "mask without `L_con` + retraining", "mask without `L_con`", False),
    ("prusc", "PruSC", "PruSC", True),
    ("jtt", "JTT (T = 1, λ_up = 50; epoch chosen by worst-cluster val accuracy)", "JTT", False),
    ("irm", "IRM on cluster environments (published defaults, mini-batches of 64)", "IRM on cluster environments",
     False),
    ("groupdro", "GroupDRO (*group labels*)", "GroupDRO (*group labels*)", False),
    ("dfr", "DFR (*val group labels*)", "DFR (*val group labels*)", False),
    ("oracle_group_balanced", "group-balanced ERM oracle (*group labels*)", "group-balanced oracle (*group labels*)",
     False),
]


def digits_erm_ratio() -> list[str]:
    rows = summary(DIGITS)["erm_spurious_ratio"]["rows"]
    return table(["`--spurious_ratio`", "test avg acc", "test worst-group acc"],
                 [[f"{ratio}{' (default)' if ratio == '0.95' else ''}", fixed(r["avg_acc"], 2),
                   fixed(r["worst_group_acc"], 2)] for ratio, r in rows.items()])


def digits_5seeds(headline: bool = False) -> list[str]:
    methods = summary(DIGITS)["five_seeds"]["methods"]
    columns = ["avg_acc", "worst_group_acc"] + ([] if headline else ["mean_group_acc"]) + ["density"]
    header = ["method", "test avg", "test worst-group"] + ([] if headline else ["test mean-group"]) + ["density %"]
    rows = []
    for key, page_label, readme_label, strong in DIGITS_ROWS:
        cells = [typed(methods[key][c]) for c in columns]
        cells[1] = bold(cells[1], strong)
        rows.append([bold(readme_label if headline else page_label, strong), *cells])
    return table(header, rows)


def digits_recipe(recipe: str, best: str) -> list[str]:
    """Head-only or training-split retraining: four methods, the best worst-group in bold."""
    methods = summary(DIGITS)[recipe]["methods"]
    labels = {"erm": "ERM", "retrain_only": "retrain-only", "prusc_no_con": "mask without `L_con`", "prusc": "PruSC"}
    return table(["method", "test avg", "test worst-group", "density %"],
                 [[label, typed(methods[key]["avg_acc"]), bold(typed(methods[key]["worst_group_acc"]), key == best),
                   typed(methods[key]["density"])] for key, label in labels.items()])


# --- Colored Fashion-MNIST (docs/cmnist/summary_from_readme.json) ---

CMNIST = "cmnist/summary_from_readme.json"
IRM_ROWS = [("erm", "ERM (pooled)"), ("irm_true", "IRM, true environments"),
            ("irm_clusters", "IRM, cluster environments"), ("irm_random", "IRM, random partitions")]


def cmnist_irm(headline: bool = False) -> list[str]:
    variants = summary(CMNIST)["irm_fashion"]["variants"]
    rows = []
    for key, label in IRM_ROWS:
        v, strong = variants[key], key == "irm_clusters"
        sizes = " / ".join(f"{n:,}" for n in v["env_sizes"])
        test = bold(typed(v["test_acc"], 2), strong)
        worst = typed(v["test_worst_group_acc"], 2)
        rows.append([bold(label, strong), test, worst] if headline else
                    [bold(label, strong), sizes, typed(v["train_acc"], 2), test, worst])
    header = ["variant", "test acc", "test worst-group acc"]
    return table(header if headline else ["variant", "env sizes", "train acc", *header[1:]], rows)


def cmnist_irm_ablations() -> list[str]:
    def cell(value: float | str | None) -> str:
        return fixed(value, 2) if isinstance(value, float) else (value or "")

    rows = summary(CMNIST)["irm_fashion"]["ablations"]["rows"]
    return table(["change from the run above", "IRM cluster envs", "IRM true envs"],
                 [[r["change"], cell(r["irm_cluster_envs"]), cell(r["irm_true_envs"])] for r in rows])


def cmnist_erm_fashion() -> list[str]:
    erm = summary(CMNIST)["erm_fashion_28"]
    rows = []
    for split, label in (("val", "val (training distribution)"), ("test", "test (colour reversed)")):
        s = erm[split]
        groups = [f"{fixed(acc, 2)} (n={n})" for acc, n in s["groups"].values()]
        rows.append([label, bold(fixed(s["avg_acc"], 2), split == "test"),
                     bold(fixed(s["worst_group_acc"], 2), split == "test"), *groups])
    return table(["split", "avg acc", "worst-group acc", *erm["test"]["groups"]], rows)


def cmnist_environments() -> list[str]:
    envs = summary(CMNIST)["irm_fashion"]["environments"]
    rows = [[role, f"{envs[role]['size']:,}", f"{fixed(envs[role]['conflicting_percent'])}%",
             f"{fixed(envs[role]['agreement_percent'])}%"] for role in ("minority", "balanced")]
    true = envs["true"]
    rows.append(["(true env 0 / env 1, for comparison)", f"{true['size_each']:,} each", "",
                 " / ".join(f"{fixed(a)}%" for a in true["agreement_percent"])])
    return table(["environment", "size", "conflicting", "label–colour agreement"], rows)


def cmnist_prusc_gpu() -> list[str]:
    methods = summary(CMNIST)["prusc_fashion_gpu"]["methods"]
    labels = {"erm": "ERM", "retrain_only": "retrain-only", "prusc_no_con": "mask without `L_con`", "prusc": "PruSC",
              "oracle_group_balanced": "oracle: group-balanced ERM (no early stopping)"}
    return table(["method", "test avg", "test worst-group", "density %"],
                 [[label, typed(methods[key]["avg_acc"]), typed(methods[key]["worst_group_acc"]),
                   typed(methods[key]["density"])] for key, label in labels.items()])


# --- Fashion scenes (docs/scenes/*.json, docs/gpu/*.json: written by the runs) ---

COMBINED = "scenes/r18_seeds0-2_combined.json"
BASELINES = "scenes/r18_baselines_seeds0-2.json"
TRAIN_SPLIT = "scenes/r18_trainsplit_seeds0-2.json"


def scenes_method(key: str) -> dict[str, list[float] | None]:
    """Per-seed test avg, worst-group and density (%, None for dense models) of a method, seeds 0-2.
    GroupDRO and JTT of seeds 1-2 ran afterwards, one method per run: their file holds all three seeds."""
    if key in ("groupdro", "jtt"):
        runs = summary(BASELINES)["per_seed"][key]
        return {"avg": [r["test_avg"] for r in runs], "worst": [r["test_worst_group"] for r in runs], "density": None}
    m = summary(COMBINED)["test_percent"][key]
    dense = all(d == 100.0 for d in m["density"])
    return {"avg": m["avg_acc"], "worst": m["worst_group_acc"], "density": None if dense else m["density"]}


SCENES_ROWS = [  # (method, label, bold)
    ("erm", "ERM", False),
    ("retrain_only", "retrain-only (same retraining, no mask)", False),
    ("prusc_no_con", "mask without `L_con` + retraining", False),
    ("prusc", "PruSC", True),
    ("groupdro", "GroupDRO (*group labels*)", False),
    ("jtt", "JTT (T = 1, λ_up = 50; epoch by worst-cluster val accuracy)", False),
    ("dfr", "DFR (*val group labels*)", False),
]


def scenes_r18() -> list[str]:
    rows = []
    for key, label, strong in SCENES_ROWS:
        m = scenes_method(key)
        density = "100" if m["density"] is None else mean_std(m["density"])
        rows.append([bold(label, strong), str(len(m["worst"])), mean_std(m["avg"]), bold(mean_std(m["worst"]), strong),
                     density])
    return table(["method", "seeds", "test avg", "test worst-group", "density %"], rows)


def scenes_r18_per_seed() -> list[str]:
    keys = ["erm", "retrain_only", "prusc_no_con", "prusc", "groupdro", "jtt", "dfr"]
    methods = {key: scenes_method(key) for key in keys}
    rows = []
    for i, seed in enumerate(summary(COMBINED)["seeds"]):
        cells = []
        for key in keys:
            m = methods[key]
            cell = f"{fixed(m['avg'][i])} / {fixed(m['worst'][i])}"
            cells.append(cell if m["density"] is None else f"{cell} ({fixed(m['density'][i])}%)")
        rows.append([str(seed), *cells])
    return table(["seed", "ERM", "retrain-only", "mask without `L_con`", "PruSC", "GroupDRO", "JTT", "DFR"], rows)


def scenes_r18_train_split() -> list[str]:
    erm = scenes_method("erm")
    rows = [["ERM (the 3-seed table)", mean_std(erm["avg"]), mean_std(erm["worst"]), "100",
             ", ".join(fixed(w) for w in erm["worst"])]]
    labels = [("retrain_only", "retrain-only (on train)", False),
              ("prusc_no_con", "mask without `L_con` + retraining on train", False),
              ("prusc", "**PruSC** (retraining on train)", True)]
    for key, label, strong in labels:
        runs = summary(TRAIN_SPLIT)["per_seed"][key]
        worst = [r["test_worst_group"] for r in runs]
        density = [r["density"] for r in runs]
        rows.append([label, mean_std([r["test_avg"] for r in runs]),
                     bold(mean_std(worst), strong),
                     "100" if density[0] is None else mean_std([100 * d for d in density]),
                     ", ".join(fixed(w) for w in worst)])
    return table(["method", "test avg", "test worst-group", "density %", "worst-group per seed (0, 1, 2)"], rows)


TYPED = "scenes/typed_from_readme.json"
HEAD_ONLY = "scenes/r18_head_seed0_summary.json"
GROUPS = ("y=0,a=0", "y=0,a=1", "y=1,a=0", "y=1,a=1")


def scenes_calibration() -> list[str]:
    """Ratio 0.95 is seed 0's ERM of the 3-seed comparison; ratio 0.5 was one run whose numbers are typed."""
    erm = summary(COMBINED)["test_percent"]["erm"]
    r95 = {"avg": erm["avg_acc"][0], "worst": erm["worst_group_acc"][0],
           "groups": [erm["groups"][g][0] for g in GROUPS]}
    half = summary(TYPED)["calibration_ratio_0.5"]
    r50 = {"avg": half["avg_acc"], "worst": half["worst_group_acc"], "groups": [half["groups"][g] for g in GROUPS]}
    rows = []
    for ratio, r, wall in (("0.95", r95, "9.1 min training (ERM row of the seed-0 comparison below)"),
                           ("0.5", r50, "9.3 min (training and evaluation)")):
        gap = fixed(float(fixed(r["avg"])) - float(fixed(r["worst"])))
        rows.append(["ResNet-18, 5", ratio, fixed(r["avg"]), fixed(r["worst"]), gap,
                     " / ".join(fixed(g) for g in r["groups"]), wall])
    return table(["backbone, ERM epochs", "ratio", "test avg", "test worst-group", "gap",
                  "groups (y,place) 00 / 01 / 10 / 11", "wall"], rows)


def cell(m: dict | None, strong: bool = False, density: bool = False) -> str:
    """``worst / avg`` of one method of one run, with its mask density when asked."""
    if m is None:
        return "not run"
    text = f"{bold(fixed(m['worst_group_acc']), strong)} / {fixed(m['avg_acc'])}"
    return f"{text} ({fixed(m['density'])}%)" if density else text


def scenes_head_only() -> list[str]:
    """Run A's numbers are typed (its summary was not kept); run B is ``r18_head_seed0_summary.json``."""
    a = summary(TYPED)["head_only_run_A"]
    b = {k: {"worst_group_acc": v["worst_group_acc"][0], "avg_acc": v["avg_acc"][0], "density": v["density"][0]}
         for k, v in summary(HEAD_ONLY)["test_percent"].items()}

    return table(["run", "retrain-only worst / avg", "mask without `L_con` worst / avg (density)",
                  "PruSC worst / avg (density)"],
                 [["A: `--checkpoint erm.pt --cluster_checkpoint erm_epoch1.pt` (the default pipeline's clusters)",
                   cell(a["retrain_only"], strong=True), cell(a["prusc_no_con"], density=True),
                   cell(a["prusc"], density=True)],
                  ["B: `--checkpoint erm.pt --clusters clusters.csv` (val placed with the final model's features)",
                   cell(b["retrain_only"]), cell(b.get("prusc_no_con"), density=True),
                   cell(b["prusc"], strong=True, density=True)]])


def scenes_clusters() -> list[str]:
    """The default row is seed 0 of the 3-seed comparison; the two other clusterings are typed."""
    combined = summary(COMBINED)["test_percent"]
    seed0 = {k: {"worst_group_acc": combined[k]["worst_group_acc"][0], "avg_acc": combined[k]["avg_acc"][0],
                 "density": combined[k]["density"][0]} for k in ("retrain_only", "prusc_no_con", "prusc")}
    study = summary(TYPED)["cluster_study_seed0"]
    labels = [("per class, 2 per class (default)", seed0), ("per class, 8 per class", study["per_class_8"]),
              ("16 over all samples (the original code's choice; cosine k-means there, Euclidean on normalised "
               "features here)", study["global_16"])]
    return table(["clusters", "retrain-only worst / avg", "mask without `L_con` worst / avg (density)",
                  "PruSC worst / avg (density)"],
                 [[label, cell(m["retrain_only"]), cell(m["prusc_no_con"], density=True),
                   cell(m["prusc"], density=True)] for label, m in labels])


GPU_RUNS = {"A": "gpu/h200_scenes_r50_e10_results.json", "B": "gpu/h200_scenes_r50_e30_results.json"}
GPU_DENSITY_DIGITS = {("A", "prusc_no_con"): 0, ("A", "prusc"): 1, ("B", "prusc_no_con"): 2, ("B", "prusc"): 1}


def gpu_cell(run: str, key: str, strong_worst: bool = False) -> str:
    methods = summary(GPU_RUNS[run])["methods"]
    if key not in methods:
        return "not run (time)"
    test = methods[key]["splits"]["test"]
    cell = f"{bold(fixed(100 * test['worst_group_acc']), strong_worst)} / {fixed(100 * test['avg_acc'])}"
    if (run, key) in GPU_DENSITY_DIGITS:
        cell += f" ({fixed(100 * methods[key]['density']['overall'], GPU_DENSITY_DIGITS[run, key])}%)"
    return cell


def scenes_r50_gpu() -> list[str]:
    labels = [("erm", "ERM"), ("retrain_only", "retrain-only"), ("prusc_no_con", "mask without `L_con` + retraining"),
              ("prusc", "**PruSC**"), ("groupdro", "GroupDRO (*group labels*)"), ("dfr", "DFR (*val group labels*)")]
    rows = [["", "worst / avg (density)", "worst / avg (density)"]]
    rows += [[label, gpu_cell("A", key), gpu_cell("B", key, key == "prusc")] for key, label in labels]
    rows.append(["wall time of the whole command", "186 s", "215 s (ERM 92 s, each pruning run about 30 s)"])
    return table(["method", "A: 10 ERM epochs, batch 128 (commit c2ec7ad)",
                  "B: 30 ERM epochs, batch 64 (script of 66b66b7, code of c2ec7ad)"], rows)


# --- The GPU check (docs/gpu/h200_throughput.json) ---

THROUGHPUT = "gpu/h200_throughput.json"
THROUGHPUT_ROWS = [  # (key in images_per_s, label, suffix)
    ("ERM step, model only (batch on the device)", "ERM step, model only (batch on the device)", ""),
    ("ERM through the training loop (bookkeeping included)",
     "ERM through the training loop (bookkeeping included)", ""),
    ("data path: image cache + to_device", "data path: image cache + `to_device`", ""),
    ("data path: decoding JPEGs + to_device", "data path: decoding JPEGs + `to_device`", ""),
    ("run.py --mode erm, one epoch ((3 epochs - 1 epoch) / 2)",
     "`run.py --mode erm`, one epoch, as measured then ((3 epochs − 1 epoch) / 2 of wall time)",
     " (wrong, see below)"),
    ("PruSC pruning step, model only", "PruSC pruning step, model only", ""),
    ("feature extraction, model only", "feature extraction, model only", ""),
    ("feature extraction through the data path", "feature extraction through the data path (batch 512)", ""),
]
RATIO_ROWS = [  # (key in ratios, label, suffix, goal)
    ("ERM through the loop / model-only ERM step", "ERM through the loop / model-only ERM step", "", ""),
    ("data path (cache) / model-only ERM step", "data path (cache) / model-only ERM step", "", ""),
    ("image cache / decoding JPEGs", "image cache / decoding JPEGs", "", ""),
    ("pruning step / ERM step (time)", "pruning step / ERM step (time, bf16, channels-last)", "",
     "≤ 1.25: **missed**"),
    ("end-to-end ERM epoch / model-only ERM step", "end-to-end ERM epoch / model-only ERM step",
     " as printed: **not a valid measurement**", "≥ 0.85: unknown"),
]


def gpu_throughput() -> list[str]:
    rates = summary(THROUGHPUT)["images_per_s"]
    return table(["what", "images/s"],
                 [[label, f"{rates[key]:,.0f}{suffix}"] for key, label, suffix in THROUGHPUT_ROWS])


def gpu_ratios() -> list[str]:
    ratios = summary(THROUGHPUT)["ratios"]
    return table(["ratio", "value", "goal"],
                 [[label, f"{fixed(ratios[key], 2)}{suffix}", goal] for key, label, suffix, goal in RATIO_ROWS])


# --- The --clusters_auto study (docs/clustering_choice/*.json, benchmarks/cluster_choice_study.py) ---

CHOICE = ("clustering_choice/digits.json", "clustering_choice/scenes64_scratch.json",
          "clustering_choice/scenes32_pretrained.json", "clustering_choice/scenes32_pretrained_v3.json")


def clustering_choice() -> list[str]:
    from benchmarks.cluster_choice_study import table as choice_table  # imports torch: only when asked

    return choice_table([str(DOCS / p) for p in CHOICE]).rstrip("\n").splitlines()


# --- Which reference model clusters the attribute (docs/clustering/*.json, benchmarks/reference_model_study.py) ---

def reference_study(name: str) -> list[str]:
    from benchmarks.reference_model_study import table as reference_table

    return reference_table(summary(f"clustering/{name}.json"))


# --- the pretrained regime (docs/results/pretrained.json, written by scripts/pretrained_table.py) ---

PRETRAINED_ROWS = [  # (row of the page, label in the README, bold)
    ("erm", "ERM", False),
    ("retrain_only", "retrain-only (every weight retrained, no mask)", False),
    ("prusc_no_con", "mask without `L_con` + retraining", False),
    ("prusc", "**PruSC**", False),
    ("retrain_only_head", "last layer retrained, no mask (`--retrain_scope head`)", True),
    ("prusc_mask_head", "PruSC's mask + last layer retrained", False),
    ("dfr", "DFR (*val group labels*)", False),
]  # JTT and GroupDRO: on the page


def pretrained_headline() -> list[str]:
    """The pretrained regime's main rows, each paired by seed with retrain-only and with the last-layer retraining."""
    from scripts.pretrained_table import paired

    comparison = summary("results/pretrained.json")["comparison"]

    def versus(key: str, base: str) -> str:
        if key == base:
            return "reference"
        per_seed = [{s: {"worst": w} for s, w in zip(comparison[k]["seeds"], comparison[k]["worst"])}
                    for k in (key, base)]
        pair = paired(*per_seed)
        return f"{pair['mean']:+.1f} [{pair['ci95'][0]:+.1f}, {pair['ci95'][1]:+.1f}]" if pair else "—"

    rows = [[label, str(len(comparison[key]["seeds"])), mean_std(comparison[key]["avg"]),
             bold(mean_std(comparison[key]["worst"]), strong), versus(key, "retrain_only"),
             versus(key, "retrain_only_head")] for key, label, strong in PRETRAINED_ROWS]
    return table(["method", "seeds", "test avg", "test worst-group", "vs retrain-only (paired, 95% CI)",
                  "vs last layer retrained (paired, 95% CI)"], rows)


# --- The pretrained regime's curve (docs/curves/pretrained_v3/report.csv and the mask records) ---

CURVE_REPORT = "curves/pretrained_v3/report.csv"
CURVE_MASKS = ("masks/pretrained_v3_curve_agreement.json", "masks/pretrained_v3_agreement.json")
COMPARISON_POINT = (20, 5e-8)  # the comparison's folders (cmp_default/seed<s>) carry no grid settings in their name
CURVE_METHODS = {"prusc": "PruSC", "prusc_no_con": "mask without `L_con`"}


def curve_point(run: str) -> tuple[int, float] | None:
    """(pruning epochs, ``--lambda_sparse``) of a run folder of the curve sweeps or of the default comparison."""
    folder = Path(run).parent.name
    if folder == "cmp_default":
        return COMPARISON_POINT
    settings = dict(part.split("=", 1) for part in folder.split(",") if "=" in part)
    if {"pruning_ep", "lambda_sparse"} <= set(settings):
        return int(settings["pruning_ep"]), float(settings["lambda_sparse"])
    return None


def span(values: list[float], unit: str = "", sign: bool = False) -> str:
    """``lo to hi`` of ``values`` (one value when they agree to the shown decimal)."""
    shown = [f"{v:+.1f}" if sign else fixed(v) for v in (min(values), max(values))]
    return f"{shown[0]}{unit}" if shown[0] == shown[1] else f"{shown[0]} to {shown[1]}{unit}"


def mask_alone(records: list[dict]) -> str:
    """What the masks do before retraining, on the test split: predictions changed, worst group ERM -> mask,
    share of the absolute weight removed."""
    if not records:
        return ""
    tests = [r["test"] for r in records]
    moved = [100 * (t["masked_worst_group_acc"] - t["dense_worst_group_acc"]) for t in tests]
    return ", ".join([span([100 * t["changed"] for t in tests], "%"), span(moved, sign=True),
                      span([100 * r["removed_weight_share"]["all"] for r in records], "%")])


def curve_order(point: tuple[int, float]) -> tuple:
    """Curve points by length; at each length the comparison's point first, then by falling ``--lambda_sparse``."""
    return point[0], point != COMPARISON_POINT, -point[1]


def worst_by_seed(row: dict[str, str]) -> dict[str, str]:
    """``{seed: test worst-group %}`` of a report.csv row."""
    return dict(pair.split(":") for pair in row["worst_by_seed"].split())


def read_report_csv(relative: str) -> list[dict[str, str]]:
    path = DOCS / relative
    try:
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc}); rerun the report command of the page that shows it") from None


def pretrained_curve() -> list[str]:
    """Each curve point of PruSC and of the mask without ``L_con``: per-seed test worst-group, the paired
    difference to retrain-only, density and what the mask alone changes."""
    report = read_report_csv(CURVE_REPORT)
    records = [r for name in CURVE_MASKS for r in summary(name)]
    reference = worst_by_seed(next(r for r in report if r["method"] == "retrain_only"))  # the grid does not move it
    rows = [["retrain-only (the reference; the same at every point)", ", ".join(reference),
             " / ".join(fixed(float(v)) for v in reference.values()), "", "100%", ""]]
    for method, label in CURVE_METHODS.items():
        points = {(int(r["pruning_ep"]), float(r["lambda_sparse"])): r for r in report if r["method"] == method}
        for point in sorted(points, key=curve_order):
            row, worst = points[point], worst_by_seed(points[point])
            masks = [r for r in records if r["method"] == method and curve_point(r["run"]) == point
                     and Path(r["run"]).name.removeprefix("seed") in worst]
            low, high = float(row["d_worst_lo"]), float(row["d_worst_hi"])
            delta = f"{float(row['d_worst_mean']):+.1f}" + ("" if math.isnan(low) else f" [{low:+.1f}, {high:+.1f}]")
            name = f"{label}: {point[0]}, {row['lambda_sparse']}" + (" (comparison)" * (point == COMPARISON_POINT))
            rows.append([name, ", ".join(worst), " / ".join(fixed(float(v)) for v in worst.values()), delta,
                         f"{fixed(float(row['density_mean']))}%", mask_alone(masks)])
    return table(["method: pruning epochs, `--lambda_sparse`", "seeds", "test worst-group by seed",
                  "− retrain-only (paired, 95% CI)", "density (mean)",
                  "mask alone: test predictions changed, worst-group ERM → mask, weight removed"], rows)


# --- Pages that a script writes whole from the summary kept beside them ---

def whole_pages() -> dict[Path, Callable[[], str]]:
    """``docs/results/pretrained*.md``, each written by ``scripts/pretrained_table.py`` with its ``.json``."""
    from scripts.pretrained_table import markdown

    return {path.with_suffix(".md"): (lambda path=path: markdown(json.loads(path.read_text())))
            for path in sorted((DOCS / "results").glob("pretrained*.json"))}


TABLES: dict[str, Callable[[], list[str]]] = {
    "digits_erm_ratio": digits_erm_ratio,
    "digits_5seeds": digits_5seeds,
    "digits_5seeds_headline": lambda: digits_5seeds(headline=True),
    "digits_head_only": lambda: digits_recipe("head_only", best="prusc_no_con"),
    "digits_train_split": lambda: digits_recipe("train_split", best=""),
    "cmnist_erm_fashion": cmnist_erm_fashion,
    "cmnist_environments": cmnist_environments,
    "cmnist_irm": cmnist_irm,
    "cmnist_irm_headline": lambda: cmnist_irm(headline=True),
    "cmnist_irm_ablations": cmnist_irm_ablations,
    "cmnist_prusc_gpu": cmnist_prusc_gpu,
    "scenes_calibration": scenes_calibration,
    "scenes_head_only": scenes_head_only,
    "scenes_clusters": scenes_clusters,
    "scenes_r18": scenes_r18,
    "scenes_r18_headline": scenes_r18,
    "scenes_r18_per_seed": scenes_r18_per_seed,
    "scenes_r18_train_split": scenes_r18_train_split,
    "scenes_r50_gpu": scenes_r50_gpu,
    "gpu_throughput": gpu_throughput,
    "gpu_ratios": gpu_ratios,
    "clustering_choice": clustering_choice,
    "pretrained_headline": pretrained_headline,
    "pretrained_curve": pretrained_curve,
    **{name: (lambda name=name: reference_study(name))
       for name in ("reference_digits", "reference_digits_noise", "reference_fashion")},
}


def shown(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def render(text: str, where: str) -> str:
    """``text`` with every marked table regenerated; an unknown table name is an error naming the file."""
    def fill(match: re.Match) -> str:
        name = match["name"]
        if name not in TABLES:
            raise UserError(f"{where}: unknown table '{name}' (known: {', '.join(TABLES)})")
        return match.group(1) + "\n".join(TABLES[name]()) + "\n" + match.group(4)

    return MARKER.sub(fill, text)


def stale_tables(paths: list[Path] | None = None) -> list[str]:
    """``file: table`` for every marked table (and, without ``paths``, every whole page) whose text
    differs from what its summary gives."""
    stale = [] if paths else [f"{shown(page)}: whole page" for page, produce in whole_pages().items()
                              if not page.is_file() or page.read_text() != produce()]
    for path in paths or pages():
        text = path.read_text()
        for match in MARKER.finditer(text):
            if render(match.group(0), shown(path)) != match.group(0):
                stale.append(f"{shown(path)}: {match['name']}")
    return stale


def main(argv: list[str] | None = None) -> int:
    """0 when done (or, with --check, when every table is current), 1 when --check finds stale tables, 2 for a
    mistake (a damaged summary, an unknown table name), on one line."""
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a table differs from its summary")
    args = parser.parse_args(argv)
    stale: list[str] = []

    def work() -> None:
        try:
            if args.check:
                stale.extend(stale_tables())
            else:
                rewrite()
        except KeyError as exc:
            raise UserError(f"a summary in docs/ lacks the key {exc}; rerun the command its page names") from None

    code = exit_code("build_results.py", work)
    for line in stale:
        print(f"stale: {line} (run python3 docs/build_results.py)", file=sys.stderr)
    return code or (1 if stale else 0)


def rewrite() -> None:
    """Rewrite every marked table and whole page that differs from its summary."""
    for path in pages():
        text = path.read_text()
        new = render(text, shown(path))
        if new != text:
            path.write_text(new)
            print(f"rewrote the tables of {shown(path)}")
    for page, produce in whole_pages().items():
        if not page.is_file() or page.read_text() != produce():
            page.write_text(produce())
            print(f"rewrote {shown(page)}")


if __name__ == "__main__":
    sys.exit(main())
