"""scripts/report.py and utils/sweep_report.py on hand-written results files (no training): the paired
difference and its t-interval against a hand computation, grouping by configuration, pooling only
on request, unfinished folders named, duplicates counted once, and no report written into a run."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest

from scripts import report as report_cli
from utils.sweep_report import (configuration, curves_figure, find_runs, group_runs, numeric_settings, paired_interval,
                                summarise)

T_975_DF2 = 4.302652729749464  # Student t, 97.5% quantile, 2 degrees of freedom (printed tables: 4.303)


def write_run(folder: Path, seed: int, methods: dict[str, tuple[float, float, float]], **args) -> Path:
    """A results.json as run.py writes it, with test (avg, worst-group, density) per method."""
    folder.mkdir(parents=True)
    recorded = {"mode": "all", "seed": seed, "data_seed": seed, "data": "digits", "arch": "mlp",
                "out_dir": str(folder), "device": "cpu", "lambda_sparse": 5e-8, **args}
    payload = {"mode": "all", "data": recorded["data"], "arch": "mlp", "seed": seed, "args": recorded,
               "methods": {name: {"splits": {"test": {"avg_acc": a, "worst_group_acc": w, "mean_group_acc": w,
                                                      "groups": {}}},
                                  "uses_group_labels": False, "density": {"overall": d}}
                           for name, (a, w, d) in methods.items()}}
    (folder / "run_args.json").write_text(json.dumps({"tool": "run.py", "args": recorded}))
    (folder / "results.json").write_text(json.dumps(payload))
    return folder


REFERENCE_WORST = [0.50, 0.60, 0.70]
PRUSC_WORST = [0.55, 0.62, 0.78]  # differences 5, 2, 8 points: mean 5, sample std 3


def three_seeds(root: Path, **args) -> Path:
    for seed, (ref, prusc) in enumerate(zip(REFERENCE_WORST, PRUSC_WORST)):
        write_run(root / f"seed{seed}", seed, {"retrain_only": (0.90, ref, 1.0), "prusc": (0.88, prusc, 0.4)}, **args)
    return root


def test_the_paired_difference_and_interval_match_a_hand_computation(tmp_path):
    groups, warnings = group_runs(find_runs([three_seeds(tmp_path / "sweep")]).results)
    assert len(groups) == 1 and not warnings
    rows = {r.method: r for r in summarise(groups, "retrain_only")}
    half = T_975_DF2 * 3 / math.sqrt(3)  # t * s / sqrt(n)
    mean, lo, hi = rows["prusc"].d_worst
    assert (mean, lo, hi) == pytest.approx((5.0, 5.0 - half, 5.0 + half))
    assert rows["prusc"].paired_n == 3 and rows["prusc"].d_avg == pytest.approx((-2.0, -2.0, -2.0))
    assert rows["retrain_only"].paired_n == 0
    assert paired_interval([4.0])[0] == 4.0 and math.isnan(paired_interval([4.0])[1])


def test_the_cli_prints_markdown_and_writes_csv_and_pictures_outside_the_runs(tmp_path, capsys):
    three_seeds(tmp_path / "sweep")
    assert report_cli.main([str(tmp_path / "sweep"), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "| digits (mlp) | prusc | 3 | 88.0 ± 0.0 | 65.0 ± 11.8 | 40.0 ± 0.0 | +5.0 [-2.5, +12.5] (n=3) |" in out
    assert "95% t-interval over seeds" in out
    row = next(r for r in csv.DictReader(io.StringIO((tmp_path / "out" / "report.csv").read_text()))
               if r["method"] == "prusc")
    assert float(row["d_worst_lo"]) == pytest.approx(5 - T_975_DF2 * math.sqrt(3), abs=1e-3)
    assert row["worst_by_seed"] == " ".join(f"{s}:{100 * w:.4f}" for s, w in enumerate(PRUSC_WORST))
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"report.md", "report.csv", "worst_group.png",
                                                               "density.png"}


def test_a_report_never_writes_into_a_run_folder(tmp_path, capsys):
    run = three_seeds(tmp_path / "sweep") / "seed0"
    before = sorted(p.name for p in run.iterdir())
    assert report_cli.main([str(run), "--out", str(run)]) == 2
    assert report_cli.main([str(run), "--out", str(run / "pictures")]) == 2
    err = capsys.readouterr().err
    assert "a report never writes into a run" in err and err.count("\n") == 2
    assert sorted(p.name for p in run.iterdir()) == before


@pytest.mark.parametrize("damage", [{"erm": 5}, {"erm": {}}, {"erm": {"splits": {"test": {"avg_acc": 0.9,
                                                                                      "worst_group_acc": None}}}}])
def test_a_damaged_result_is_one_line_naming_the_field(tmp_path, capsys, damage):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text(json.dumps({"seed": 0, "args": {}, "methods": damage}))
    assert report_cli.main([str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "methods.erm.splits.test." in err and "is missing or not a number" in err, err


def test_a_report_replaces_only_a_report(tmp_path, capsys):
    three_seeds(tmp_path / "sweep")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "report.md").write_text("my own notes")
    (tmp_path / "clusters").mkdir()
    (tmp_path / "clusters" / "cluster_args.json").write_text('{"tool": "clustering.py", "args": {}}')
    (tmp_path / "file").write_text("")
    for out in ("mine", "clusters", "file", "file/sub"):
        assert report_cli.main([str(tmp_path / "sweep"), "--out", str(tmp_path / out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "holds report.md that no report of this toolkit wrote; nothing was changed" in err[0]
    assert "a report never writes into a run" in err[1] and all("is a file" in line for line in err[2:])
    assert (tmp_path / "mine" / "report.md").read_text() == "my own notes"
    assert report_cli.main([str(tmp_path / "sweep"), "--out", str(tmp_path / "out")]) == 0
    assert report_cli.main([str(tmp_path / "sweep"), "--out", str(tmp_path / "out")]) == 0  # its own report again


def test_configurations_are_reported_apart_and_pooled_only_with_a_warning(tmp_path, capsys):
    three_seeds(tmp_path / "a", lambda_sparse=1e-8)
    three_seeds(tmp_path / "b", lambda_sparse=5e-8)
    groups, warnings = group_runs(find_runs([tmp_path]).results)
    assert [g.label for g in groups] == ["lambda_sparse=1e-08", "lambda_sparse=5e-08"] and not warnings
    assert all(len(g.runs) == 3 for g in groups)
    assert report_cli.main([str(tmp_path), "--pool"]) == 0
    captured = capsys.readouterr()
    assert "pooling runs of 2 different configurations (differing: --lambda_sparse)" in captured.err
    assert "| pooled | prusc | 3 |" in captured.out  # the same seeds twice: counted once each
    assert captured.err.count("repeats seed") == 3


def test_a_curve_over_a_numeric_grid_counts_each_seeds_own_reference_as_one_setting(tmp_path, capsys):
    for length in (2, 5, 20):
        for seed, (ref, prusc) in enumerate(zip(REFERENCE_WORST, PRUSC_WORST)):
            write_run(tmp_path / f"pruning_ep={length}" / f"seed{seed}", seed,
                      {"prusc": (0.88, prusc + length / 100, 0.5 - length / 100)}, pruning_ep=length,
                      checkpoint=f"runs/cmp/seed{seed}/erm.pt", cluster_checkpoint=f"runs/cmp/seed{seed}/erm_epoch1.pt")
    groups, warnings = group_runs(find_runs([tmp_path]).results)
    assert sorted(g.label for g in groups) == ["pruning_ep=2", "pruning_ep=20", "pruning_ep=5"] and not warnings
    assert all(g.settings == {"pruning_ep": int(g.label.split("=")[1])} and len(g.runs) == 3 for g in groups)
    assert numeric_settings(summarise(groups, "retrain_only")) == ["pruning_ep"]
    assert report_cli.main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    assert "| pruning_ep=20 | prusc | 3 | 88.0 ± 0.0 | 85.0 ± 11.8 | 30.0 ± 0.0 |" in capsys.readouterr().out
    assert (tmp_path / "out" / "curves.png").stat().st_size > 0
    assert configuration({"seed": 1, "args": {"seed": 1, "checkpoint": "a/seed1/erm.pt", "other": "a/seed12/x"}}) \
        == {"mode": None, "data": None, "arch": None, "checkpoint": "a/seed{seed}/erm.pt", "other": "a/seed12/x"}


def test_a_method_run_later_on_the_same_configuration_joins_its_seeds_runs(tmp_path, capsys):
    three_seeds(tmp_path / "first")
    for seed in range(3):  # run afterwards: the same configuration, one more method, erm identical on seed 0 only
        write_run(tmp_path / "later" / f"seed{seed}", seed, {"prusc_no_con": (0.89, 0.40 + seed / 10, 0.5),
                                                               "prusc": (0.10, 0.10, 0.1)})
    write_run(tmp_path / "first_erm" / "seed0", 0, {"erm": (0.95, 0.30, 1.0)}, lambda_sparse=1e-8)
    write_run(tmp_path / "later_erm" / "seed0", 0, {"erm": (0.95, 0.31, 1.0), "jtt": (0.9, 0.5, 1.0)},
              lambda_sparse=1e-8)
    groups, warnings = group_runs(find_runs([tmp_path / "first", tmp_path / "later",
                                             tmp_path / "first_erm", tmp_path / "later_erm"]).results)
    rows = {(r.group.label, r.method): r for r in summarise(groups, "retrain_only")}
    no_con = rows[("lambda_sparse=5e-08", "prusc_no_con")]
    assert no_con.worst == pytest.approx([40.0, 50.0, 60.0]) and no_con.d_worst[0] == pytest.approx(-10.0)
    assert rows[("lambda_sparse=5e-08", "prusc")].worst == pytest.approx([55.0, 62.0, 78.0])  # the first run's
    assert len(warnings) == 4 and all("adds prusc_no_con to seed" in w for w in warnings[:3])
    assert "their ERM models differ (test worst-group 30.0 and 31.0 %)" in warnings[3]
    assert "differ" not in " ".join(warnings[:3])


def test_curves_draw_what_the_grid_moves_and_leave_the_rest_to_the_table(tmp_path):
    for length in (5, 20):  # a reused reference run adds a baseline at one setting only
        for seed in range(2):
            methods = {"erm": (0.8, 0.5 + seed / 10, 1.0), "retrain_only": (0.9, 0.8, 1.0),
                       "prusc": (0.9, 0.85 + length / 1000, 0.3)}
            write_run(tmp_path / f"pruning_ep={length}" / f"seed{seed}", seed,
                      {**methods, **({"dfr": (0.9, 0.88, 1.0)} if length == 20 else {})}, pruning_ep=length)
    groups, _ = group_runs(find_runs([tmp_path]).results)
    figure = curves_figure(summarise(groups, "retrain_only"), "retrain_only")
    worst, density, paired = figure.axes
    assert worst.get_legend_handles_labels()[1] == ["erm", "retrain_only", "prusc"]
    assert density.get_legend_handles_labels()[1] == ["prusc"]
    assert paired.get_legend_handles_labels()[1] == ["prusc"]  # not the reference; erm does not depend on the grid
    line = paired.get_lines()[0]
    assert list(line.get_xdata()) == [5, 20] and list(line.get_ydata()) == pytest.approx([5.5, 7.0])


def test_unfinished_folders_are_named_and_a_file_given_twice_counts_once(tmp_path, capsys):
    root = three_seeds(tmp_path / "sweep")
    (root / "seed3").mkdir()
    (root / "seed3" / "run_args.json").write_text("{}")
    (root / ".seed0.replaced").mkdir()  # an --overwrite backup: not a run to count
    (root / ".seed0.replaced" / "results.json").write_text("not json")
    assert report_cli.main([str(root), str(root / "seed1" / "results.json")]) == 0
    captured = capsys.readouterr()
    assert f"skipped unfinished run folder {root / 'seed3'}" in captured.err
    assert f"{root / 'seed1' / 'results.json'} was given twice; counted once" in captured.err
    assert "| digits (mlp) | prusc | 3 |" in captured.out


def test_a_path_without_runs_is_one_line(tmp_path, capsys):
    assert report_cli.main([str(tmp_path / "missing")]) == 2
    (tmp_path / "empty").mkdir()
    assert report_cli.main([str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.count("\n") == 2
