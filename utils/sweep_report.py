"""The report of many finished runs (a sweep, or any folders): runs grouped by configuration, per
method mean ± sample std over seeds, paired differences by seed against a reference method with a
95% t-interval, as Markdown, CSV and two pictures.

Why paired: seeds move every method of a run together (same data split, same reference model), so
"is PruSC above retrain-only beyond seed noise?" is answered by the per-seed differences, whose
spread is much smaller than that of either method alone.

Rules that keep numbers honest: runs of different configurations (data, architecture, any
argument but the seeds and those that do not change results) are never pooled unless asked, and
then with a warning naming what differs; unfinished run folders are named; a results file given
twice counts once; two runs of one configuration and seed count as one run whose methods are those
of both (a method both ran counts once, from the first; the later run is named).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import statistics
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from utils.errors import UserError
from utils.report import density_of, display_name, mean_std

if TYPE_CHECKING:
    from matplotlib.figure import Figure
from utils.results import RESULTS_NAME, atomic_write, atomic_write_text
from utils.run_dir import ARGS_NAME, RECORD_NAMES, check_folder_path

SEED_ARGS = ("seed", "data_seed")
NOT_CONFIG = ("out_dir", "overwrite", "device", "num_workers", "methods", "skip_image_check", "cache_dir",
              "no_cache", "cache_max_gb", "plot", "eval_batch_size")  # where and how fast, not what
LEVEL = 0.95
LEGEND = "mean ± sample std (n − 1) over seeds; Δ: paired difference by seed"  # marks a report.md as a report's
REPORT_FILES = ("report.md", "report.csv", "worst_group.png", "density.png", "curves.png")


@dataclass
class Found:
    """What a set of paths holds: finished results files, unfinished run folders, files given twice."""

    results: list[Path] = field(default_factory=list)
    unfinished: list[Path] = field(default_factory=list)
    repeated: list[Path] = field(default_factory=list)


def find_runs(targets: list[str | os.PathLike]) -> Found:
    """Every results.json under ``targets`` (files, run folders, folders of run folders at any depth;
    hidden folders such as an ``--overwrite`` backup are not entered)."""
    found, seen = Found(), set()

    def add(path: Path) -> None:
        real = path.resolve()
        if real in seen:
            found.repeated.append(path)
        else:
            seen.add(real)
            found.results.append(path)

    for target in map(Path, targets):
        if target.is_file():
            add(target)
            continue
        if not target.is_dir():
            raise UserError(f"{target} does not exist; pass results.json files, run folders or folders of them")
        for folder, subfolders, files in os.walk(target):
            subfolders[:] = sorted(s for s in subfolders if not s.startswith(".") and s != "resume")
            if RESULTS_NAME in files:
                add(Path(folder) / RESULTS_NAME)
                subfolders[:] = []
            elif ARGS_NAME in files:
                found.unfinished.append(Path(folder))
                subfolders[:] = []
    if not found.results:
        raise UserError(f"no results.json under {', '.join(map(str, targets))}"
                        + (f" ({len(found.unfinished)} unfinished run folder(s))" if found.unfinished else ""))
    return found


def load_results(path: Path) -> dict[str, Any]:
    """One results.json, checked to hold the per-method results a report needs."""
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path} as JSON ({exc})") from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("methods"), dict):
        raise UserError(f"{path} has no 'methods' object; it was not written by run.py or irm.py of this toolkit")
    for name, result in payload["methods"].items():
        splits = result.get("splits") if isinstance(result, dict) else None
        test = splits.get("test") if isinstance(splits, dict) else None
        bad = [key for key in ("avg_acc", "worst_group_acc")
               if not isinstance(test, dict) or not isinstance(test.get(key), (int, float))]
        if bad:
            raise UserError(f"{path}: methods.{name}.splits.test.{bad[0]} is missing or not a number; the file "
                            "was damaged or not written by this toolkit; rerun that run")
    return payload


def configuration(payload: dict[str, Any]) -> dict[str, Any]:
    """What a run computed, without its seeds: mode, data, architecture and the arguments that change results.
    A path that names the run's own seed (``runs/cmp/seed3/erm.pt`` in the run of seed 3, as a sweep's
    ``{seed}`` makes it) is written with ``{seed}``: each seed's own reference model is one setting."""
    args = payload.get("args", {})
    seed = seed_of(payload)[0]
    kept = {k: _seed_free(v, seed) for k, v in args.items() if k not in SEED_ARGS and k not in NOT_CONFIG}
    return {"mode": payload.get("mode"), "data": payload.get("data"), "arch": payload.get("arch"), **kept}


