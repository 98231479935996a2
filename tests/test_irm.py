import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import data as data_registry
from cluster.io import write_clusters
from conftest import read_results
from data.digits import make_colored_digits
from invariant_learning import environments, irm
from invariant_learning.construction import rebuild_data_args
from invariant_learning.penalty import irm_penalty, penalty_weight_at

ROOT = Path(__file__).resolve().parent.parent
FAST = ("--irm_steps", "40", "--penalty_anneal_iters", "10", "--hidden_dim", "32", "--device", "cpu")


def make_envs(folder: Path, data: str = "digits") -> Path:
    """Environments whose clusters are the colour itself (what an ideal ERM clustering finds)."""
    train = data_registry.build_splits(rebuild_data_args({"data": data}))["train"]
    clusters = write_clusters(folder / "clusters.csv", train, train.a.clone())
    assert environments.main(["--data", data, "--clusters", str(clusters), "--output_dir", str(folder / "envs")]) == 0
    return folder / "envs"


@pytest.fixture(scope="module")
def envs(tmp_path_factory):
    return make_envs(tmp_path_factory.mktemp("digits"))


def call(capsys, *argv) -> tuple[int, str, str]:
    rc = irm.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def env_args(envs: Path) -> tuple[str, ...]:
    return ("--minority_env", str(envs / "minority"), "--balance_env", str(envs / "balanced"))


def test_penalty_is_the_squared_scale_derivative():
    torch.manual_seed(0)
    logits, y = torch.randn(64, 3), torch.randint(0, 3, (64,))
    eps = 1e-3
    risk = [torch.nn.functional.cross_entropy(logits * s, y) for s in (1 + eps, 1 - eps)]
    numeric = ((risk[0] - risk[1]) / (2 * eps)) ** 2
    assert float(irm_penalty(logits, y).detach()) == pytest.approx(float(numeric), rel=1e-3)
    leaf = logits.clone().requires_grad_(True)
    irm_penalty(leaf, y).backward()
    assert leaf.grad is not None and float(leaf.grad.abs().sum()) > 0


def test_penalty_schedule():
    assert [penalty_weight_at(s, 100.0, 2) for s in range(4)] == [1.0, 1.0, 100.0, 100.0]
    assert [penalty_weight_at(s, 0.0, 2) for s in range(3)] == [0.0, 0.0, 0.0]


def test_fast_digits_run_reports_every_variant(envs, tmp_path, capsys):
    rc, out, _ = call(capsys, *env_args(envs), *FAST, "--n_restarts", "2", "--random_irm", "--out_dir", tmp_path)
    assert rc == 0
    res = read_results(tmp_path)
    assert {"mode", "data", "arch", "seed", "args", "time_s", "splits", "environments", "methods"} <= set(res)
    assert res["mode"] == "irm" and res["data"] == "digits"
    assert set(res["methods"]) == {"erm", "irm_clusters", "irm_random"}  # digits has no true environments
    sizes = {role: res["environments"][role]["size"] for role in ("minority", "balanced")}
    for name, v in res["methods"].items():
        assert v["label"] in out
        for key in ("train_acc", "test_acc", "test_worst_group_acc"):
            assert len(v[key]["values"]) == 2
            assert v[key]["mean"] == pytest.approx(np.mean(v[key]["values"]))
            assert v[key]["std"] == pytest.approx(np.std(v[key]["values"], ddof=1))
        assert [r["seed"] for r in v["restarts"]] == [0, 1]
        assert set(v["restarts"][0]["splits"]["test"]["groups"]) == {"y=0,a=0", "y=0,a=1", "y=1,a=0", "y=1,a=1"}
    assert res["methods"]["irm_random"]["env_sizes"] == [sizes["minority"], sizes["balanced"]]
    assert res["methods"]["erm"]["env_sizes"] == [898]
    assert res["primary_method"] == "irm_clusters"
    tests = [r["splits"]["test"]["avg_acc"] for r in res["methods"]["irm_clusters"]["restarts"]]
    assert res["splits"]["test"]["avg_acc"] == pytest.approx(np.mean(tests))


