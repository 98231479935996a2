"""scripts/pretrained_table.py: the comparison keeps runs on other clusters or another recipe apart."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts import pretrained_table
from utils.errors import UserError


def run_folder(root: Path, name: str, seed: int, worst: dict[str, float], **args) -> str:
    """A finished run.py folder whose results.json gives each method this test worst-group accuracy."""
    folder = root / name / f"seed{seed}"
    folder.mkdir(parents=True)
    methods = {m: {"splits": {"test": {"worst_group_acc": w, "avg_acc": 0.9}}, "uses_group_labels": False}
               for m, w in worst.items()}
    (folder / "results.json").write_text(json.dumps({"seed": seed, "args": args, "methods": methods}))
    return str(folder)


def test_clusters_auto_and_the_original_recipe_get_rows_of_their_own(tmp_path):
    folders = [run_folder(tmp_path, "default", s, {"erm": 0.5, "retrain_only": 0.80 + s / 100, "prusc": 0.85 + s / 50})
               for s in (0, 1)]
    folders += [run_folder(tmp_path, "auto", s, {"erm": 0.5, "retrain_only": 0.70, "prusc": 0.75 + s / 100},
                           clusters_auto=True) for s in (0, 1)]
    folders += [run_folder(tmp_path, "original", s, {"erm": 0.4, "prusc": 0.6}, recipe="original") for s in (0, 1)]
    rows = pretrained_table.summarise(pretrained_table.comparison(folders))
    assert list(rows) == ["erm", "retrain_only", "prusc", "retrain_only_auto", "prusc_auto", "erm_original",
                          "prusc_original"]
    assert rows["prusc"]["worst"] == pytest.approx([85, 87]) and rows["prusc_auto"]["worst"] == pytest.approx([75, 76])
    assert rows["prusc"]["paired_vs_retrain_only"]["mean"] == pytest.approx(5.5)  # paired with the default clusters'
    assert rows["prusc_auto"]["paired_vs_retrain_only"]["mean"] == pytest.approx(5.5)  # with retrain_only_auto
    assert rows["retrain_only_auto"]["paired_vs_retrain_only"] is None
    assert rows["erm_original"]["worst"] == pytest.approx([40, 40])
    retrained = [["prusc_original_mask_retrained", run_folder(tmp_path, "retrain", s, {"retrain_only": 0.78 + s / 100})]
                 for s in (0, 1)]
    rows = pretrained_table.summarise(pretrained_table.comparison(folders, retrained=retrained))
    assert rows["prusc_original_mask_retrained"]["worst"] == pytest.approx([78, 79])  # not mixed with retrain_only
    assert rows["prusc_original_mask_retrained"]["paired_vs_retrain_only"]["mean"] == pytest.approx(-2.0)
    retrained += [[name, run_folder(tmp_path, name, s, {"retrain_only": worst + s / 100})]
                  for name, worst in (("retrain_only_head", 0.70), ("prusc_mask_head", 0.75)) for s in (0, 1)]
    rows = pretrained_table.summarise(pretrained_table.comparison(folders, retrained=retrained))
    assert rows["prusc_mask_head"]["paired_vs_retrain_only"]["mean"] == pytest.approx(5.0)  # head-only against head-only
    assert rows["prusc"]["paired_vs_head_only"]["mean"] == pytest.approx(15.5)  # every row against head-only too
    assert rows["retrain_only_head"]["paired_vs_head_only"] is None
    assert "paired worst-group diff. to retrain_only_head (95% CI) |" in pretrained_table.markdown(
        {"calibration": [], "comparison": rows})


def test_two_different_results_for_one_row_and_seed_are_refused(tmp_path):
    first = run_folder(tmp_path, "a", 0, {"erm": 0.5})
    assert pretrained_table.comparison([first, first])["erm"][0]["run"] == first  # the same run twice: one row
    other = run_folder(tmp_path, "b", 0, {"erm": 0.6})
    with pytest.raises(UserError, match="give different erm results for seed 0"):
        pretrained_table.comparison([first, other])


def test_inside_the_mask_gives_block_densities_and_the_score_before_and_after_retraining():
    method = {"density": {"overall": 0.5, "per_layer": {"backbone.conv1": 1.0, "backbone.layer1.0.conv1": 0.9,
                                                         "backbone.layer1.0.conv2": 0.7, "backbone.layer4.1.conv2": 0.2,
                                                         "head": 1.0}},
              "pruning": [{"score": 0.50}, {"score": 0.55, "kept": True}, {"score": 0.40}],
              "selection_scores": [0.55, 0.70, 0.65], "best_epoch": 1}
    inside = pretrained_table.inside_the_mask(method)
    assert inside["block_density"] == pytest.approx({"stem": 100, "layer1": 80, "layer4": 20, "head": 100})
    assert (inside["score_start"], inside["score_kept"], inside["score_retrained"]) == pytest.approx((50, 55, 70))
    assert "test_changed" not in inside
    record = {"test": {"changed": 0.004, "dense_worst_group_acc": 0.536, "masked_worst_group_acc": 0.691},
              "removed_weight_share": {"all": 0.02, "layer4": 0.005}}
    alone = pretrained_table.inside_the_mask(method, record)
    assert (alone["test_changed"], alone["test_worst_dense"], alone["test_worst_mask_alone"],
            alone["weight_removed"]) == pytest.approx((0.4, 53.6, 69.1, 2.0))


def test_the_stand_in_line_names_where_it_was_made():
    cpu = {"cpu_s": 1664.2, "wall_s": 2367.9, "torch_threads": 1}
    assert pretrained_table.stand_in_cost(cpu) == "1664 s CPU (2368 s wall, 1 thread, 2 shared cores: noisy)"
    gpu = {"cpu_s": 80.0, "wall_s": 95.4, "torch_threads": 16, "cpus": 16, "device": "cuda", "bf16": True}
    assert pretrained_table.stand_in_cost(gpu) == "95 s wall on cuda under bf16 autocast"
