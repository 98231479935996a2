"""Interrupted runs continue where they stopped: a real SIGKILL during ERM, during the pruning of
``--mode all`` and during an IRM restart, then the same command again, gives exactly the metrics
of an uninterrupted run, losing at most the epoch (IRM: 100 steps) that was running. Only the killed
run is a process of its own; the uninterrupted and the resumed runs run in the test's process (one
torch thread, as the killed one: tests/conftest.py), so all three do the same arithmetic. Plus the
checks that keep a resumed or reused result honest (multi_seed's argument check) and degenerate
runs that must stop or warn (a diverging loss, an oracle without some groups)."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import run
from data import build_splits
from invariant_learning import irm
from training.loops import LossWatch
from utils.errors import UserError
from utils.run_dir import StepState

ROOT = Path(__file__).resolve().parents[1]
ERM = ("--mode", "erm", "--data", "digits", "--device", "cpu", "--epochs", "5", "--batch_size", "64")
ALL = ("--mode", "all", "--data", "digits", "--device", "cpu", "--epochs", "3", "--pruning_ep", "2",
       "--retrain_ep", "2", "--methods", "erm,retrain_only,prusc_no_con,prusc")


def killed_at(function: str, call: int, script: str, *argv) -> subprocess.CompletedProcess:
    """``script`` in a process of its own, SIGKILLed at the ``call``-th call of ``function``."""
    cmd = [sys.executable, str(ROOT / "tests" / "sigkill_at.py"), function, str(call), script, *map(str, argv)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})


def in_process(main, capsys, *argv) -> tuple[int, str]:
    """``main(argv)`` here: (exit code, stdout)."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().out


def metrics(out: Path) -> dict:
    results = json.loads((out / "results.json").read_text())
    return {name: entry["splits"] for name, entry in results["methods"].items()}


@pytest.mark.slow
def test_sigkill_during_erm_resumes_and_ends_with_identical_metrics(tmp_path, capsys):
    steps_per_epoch = math.ceil(len(build_splits(run.parse_args(list(ERM)))["train"]) / 64)
    assert in_process(run.main, capsys, *ERM, "--out_dir", tmp_path / "whole")[0] == 0
    killed = killed_at("torch.optim:Adam.step", 2 * steps_per_epoch + steps_per_epoch // 2,
                       "run.py", *ERM, "--out_dir", tmp_path / "cut")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert StepState(tmp_path / "cut", "erm").load()["epoch"] == 2  # killed in epoch 3: one epoch lost at most
    assert not (tmp_path / "cut" / "results.json").exists()
    clock = json.loads((tmp_path / "cut" / "resume" / "clock.json").read_text())  # saved with epoch 2's state
    started = time.monotonic()
    code, out = in_process(run.main, capsys, *ERM, "--out_dir", tmp_path / "cut")
    here = time.monotonic() - started
    assert code == 0 and "resuming ERM after epoch 2/5" in out
    assert metrics(tmp_path / "cut") == metrics(tmp_path / "whole")
    time_s = json.loads((tmp_path / "cut" / "results.json").read_text())["time_s"]
    assert here < time_s <= clock["spent_s"] + here  # the killed process's two epochs are counted too
    assert not (tmp_path / "cut" / "resume").exists()  # a finished run keeps no resume state
    final = [torch.load(tmp_path / d / "erm.pt", weights_only=True)["state_dict"] for d in ("whole", "cut")]
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])


@pytest.mark.slow
def test_sigkill_during_pruning_of_mode_all_resumes_and_ends_with_identical_metrics(tmp_path, capsys):
    assert in_process(run.main, capsys, *ALL, "--out_dir", tmp_path / "whole")[0] == 0
    checks = json.loads((tmp_path / "whole" / "results.json").read_text())["methods"]["prusc_no_con"]["pruning"]
    first_run = checks[-1]["step"]  # steps of prusc_no_con's pruning; prusc's pruning follows
    per_epoch = round(checks[1]["step"] / checks[1]["epoch"])
    killed = killed_at("training.prune:kept_share", first_run + per_epoch + per_epoch // 2,
                       "run.py", *ALL, "--out_dir", tmp_path / "cut")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert StepState(tmp_path / "cut", "prusc_prune").load()["epoch"] == 1
    code, out = in_process(run.main, capsys, *ALL, "--out_dir", tmp_path / "cut")
    assert code == 0
    for name in ("erm", "retrain_only", "prusc_no_con"):
        assert f"== method {name}: reusing its finished result" in out
    assert "reusing the finished ERM" in out and "resuming pruning after epoch 1/2" in out
    assert metrics(tmp_path / "cut") == metrics(tmp_path / "whole")