@pytest.mark.slow
def test_cluster_environments_beat_erm_and_random_ones_on_the_minority_groups(envs, tmp_path, capsys):
    rc, _, _ = call(capsys, *env_args(envs), "--irm_steps", "150", "--penalty_anneal_iters", "50", "--n_restarts", "1",
                    "--random_irm", "--device", "cpu", "--out_dir", tmp_path)
    assert rc == 0
    worst = {k: v["test_worst_group_acc"]["mean"] for k, v in read_results(tmp_path)["methods"].items()}
    assert worst["irm_clusters"] > max(worst["erm"], worst["irm_random"]) + 0.1


def test_same_seed_same_numbers_and_mini_batches(envs, tmp_path, capsys):
    for name in ("a", "b"):
        assert call(capsys, *env_args(envs), *FAST, "--n_restarts", "1", "--irm_batch_size", "16",
                    "--out_dir", tmp_path / name)[0] == 0
    first, second = (read_results(tmp_path / n)["methods"] for n in ("a", "b"))
    assert json.dumps(first["irm_clusters"]["test_acc"]) == json.dumps(second["irm_clusters"]["test_acc"])


@pytest.fixture
def digits_envs(monkeypatch):
    """Registers ``--data digits_envs``: Colored Digits whose training split has two true environments."""
    def build_with_envs(args):
        splits = make_colored_digits(0.95, 0.0, args.data_seed)
        splits["train"].env = torch.arange(len(splits["train"])) % 2
        return splits

    monkeypatch.setitem(data_registry.REGISTRY, "digits_envs", data_registry.DatasetSpec("digits_envs", build_with_envs))


def test_true_environments_are_used_when_the_data_has_them(tmp_path, capsys, digits_envs):
    envs = make_envs(tmp_path, "digits_envs")
    rc, out, _ = call(capsys, *env_args(envs), *FAST, "--n_restarts", "1", "--out_dir", tmp_path / "run")
    assert rc == 0 and "IRM true envs" in out
    assert read_results(tmp_path / "run")["methods"]["irm_true"]["env_sizes"] == [449, 449]


@pytest.mark.slow
def test_runs_from_inside_invariant_learning(envs, tmp_path):
    proc = subprocess.run([sys.executable, "irm.py", f"--minority_env={envs / 'minority'}",
                           f"--balance_env={envs / 'balanced' / 'environment.json'}", "--irm_steps", "2",
                           "--n_restarts", "1", "--device", "cpu", "--out_dir", str(tmp_path)],
                          cwd=ROOT / "invariant_learning", capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "results.json").is_file()


