"""One run's methods side by side (printed tables) and a picture of per-group test accuracy over one or
several runs. Reports over many runs (grouped by configuration, paired differences) are in
``utils/sweep_report.py``.

Standard deviations are *sample* standard deviations (n - 1 in the denominator) over runs
(seeds or restarts); one run has none.
"""
from __future__ import annotations

import math
import os
import statistics
from pathlib import Path
from typing import Any

from utils.results import atomic_write

METRICS = ("avg_acc", "worst_group_acc", "mean_group_acc")
METRIC_TITLES = {"avg_acc": "test avg", "worst_group_acc": "test worst-group", "mean_group_acc": "test mean-group"}


def density_of(result: dict[str, Any]) -> float:
    """Share of weights kept (1.0 for a dense model)."""
    return result.get("density", {}).get("overall", 1.0)


def display_name(name: str, result: dict[str, Any]) -> str:
    """The method name, flagged when it uses group labels (it is then a reference, not a competitor)."""
    return f"{name} [group labels]" if result.get("uses_group_labels") else name


def mean_std(values: list[float], single: float = 0.0) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); ``single`` stands for the deviation of one value."""
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else single)


def collect(payloads: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method (in first-seen order): the test metrics (in %), density (%) and per-group test accuracy
    (%) of every run, and whether it uses group labels."""
    table: dict[str, dict[str, Any]] = {}
    for payload in payloads:
        for name, result in payload["methods"].items():
            row = table.setdefault(name, {**{m: [] for m in (*METRICS, "density")}, "groups": {},
                                          "uses_group_labels": bool(result.get("uses_group_labels"))})
            test = result["splits"]["test"]
            for m in METRICS:
                row[m].append(100 * test[m])
            row["density"].append(100 * density_of(result))
            for group, g in test["groups"].items():
                row["groups"].setdefault(group, []).append(100 * g["acc"])
    return table


def format_comparison(methods: dict[str, dict[str, Any]], title: str = "") -> str:
    """One run's methods side by side: test avg / worst-group / mean-group, val worst-group, density."""
    header = f"{'method':<40}{'avg':>8}{'worst-grp':>11}{'mean-grp':>10}{'val worst':>11}{'density':>9}"
    lines = [title] if title else []
    lines += [header, "-" * len(header)]
    for name, result in methods.items():
        test, val = result["splits"]["test"], result["splits"]["val"]
        lines.append(f"{display_name(name, result):<40}{100 * test['avg_acc']:>8.2f}"
                     f"{100 * test['worst_group_acc']:>11.2f}{100 * test['mean_group_acc']:>10.2f}"
                     f"{100 * val['worst_group_acc']:>11.2f}{100 * density_of(result):>8.1f}%")
    return "\n".join(lines)


def format_group_table(metrics: dict, split: str) -> str:
    """Per-group accuracy and count for one split."""
    lines = [f"groups on {split}:"]
    for key, g in metrics["groups"].items():
        lines.append(f"  {key:<12} acc {100 * g['acc']:6.2f}  n={g['n']}")
    return "\n".join(lines)


def write_report(path: str | os.PathLike, payloads: list[dict[str, Any]], title: str | None = None) -> Path:
    """A PNG of per-group test accuracy: one cluster of bars per group, one bar per method (mean over
    runs, sample std as error bar), worst-group accuracy in the legend."""
    from matplotlib.figure import Figure  # on use: matplotlib takes a second to import
    table = collect(payloads)
    groups = sorted({g for row in table.values() for g in row["groups"]})
    names = list(table)
    figure = Figure(figsize=(max(6.0, 1.2 * len(groups) * max(1, len(names)) / 3 + 3), 4.5), dpi=120)
    axes = figure.subplots()
    width = 0.8 / max(1, len(names))
    for j, name in enumerate(names):
        row = table[name]
        stats = [mean_std(row["groups"][g]) if g in row["groups"] else (math.nan, 0.0) for g in groups]
        worst, _ = mean_std(row["worst_group_acc"])
        axes.bar([i + (j - (len(names) - 1) / 2) * width for i in range(len(groups))], [m for m, _ in stats],
                 width, yerr=[s for _, s in stats] if len(payloads) > 1 else None, capsize=2,
                 label=f"{display_name(name, row)} (worst {worst:.1f})")
    axes.set_xticks(range(len(groups)), groups)
    axes.set_ylim(0, 100)
    axes.set_ylabel("test accuracy (%)")
    axes.set_xlabel("group (label y, spurious attribute a)")
    first = payloads[0]
    runs = f"mean ± std over {len(payloads)} runs" if len(payloads) > 1 else f"seed {first.get('seed')}"
    axes.set_title(title or f"{first.get('data')} ({first.get('arch')}): per-group test accuracy, {runs}")
    axes.legend(fontsize=7, loc="lower left", ncol=2)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