def _seed_free(value: Any, seed: Any) -> Any:
    if not isinstance(value, str) or seed is None:
        return value
    return re.sub(rf"(?<=seed){seed}(?!\d)", "{seed}", value)


def seed_of(payload: dict[str, Any]) -> tuple:
    """The seeds a run was started with; runs are paired by it."""
    args = payload.get("args", {})
    return (payload.get("seed", args.get("seed")), args.get("data_seed"))


@dataclass(eq=False)
class Group:
    """Runs of one configuration (or pooled ones): ``label`` names what sets it apart from the others."""

    label: str
    settings: dict[str, Any]
    runs: list[tuple[Path, dict[str, Any]]]


def group_runs(files: list[Path], pool: bool = False) -> tuple[list[Group], list[str]]:
    """Runs grouped by configuration, in first-seen order, and the warnings to print."""
    warnings: list[str] = []
    by_config: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    configs: dict[str, dict[str, Any]] = {}
    for path in files:
        payload = load_results(path)
        config = configuration(payload)
        key = json.dumps(config, sort_keys=True, default=str)
        configs.setdefault(key, config)
        by_config.setdefault(key, []).append((path, payload))
    varying = sorted({k for c in configs.values() for k in c
                      if len({json.dumps(o.get(k), default=str) for o in configs.values()}) > 1},
                     key=lambda k: (k not in ("mode", "data", "arch"), k))
    if pool and len(configs) > 1:
        warnings.append(f"pooling runs of {len(configs)} different configurations (differing: "
                        f"{', '.join('--' + k for k in varying)}); their mean ± std mixes settings")
        merged = [run for runs in by_config.values() for run in runs]
        groups = [Group("pooled", {}, merged)]
    else:
        groups = []
        for key, runs in by_config.items():
            settings = {k: configs[key].get(k) for k in varying}
            first = configs[key]
            label = ", ".join(f"{k}={v}" for k, v in settings.items()) or f"{first['data']} ({first['arch']})"
            groups.append(Group(label, settings, runs))
    for group in groups:
        group.runs = _one_per_seed(group, warnings)
    return groups, warnings


def _one_per_seed(group: Group, warnings: list[str]) -> list[tuple[Path, dict[str, Any]]]:
    """One run per seed. A later run of a seed already counted adds the methods the first lacks (a method
    run afterwards on the same configuration, e.g. ``--methods prusc_no_con``); a method both ran counts
    from the first, and a later run that adds nothing is dropped. Either way the later run is named."""
    kept: dict[tuple, tuple[Path, dict[str, Any]]] = {}
    for path, payload in group.runs:
        seed = seed_of(payload)
        if seed not in kept:
            kept[seed] = (path, payload)
            continue
        first_path, first = kept[seed]
        added = {k: v for k, v in payload["methods"].items() if k not in first["methods"]}
        if not added:
            warnings.append(f"{path} repeats seed {seed[0]} of {first_path} in '{group.label}'; only the first "
                            "is counted")
            continue
        kept[seed] = (first_path, {**first, "methods": {**first["methods"], **added}})
        warnings.append(f"{path} adds {', '.join(added)} to seed {seed[0]} of {first_path} in '{group.label}' "
                        f"(same configuration and seed){_reference_note(first, payload)}")
    return list(kept.values())


def _reference_note(first: dict[str, Any], later: dict[str, Any]) -> str:
    """Why a merged seed's paired differences may carry run-to-run noise: both runs trained ERM and got
    different models (a GPU is not bit-for-bit deterministic; a CPU run with the same threads is)."""
    a, b = (p["methods"].get("erm", {}).get("splits", {}).get("test") for p in (first, later))
    if a is None or b is None or a == b:
        return ""
    return (f"; their ERM models differ (test worst-group {100 * a['worst_group_acc']:.1f} and "
            f"{100 * b['worst_group_acc']:.1f} %), so differences across the two runs include that noise")


def t_quantile(p: float, df: int) -> float:
    """Student-t quantile (scipy comes with scikit-learn, a requirement)."""
    from scipy.stats import t

    return float(t.ppf(p, df))