def damage_json(envs: Path, role: str, **changes) -> None:
    path = envs / role / "environment.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize("damage, needle", [
    (lambda e: damage_json(e, "balanced", data_flags={"data": "digits", "data_seed": 4}), "different data"),
    (lambda e: [damage_json(e, r, input_shape=[2, 4, 4]) for r in ("minority", "balanced")], "shape"),
    (lambda e: (e / "minority" / "indices.csv").write_text("index,label,cluster_assign,conflicting\n"),
     "empty environment.*more clusters.*earlier reference checkpoint"),
    (lambda e: (e / "balanced" / "environment.json").unlink(), "is not an environment"),
    (lambda e: pd.read_csv(e / "minority" / "indices.csv").assign(label=lambda f: 1 - f["label"])
     .to_csv(e / "minority" / "indices.csv", index=False), "disagrees with the data set"),
])
def test_bad_environments_fail_on_one_line(tmp_path, capsys, damage, needle):
    envs = make_envs(tmp_path)
    damage(envs)
    rc, _, err = call(capsys, *env_args(envs), *FAST, "--out_dir", tmp_path / "run")
    assert rc == 2 and err.count("\n") == 1
    assert re.search(needle, err), err
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.parametrize("minority, balanced, needle", [
    ("minority", "minority", "--balance_env .*minority' environment.*pass the balanced/ folder"),
    ("balanced", "minority", "--minority_env .*balanced' environment.*pass the minority/ folder"),
])
def test_the_same_or_swapped_environments_are_refused(envs, tmp_path, capsys, minority, balanced, needle):
    rc, _, err = call(capsys, "--minority_env", envs / minority, "--balance_env", envs / balanced, *FAST,
                      "--out_dir", tmp_path)
    assert rc == 2 and err.count("\n") == 1 and re.search(needle, err), err
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("value", ["0", "-1"])
def test_n_restarts_below_one_is_refused(envs, tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exc:
        irm.main([*env_args(envs), "--n_restarts", value, "--out_dir", str(tmp_path)])
    assert exc.value.code == 2 and "--n_restarts" in capsys.readouterr().err


def test_former_flag_names_still_work_with_a_one_line_note(envs, tmp_path, capsys):
    new = ("--irm_steps", "3", "--irm_lr", "0.01", "--irm_batch_size", "8")
    old = ("--steps", "3", "--lr=0.01", "--batch_size", "8")
    rest = (*env_args(envs), "--penalty_anneal_iters", "1", "--hidden_dim", "8", "--n_restarts", "1", "--device", "cpu")
    assert call(capsys, *rest, *new, "--out_dir", tmp_path / "new")[0] == 0
    rc, _, err = call(capsys, *rest, *old, "--out_dir", tmp_path / "old")
    assert rc == 0
    notes = err.strip().splitlines()
    assert len(notes) == 3 and all(line.startswith("note: irm.py --") for line in notes)
    assert "--steps is now --irm_steps" in err
    first, second = (read_results(tmp_path / n)["methods"]["irm_clusters"]["test_acc"] for n in ("new", "old"))
    assert first == second


def irm_method(run_cli, tmp_path, *flags):
    return run_cli("--mode", "all", "--methods", "irm", "--data", "digits", "--irm_steps", "5",
                   "--penalty_anneal_iters", "2", "--hidden_dim", "8", "--device", "cpu", "--out_dir", tmp_path, *flags)


def test_the_method_takes_environments_from_files_or_their_random_partition(envs, tmp_path, run_cli):
    assert irm_method(run_cli, tmp_path / "files", *env_args(envs))[0] == 0
    assert irm_method(run_cli, tmp_path / "random", *env_args(envs), "--irm_envs", "random")[0] == 0
    files, random = (read_results(tmp_path / n)["methods"]["irm"] for n in ("files", "random"))
    assert files["environments"]["source"] == "files" and random["environments"]["source"] == "random"
    assert random["env_sizes"] == files["env_sizes"]
    assert random["environments"]["partitioned"]["source"] == "files"
    assert files["uses_group_labels"] is False and "--irm_steps" in files["selection"]


@pytest.mark.parametrize("flags, needle", [
    (("--irm_envs", "true"), "--irm_envs true needs a data set with its own training environments"),
    (("--irm_envs", "clusters", "--minority_env", "m", "--balance_env", "b"), "drop --minority_env"),
    (("--irm_envs", "files"), "--minority_env and --balance_env go together"),
])
def test_the_method_refuses_environments_it_cannot_build_on_one_line(tmp_path, run_cli, flags, needle):
    rc, _, err = irm_method(run_cli, tmp_path, *flags)
    assert rc == 2 and needle in err and err.count("\n") == 1


@pytest.mark.parametrize("flags, needle", [
    (("--minority_env", "minority"), "go together"),
    (("--irm_envs", "true"), "'digits' has none; pass --irm_envs clusters"),
])
def test_wrong_environment_flags_are_refused_before_any_method_trains(tmp_path, run_cli, envs, flags, needle):
    flags = tuple(envs / f if f == "minority" else f for f in flags)
    rc, out, err = run_cli("--mode", "all", "--methods", "erm,irm", "--data", "digits", "--epochs", "1",
                           "--hidden_dim", "8", "--device", "cpu", *flags, "--out_dir", tmp_path)
    assert rc == 2 and needle in err and err.count("\n") == 1, err
    assert "ERM epoch" not in out and not (tmp_path / "erm.pt").exists()


def test_the_method_trains_on_true_environments_and_says_it_uses_group_labels(tmp_path, run_cli, digits_envs):
    rc, _, err = run_cli("--mode", "all", "--methods", "irm", "--data", "digits_envs", "--arch", "mlp", "--irm_envs",
                         "true", "--irm_steps", "3", "--hidden_dim", "8", "--device", "cpu", "--out_dir", tmp_path)
    assert rc == 0, err
    entry = read_results(tmp_path)["methods"]["irm"]
    assert entry["env_sizes"] == [449, 449] and entry["environments"]["source"] == "true"
    assert entry["uses_group_labels"] is True and "true environments" in entry["group_labels"]