@pytest.mark.slow
def test_sigkill_during_irm_reuses_finished_restarts_and_continues_the_running_one(tmp_path, capsys):
    from test_irm import env_args, make_envs

    steps = 150
    argv = (*env_args(make_envs(tmp_path / "data")), "--steps", str(steps), "--penalty_anneal_iters", "10",
            "--hidden_dim", "32", "--device", "cpu", "--n_restarts", "2")
    assert in_process(irm.main, capsys, *argv, "--out_dir", tmp_path / "whole")[0] == 0
    killed = killed_at("methods.irm:penalty_weight_at", 2 * steps + 120,  # ERM's two restarts, then step 120
                       "invariant_learning/irm.py", *argv, "--out_dir", tmp_path / "cut")  # of IRM's first
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    code, out = in_process(irm.main, capsys, *argv, "--out_dir", tmp_path / "cut")
    assert code == 0 and out.count("reusing the finished restart") == 2
    assert "resuming IRM cluster envs restart 1 after step 100/150" in out
    assert metrics(tmp_path / "cut") == metrics(tmp_path / "whole")


@pytest.mark.slow
def test_multi_seed_reuses_a_seed_only_with_the_same_arguments(tmp_path, capsys):
    from scripts import multi_seed

    base = ["--seeds", "0", "--out_dir", str(tmp_path), "--", "--mode", "erm", "--data", "digits", "--device", "cpu"]
    assert multi_seed.main([*base, "--epochs", "1"]) == 0
    assert multi_seed.main([*base, "--epochs", "1"]) == 0
    assert "reusing its finished run (same arguments)" in capsys.readouterr().out
    assert multi_seed.main([*base, "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "holds a finished run with other arguments: --epochs 2 (recorded 1)" in err and err.count("\n") == 1
    assert multi_seed.main(["--overwrite", *base, "--epochs", "2"]) == 0
    assert "rerunning, its finished run had other arguments" in capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["run_args"][-2:] == ["--epochs", "2"]
    assert json.loads((tmp_path / "seed0" / "results.json").read_text())["args"]["epochs"] == 2


def test_a_diverging_loss_stops_the_run():
    watch = LossWatch()
    assert watch.check(torch.tensor(0.7 * 64), 64, "in ERM epoch 1") == pytest.approx(0.7)
    watch.check(torch.tensor(5.0 * 64), 64, "in ERM epoch 2")  # worse, but not diverged
    with pytest.raises(UserError, match="grew from 0.7 to 3e\\+22 in ERM epoch 3: training diverged"):
        watch.check(torch.tensor(3e22 * 64), 64, "in ERM epoch 3")
    with pytest.raises(UserError, match="the loss became nan"):
        LossWatch().check(torch.tensor(float("nan")), 64, "in ERM epoch 1")


def test_a_diverging_run_exits_2_on_one_line(run_cli, tmp_path):
    rc, _, err = run_cli("--mode", "erm", "--data", "digits", "--device", "cpu", "--epochs", "3", "--optimizer", "sgd",
                         "--lr", "1e6", "--out_dir", tmp_path)
    assert rc == 2 and err.count("\n") == 1 and ("diverged" in err or "the loss became" in err), err


def test_without_some_groups_the_oracle_is_skipped_and_groupdro_says_what_it_cannot_guard(run_cli, tmp_path):
    rc, _, err = run_cli("--mode", "all", "--data", "digits", "--device", "cpu", "--epochs", "1", "--spurious_ratio", "1",
                         "--methods", "erm,oracle_group_balanced,groupdro", "--out_dir", tmp_path)
    assert rc == 0 and "warning: skipping method oracle_group_balanced: the training split holds only 2 of the 4" in err
    assert "warning: groupdro: the training split has no sample of group(s) y=0,a=1, y=1,a=0" in err
    results = json.loads((tmp_path / "results.json").read_text())["methods"]
    assert list(results) == ["erm", "groupdro"] and results["groupdro"]["absent_train_groups"] == ["y=0,a=1", "y=1,a=0"]
    assert (tmp_path / "report.png").exists()


def test_the_picture_is_on_disk_before_results_json_marks_the_run_finished(run_cli, tmp_path, monkeypatch):
    """A kill right after results.json must not leave a finished run without its picture."""
    import methods.runner as runner
    seen = []
    write_results = runner.write_results
    monkeypatch.setattr(runner, "write_results",
                        lambda out_dir, payload: seen.append((tmp_path / "report.png").exists())
                        or write_results(out_dir, payload))
    assert run_cli("--mode", "all", "--data", "digits", "--device", "cpu", "--epochs", "1", "--methods", "erm",
                   "--out_dir", tmp_path)[0] == 0
    assert seen == [True]