def paired_interval(differences: list[float], level: float = LEVEL) -> tuple[float, float, float]:
    """Mean of paired differences and its two-sided t-interval over seeds (NaN bounds for one pair)."""
    mean, std = mean_std(differences, single=math.nan)
    n = len(differences)
    if n < 2:
        return mean, math.nan, math.nan
    half = t_quantile(0.5 + level / 2, n - 1) * std / math.sqrt(n)
    return mean, mean - half, mean + half


@dataclass
class Row:
    """One method in one group: per-seed test metrics (in %, in the order of ``seeds``) and the paired
    comparison."""

    group: Group
    method: str
    uses_group_labels: bool
    avg: list[float]
    worst: list[float]
    density: list[float]
    seeds: list[tuple] = field(default_factory=list)
    paired_n: int = 0
    d_worst: tuple[float, float, float] = (math.nan, math.nan, math.nan)
    d_avg: tuple[float, float, float] = (math.nan, math.nan, math.nan)


def summarise(groups: list[Group], reference: str) -> list[Row]:
    """One row per group and method (first-seen order), paired by seed with ``reference`` where both ran."""
    rows = []
    for group in groups:
        per_seed: dict[str, dict[tuple, dict[str, Any]]] = {}
        for _, payload in group.runs:
            for name, result in payload["methods"].items():
                per_seed.setdefault(name, {})[seed_of(payload)] = result
        ref = per_seed.get(reference, {})
        for name, results in per_seed.items():
            tests = [r["splits"]["test"] for r in results.values()]
            row = Row(group, name, any(r.get("uses_group_labels") for r in results.values()),
                      [100 * t["avg_acc"] for t in tests], [100 * t["worst_group_acc"] for t in tests],
                      [100 * density_of(r) for r in results.values()], list(results))
            shared = [s for s in results if s in ref]
            if name != reference and shared:
                row.paired_n = len(shared)
                for metric, attr in (("worst_group_acc", "d_worst"), ("avg_acc", "d_avg")):
                    diffs = [100 * (results[s]["splits"]["test"][metric] - ref[s]["splits"]["test"][metric])
                             for s in shared]
                    setattr(row, attr, paired_interval(diffs))
            rows.append(row)
    return rows


def _cell(values: list[float]) -> str:
    mean, std = mean_std(values, single=math.nan)
    return f"{mean:.1f}" if math.isnan(std) else f"{mean:.1f} ± {std:.1f}"


def _delta(row: Row, attr: str, reference: str) -> str:
    if row.method == reference:
        return "reference"
    if not row.paired_n:
        return "—"
    mean, lo, hi = getattr(row, attr)
    interval = "" if math.isnan(lo) else f" [{lo:+.1f}, {hi:+.1f}]"
    return f"{mean:+.1f}{interval} (n={row.paired_n})"


def markdown(rows: list[Row], reference: str) -> str:
    """The report table, with a line saying what the numbers are."""
    lines = [f"| setting | method | seeds | test avg % | test worst-group % | density % | "
             f"Δ worst-group vs {reference} | Δ avg vs {reference} |", "|---" * 8 + "|"]
    for row in rows:
        lines.append(f"| {row.group.label} | {display_name(row.method, {'uses_group_labels': row.uses_group_labels})}"
                     f" | {len(row.worst)} | {_cell(row.avg)} | {_cell(row.worst)} | {_cell(row.density)} | "
                     f"{_delta(row, 'd_worst', reference)} | {_delta(row, 'd_avg', reference)} |")
    lines.append(f"\n{LEGEND} against {reference} "
                 f"(percentage points), mean [{LEVEL:.0%} t-interval over seeds, n − 1 degrees of freedom], "
                 "n paired seeds; no interval from one seed")
    missing = [g.label for g in dict.fromkeys(r.group for r in rows) if not _has(rows, g, reference)]
    if missing:
        lines.append(f"{reference} did not run in: {'; '.join(missing)} (choose another --reference)")
    return "\n".join(lines)


def _has(rows: list[Row], group: Group, method: str) -> bool:
    return any(r.group is group and r.method == method for r in rows)


