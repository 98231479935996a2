import json

import pytest
import torch

import run
from conftest import read_results

ERM_FAST = ("--mode", "erm", "--data", "digits", "--epochs", "3", "--device", "cpu")


def test_erm_writes_results_and_checkpoint(run_cli, tmp_path):
    rc, out, _ = run_cli(*ERM_FAST, "--out_dir", tmp_path)
    assert rc == 0
    res = read_results(tmp_path)
    assert {"mode", "data", "arch", "seed", "args", "time_s", "splits"} <= set(res)
    for split in ("val", "test"):
        m = res["splits"][split]
        assert {"avg_acc", "worst_group_acc", "mean_group_acc", "weighted_avg_acc", "groups"} <= set(m)
        assert set(m["groups"]) == {"y=0,a=0", "y=0,a=1", "y=1,a=0", "y=1,a=1"}
        assert sum(g["n"] for g in m["groups"].values()) in (449, 450)
    assert "worst-grp" in out
    losses = res["methods"]["erm"]["train_loss"]  # the loss curve: one mean per epoch, as printed
    assert len(losses) == 3 and losses[-1] < losses[0] and f"loss {losses[-1]:.4f}" in out
    ckpt = torch.load(tmp_path / "erm.pt", weights_only=True)
    assert ckpt["arch"] == "mlp" and ckpt["data"] == "digits" and ckpt["n_classes"] == 2
    assert ckpt["args"]["epochs"] == 3


def test_same_seed_gives_identical_metrics(run_cli, tmp_path):
    for name in ("a", "b"):
        assert run_cli(*ERM_FAST, "--seed", "7", "--out_dir", tmp_path / name)[0] == 0
    first, second = (read_results(tmp_path / n)["splits"] for n in ("a", "b"))
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)


@pytest.mark.slow
def test_spurious_correlation_hurts_worst_group(run_cli, tmp_path):
    run_cli(*ERM_FAST, "--epochs", "20", "--out_dir", tmp_path / "s95")
    run_cli(*ERM_FAST, "--epochs", "20", "--spurious_ratio", "0.5", "--out_dir", tmp_path / "s50")
    strong = read_results(tmp_path / "s95")["splits"]["test"]
    none = read_results(tmp_path / "s50")["splits"]["test"]
    assert strong["avg_acc"] - strong["worst_group_acc"] > 0.2
    assert none["avg_acc"] - none["worst_group_acc"] < 0.1


@pytest.mark.parametrize("argv, needle", [
    (("--data", "nosuchdata"), "unknown --data 'nosuchdata'"),
    (("--spurious_ratio", "1.5"), "--spurious_ratio"),
    (("--spurious_ratio", "-0.1"), "--spurious_ratio"),
    (("--mode", "fly"), "--mode"),
    (("--arch", "vgg"), "--arch"),
    (("--epochs", "0"), "--epochs"),
])
def test_bad_flags_fail_on_one_line(capsys, tmp_path, argv, needle):
    try:
        rc = run.main([*ERM_FAST, "--out_dir", str(tmp_path), *argv])
    except SystemExit as exc:  # argparse exits by itself (through OneLineErrorParser)
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2
    assert needle in err
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert not (tmp_path / "results.json").exists()


def test_finished_out_dir_is_not_overwritten(run_cli, tmp_path):
    assert run_cli(*ERM_FAST, "--out_dir", tmp_path)[0] == 0
    before = (tmp_path / "results.json").read_text()
    rc, _, err = run_cli(*ERM_FAST, "--out_dir", tmp_path, "--seed", "3")
    assert rc == 2 and "already holds results.json, a finished result" in err and "--overwrite" in err
    assert (tmp_path / "results.json").read_text() == before
    assert run_cli(*ERM_FAST, "--out_dir", tmp_path, "--seed", "3", "--overwrite")[0] == 0
    assert read_results(tmp_path)["seed"] == 3