def csv_text(rows: list[Row], reference: str) -> str:
    """The report as CSV: one column per setting that varies, then the statistics (NaN where undefined)."""
    keys = list(dict.fromkeys(k for r in rows for k in r.group.settings))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["setting", *keys, "method", "uses_group_labels", "seeds", "avg_mean", "avg_std",
                     "worst_mean", "worst_std", "density_mean", "density_std", "reference", "paired_seeds",
                     "d_worst_mean", "d_worst_lo", "d_worst_hi", "d_avg_mean", "d_avg_lo", "d_avg_hi",
                     "worst_by_seed"])
    for r in rows:
        stats = [x for values in (r.avg, r.worst, r.density) for x in mean_std(values)]
        by_seed = " ".join(f"{seed[0]}:{worst:.4f}" for seed, worst in zip(r.seeds, r.worst))
        writer.writerow([r.group.label, *(r.group.settings.get(k) for k in keys), r.method, r.uses_group_labels,
                         len(r.worst), *(f"{x:.4f}" for x in stats), reference, r.paired_n,
                         *(f"{x:.4f}" for x in (*r.d_worst, *r.d_avg)), by_seed])
    return out.getvalue()


def worst_group_figure(rows: list[Row]) -> Figure:
    """Bars of test worst-group accuracy per setting and method, sample std as error bars."""
    from matplotlib.figure import Figure  # on use: matplotlib takes a second to import
    groups = list(dict.fromkeys(r.group.label for r in rows))
    methods = list(dict.fromkeys(r.method for r in rows))
    figure = Figure(figsize=(max(6.0, 0.35 * len(groups) * len(methods) + 2.5), 4.5), dpi=120)
    axes = figure.subplots()
    width = 0.8 / len(methods)
    for j, method in enumerate(methods):
        xs, means, stds = [], [], []
        for i, label in enumerate(groups):
            for r in rows:
                if r.group.label == label and r.method == method:
                    mean, std = mean_std(r.worst)
                    xs.append(i + (j - (len(methods) - 1) / 2) * width)
                    means.append(mean)
                    stds.append(0.0 if math.isnan(std) else std)
        axes.bar(xs, means, width, yerr=stds, capsize=2, label=method)
    axes.set_xticks(range(len(groups)), groups, rotation=20 if len(groups) > 3 else 0, ha="right" if len(groups) > 3
                    else "center", fontsize=7)
    axes.set_ylim(0, 100)
    axes.set_ylabel("test worst-group accuracy (%)")
    axes.set_title("worst-group accuracy, mean ± sample std over seeds")
    axes.legend(fontsize=7, ncol=2)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return figure


def density_figure(rows: list[Row]) -> Figure | None:
    """Worst-group accuracy against density for the methods that learned a mask (None when none did);
    the points of one method are joined in order of density, a curve over the grid."""
    masked = [r for r in rows if statistics.mean(r.density) < 100]
    if not masked:
        return None
    from matplotlib.figure import Figure  # on use: matplotlib takes a second to import
    figure = Figure(figsize=(6.5, 4.5), dpi=120)
    axes = figure.subplots()
    for method in dict.fromkeys(r.method for r in masked):
        points = sorted((mean_std(r.density), mean_std(r.worst), r.group.label) for r in masked if r.method == method)
        xs, ys = [p[0][0] for p in points], [p[1][0] for p in points]
        axes.errorbar(xs, ys, xerr=[0 if math.isnan(p[0][1]) else p[0][1] for p in points],
                      yerr=[0 if math.isnan(p[1][1]) else p[1][1] for p in points], marker="o", capsize=2,
                      label=method)
        if len(points) > 1:
            for x, y, (_, _, label) in zip(xs, ys, points):
                axes.annotate(label, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    axes.set_xlabel("density (% of weights kept)")
    axes.set_ylabel("test worst-group accuracy (%)")
    axes.set_title("worst-group accuracy against density, mean ± sample std over seeds")
    axes.legend(fontsize=7)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def numeric_settings(rows: list[Row]) -> list[str]:
    """The varying settings whose values are all numbers, with at least two of them: the axes of curves."""
    groups = list(dict.fromkeys(r.group for r in rows))
    keys = dict.fromkeys(k for g in groups for k in g.settings)
    return [k for k in keys if all(_number(g.settings.get(k)) is not None for g in groups)
            and len({_number(g.settings.get(k)) for g in groups}) > 1]


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def curves_figure(rows: list[Row], reference: str) -> Figure | None:
    """For every numeric setting of the grid (e.g. --pruning_ep, --lambda_sparse), three panels against it:
    test worst-group accuracy and, for masked methods, density (mean ± sample std over seeds), and the
    paired difference in worst-group accuracy to ``reference`` (mean and 95% interval over seeds), which is
    what a method earns beyond seed noise. A colour per method, a line style per value of the other
    settings; a method whose results the grid does not change (ERM and retrain-only in a pruning grid) is
    one curve, without a difference to draw, and a method that ran in one setting only (a baseline beside a
    reused reference run) is left to the table. None without a numeric setting."""
    settings_of = Counter(r.method for r in rows)
    rows = [r for r in rows if settings_of[r.method] > 1]
    axes_keys = numeric_settings(rows)
    if not axes_keys:
        return None
    from matplotlib.figure import Figure  # on use: matplotlib takes a second to import
    figure = Figure(figsize=(5.5 * len(axes_keys), 11.5), dpi=120)
    panels = figure.subplots(3, len(axes_keys), squeeze=False)
    colours = {method: f"C{i % 10}" for i, method in enumerate(dict.fromkeys(r.method for r in rows))}
    rows = sorted(rows, key=lambda r: [_number(r.group.settings[k]) for k in axes_keys])  # legends in value order
    masked = {r.method for r in rows if any(d < 100 for d in r.density)}
    moved = _moved_by_grid(rows)
    metrics: list[tuple[str, Callable[[Row], tuple[float, float] | None]]] = [
        ("test worst-group accuracy (%)", lambda r: mean_std(r.worst, single=0.0)),
        ("density (%)", lambda r: mean_std(r.density, single=0.0) if r.method in masked else None),
        (f"Δ worst-group vs {reference} (paired, 95% CI)", lambda r: _paired_point(r) if r.method in moved else None)]
    for col, key in enumerate(axes_keys):
        curves: dict[str, dict[str, list[tuple[float, Row]]]] = {}  # method -> other settings -> points
        for row in rows:
            others = ", ".join(f"{k}={v}" for k, v in row.group.settings.items() if k != key)
            curves.setdefault(row.method, {}).setdefault(others, []).append((_number(row.group.settings[key]), row))
        styles = {o: i for i, o in enumerate(dict.fromkeys(o for by in curves.values() for o in by))}
        for method, by_others in curves.items():
            if method not in moved:  # the same result at every setting: one curve
                by_others = {"": _one_curve(by_others)}
            for panel, (_, point_of) in zip(panels[:, col], metrics):
                for others, (xs, points) in _distinct_curves(by_others, point_of):
                    style = styles.get(others, 0)
                    panel.errorbar(xs, [m for m, _ in points], yerr=[e for _, e in points], color=colours[method],
                                   linestyle=("-", "--", ":", "-.")[style % 4], marker="osD^v"[style % 5],
                                   capsize=3, label=f"{method}, {others}" if others else method)
        values = sorted({x for by in curves.values() for points in by.values() for x, _ in points})
        for panel, (what, _) in zip(panels[:, col], metrics):
            if values[0] > 0 and values[-1] / values[0] >= 10:
                panel.set_xscale("log")
            panel.set_xticks(values, [f"{v:g}" for v in values])
            panel.minorticks_off()
            panel.set_xlabel(f"--{key}")
            panel.set_ylabel(what)
            panel.grid(alpha=0.3)
            if panel.get_legend_handles_labels()[0]:
                panel.legend(fontsize=6)
        panels[2][col].axhline(0.0, color="black", linewidth=0.8)
    figure.suptitle("top, middle: mean ± sample std over seeds; bottom: paired difference by seed, "
                    "mean and 95% t-interval")
    figure.tight_layout()
    return figure


def _moved_by_grid(rows: list[Row]) -> set[str]:
    """The methods whose test results differ between settings on some seed. The others (ERM in a pruning
    grid) do not depend on the grid's flags: their difference to the reference is in the table, and drawn
    as a curve it would only stretch the axis."""
    seen: dict[tuple[str, tuple], set[tuple[float, float]]] = {}
    for row in rows:
        for seed, avg, worst in zip(row.seeds, row.avg, row.worst):
            seen.setdefault((row.method, seed), set()).add((avg, worst))
    return {method for (method, _), values in seen.items() if len(values) > 1}


def _one_curve(by_others: dict[str, list[tuple[float, Row]]]) -> list[tuple[float, Row]]:
    """The points of a method the grid does not move, one per value: the row with the most seeds."""
    best: dict[float, Row] = {}
    for points in by_others.values():
        for x, row in points:
            if x not in best or len(row.seeds) > len(best[x].seeds):
                best[x] = row
    return sorted(best.items(), key=lambda point: point[0])


def _paired_point(row: Row) -> tuple[float, float] | None:
    """The paired worst-group difference of ``row`` and the half-width of its interval (0 from one seed);
    None for the reference itself and for a method that shares no seed with it."""
    if row.paired_n == 0:
        return None
    mean, _, high = row.d_worst
    return mean, (high - mean if row.paired_n > 1 else 0.0)


def _distinct_curves(by_others: dict[str, list[tuple[float, Row]]],
                     point_of: Callable[[Row], tuple[float, float] | None]
                     ) -> list[tuple[str | None, tuple[list[float], list[tuple[float, float]]]]]:
    """Each curve (xs, per-point value and error bar) by the other settings' values, its points in the order
    given (:func:`curves_figure` sorts them) and without the points ``point_of`` has no value for; one
    curve, labelled None, when they are all the same."""
    curves = {}
    for others, points in by_others.items():
        kept = [(x, p) for x, p in ((x, point_of(r)) for x, r in points) if p is not None]
        if kept:
            curves[others] = ([x for x, _ in kept], [p for _, p in kept])
    if len(curves) > 1 and len({json.dumps(c) for c in curves.values()}) == 1:
        return [(None, next(iter(curves.values())))]
    return list(curves.items())


def check_report_folder(folder: Path) -> Path:
    """Refuse a folder a report must not write into: a run folder (or one below it), whose own files it would
    replace; a folder whose report files no report wrote (a user's own report.md); a path that is, or lies
    under, a file."""
    folder = check_folder_path(folder, "report folder")
    for place in (folder, *folder.parents):
        if any((place / name).is_file() for name in (*RECORD_NAMES, RESULTS_NAME)):
            raise UserError(f"report folder {folder} is {'inside ' if place != folder else ''}the run folder "
                            f"{place}; a report never writes into a run, pass another folder")
    earlier = [name for name in REPORT_FILES if (folder / name).exists()]
    if earlier and not _is_a_report(folder / "report.md"):
        raise UserError(f"report folder {folder} holds {', '.join(earlier)} that no report of this toolkit wrote; "
                        "nothing was changed; pass another folder")
    return folder


def _is_a_report(path: Path) -> bool:
    """Whether ``path`` is a report.md that :func:`markdown` wrote (its legend line)."""
    try:
        return LEGEND in path.read_text(encoding="utf-8")
    except (OSError, ValueError):
        return False


def write_report_files(folder: Path, rows: list[Row], reference: str) -> list[str]:
    """report.md, report.csv, worst_group.png and, where masks were learned, density.png in ``folder``, and
    curves.png where a numeric setting varies;
    the lines saying what was written (and what an earlier report there had, now replaced)."""
    folder = check_report_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    said = []

    def note(path: Path) -> None:
        said.append(f"{'replaced' if path.exists() else 'wrote'} {path}")

    figures = {"worst_group.png": worst_group_figure(rows), "density.png": density_figure(rows),
               "curves.png": curves_figure(rows, reference)}
    texts = {"report.md": markdown(rows, reference) + "\n", "report.csv": csv_text(rows, reference)}
    for name, text in texts.items():
        note(folder / name)
        atomic_write_text(folder / name, text)
    for name, figure in figures.items():
        if figure is None:
            continue
        note(folder / name)
        atomic_write(folder / name, lambda tmp, fig=figure: fig.savefig(tmp, format="png"))
    return said


def report(targets: list[str | os.PathLike], reference: str = "retrain_only", pool: bool = False,
           out: Path | None = None) -> str:
    """Find, group and summarise the runs under ``targets``; print notes and warnings on stderr; write the
    files into ``out`` when given; return the Markdown table (and what was written)."""
    found = find_runs(targets)
    notes = [f"note: {p} was given twice; counted once" for p in found.repeated]
    notes += [f"note: skipped unfinished run folder {p} (no results.json)" for p in found.unfinished]
    groups, warnings = group_runs(found.results, pool)
    rows = summarise(groups, reference)
    for line in [*notes, *(f"warning: {w}" for w in warnings)]:
        print(line, file=sys.stderr)
    text = markdown(rows, reference)
    if out is not None:
        text += "\n" + "\n".join(write_report_files(out, rows, reference))
    return text
