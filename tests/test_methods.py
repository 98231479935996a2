"""The method registry and the baselines: plug-in methods, JTT, GroupDRO, DFR, one results format, layering."""
from __future__ import annotations

import ast
import copy
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

import methods
import run
from conftest import read_results
from methods.base import Context, Fitted, Method
from methods.dfr import DFR
from methods.groupdro import GroupDROLoss
from methods.jtt import JTT, upsampled
from training.erm import TrainConfig, train_erm
from utils.runtime import resolve_device, seed_everything

ROOT = Path(__file__).resolve().parent.parent
FAST = ("--data", "digits", "--device", "cpu", "--epochs", "3", "--pruning_ep", "1", "--retrain_ep", "1",
        "--irm_steps", "20", "--penalty_anneal_iters", "5", "--dfr_num_retrains", "2")
TOP_LEVEL = {"mode", "data", "arch", "seed", "args", "time_s", "splits", "methods", "primary_method"}


def context(tmp_path: Path, *argv: str) -> Context:
    args = run.parse_args([*FAST, "--out_dir", str(tmp_path), *argv])
    from data import build_splits

    seed_everything(args.seed)
    return Context(args, build_splits(args), resolve_device("cpu"), tmp_path)


@pytest.fixture(scope="module")
def all_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("all")
    assert run.main(["--mode", "all", *FAST, "--out_dir", str(out)]) == 0
    return out


def test_every_registered_method_runs_and_reports_in_one_format(all_run):
    res = read_results(all_run)
    assert TOP_LEVEL <= set(res)
    assert list(res["methods"]) == methods.method_names()
    for name, result in res["methods"].items():
        assert {"splits", "uses_group_labels", "group_labels", "selection", "val_samples"} <= set(result), name
        assert set(result["splits"]) == {"val", "test"}
    labelled = {name for name, r in res["methods"].items() if r["uses_group_labels"]}
    assert labelled == {"groupdro", "dfr", "oracle_group_balanced"}
    assert res["splits"] == res["methods"]["prusc"]["splits"] and res["primary_method"] == "prusc"
    assert res["density"] == res["methods"]["prusc"]["density"]
    assert "held-out half" in res["methods"]["retrain_only"]["val_samples"]
    held_out = sum(g["n"] for g in res["methods"]["prusc"]["splits"]["val"]["groups"].values())
    whole = sum(g["n"] for g in res["methods"]["erm"]["splits"]["val"]["groups"].values())
    assert held_out < whole
    assert (all_run / "report.png").stat().st_size > 10_000


def test_every_mode_writes_the_same_top_level_keys(all_run, tmp_path, run_cli):
    assert run_cli("--mode", "evaluate", "--data", "digits", "--checkpoint", all_run / "jtt.pt",
                   "--out_dir", tmp_path / "eval")[0] == 0
    assert run_cli("--mode", "erm", "--data", "digits", "--epochs", "1", "--out_dir", tmp_path / "erm")[0] == 0
    for folder in (tmp_path / "eval", tmp_path / "erm"):
        res = read_results(folder)
        assert TOP_LEVEL <= set(res) and res["splits"] == res["methods"][res["primary_method"]]["splits"]
    evaluated = read_results(tmp_path / "eval")["splits"]["test"]
    assert evaluated == read_results(all_run)["methods"]["jtt"]["splits"]["test"]


def test_a_method_registered_elsewhere_appears_in_mode_all(tmp_path, run_cli):
    @methods.register
    class Constant(Method):
        """Predicts class 0 whatever the input."""

        name = "dummy_constant"

        def fit(self, ctx: Context) -> Fitted:
            model, arch_args = ctx.new_model()
            with torch.no_grad():
                model.head.weight.zero_()
                model.head.bias.copy_(torch.tensor([1.0, 0.0]))
            return Fitted(model, arch_args=arch_args)

    try:
        rc, out, err = run_cli("--mode", "all", *FAST, "--methods", "erm,dummy_constant", "--out_dir", tmp_path)
        assert rc == 0, err
        res = read_results(tmp_path)
        assert list(res["methods"]) == ["erm", "dummy_constant"] and "dummy_constant" in out
        test = res["methods"]["dummy_constant"]["splits"]["test"]
        assert test["groups"]["y=1,a=0"]["acc"] == 0.0 and test["groups"]["y=0,a=0"]["acc"] == 1.0
    finally:
        methods.REGISTRY.pop("dummy_constant")


def test_unknown_method_is_one_line(tmp_path, run_cli):
    rc, _, err = run_cli("--mode", "all", *FAST, "--methods", "erm,nosuch", "--out_dir", tmp_path)
    assert rc == 2 and "nosuch" in err and err.strip().count("\n") == 0


def test_groupdro_weights_move_to_the_worst_group():
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 3, 3])
    loss = GroupDROLoss(groups, 4, eta=0.1, adjustment=0.0, device=torch.device("cpu"))
    y = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    logits = torch.zeros(10, 2)
    logits[:, 0] = 3.0  # right for every y = 0 sample, badly wrong for y = 1 (groups 2 and 3)
    logits[8:, 0] = 6.0  # group 3 is the worst
    for _ in range(20):
        value = loss(logits.clone().requires_grad_(True), y, torch.arange(10))
    q = loss.q
    assert int(q.argmax()) == 3 and float(q[3]) > float(q[2]) > float(q[0])
    assert float(q.sum()) == pytest.approx(1.0)
    assert value.requires_grad


def test_groupdro_adjustment_favours_small_groups():
    groups = torch.tensor([0] * 8 + [1] * 2)
    loss = GroupDROLoss(groups, 2, eta=0.1, adjustment=2.0, device=torch.device("cpu"))
    loss(torch.zeros(10, 2), torch.zeros(10, dtype=torch.long), torch.arange(10))  # equal losses
    assert float(loss.q[1]) > float(loss.q[0])


def test_jtt_error_set_is_the_identification_models_training_mistakes(tmp_path):
    ctx = context(tmp_path, "--jtt_lambda_up", "3", "--jtt_id_epochs", "1")
    JTT().fit(ctx)
    written = pd.read_csv(tmp_path / "jtt_error_set.csv")["index"].tolist()
    seed_everything(ctx.args.seed)
    identifier, _ = ctx.new_model()
    train_erm(identifier, ctx.train, ctx.part(TrainConfig), ctx.runtime, seed_everything(ctx.args.seed), epochs=1)
    with torch.no_grad():
        identifier.eval()
        preds = identifier(ctx.train.load_images(torch.arange(len(ctx.train)))).argmax(1)
    assert written == torch.nonzero(preds != ctx.train.y).flatten().tolist()
    assert 0 < len(written) < len(ctx.train)
    errors = torch.tensor(written)
    bigger = upsampled(ctx.train, errors, 3)
    assert len(bigger) == len(ctx.train) + 2 * len(errors)
    assert int((bigger.indices == errors[0]).sum()) == 3


def test_dfr_refits_only_the_last_layer(tmp_path):
    ctx = context(tmp_path)
    before = copy.deepcopy(ctx.reference.model.state_dict())
    fitted = DFR().fit(ctx)
    after = fitted.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"head.weight", "head.bias"}
    assert ctx.reference.model.state_dict()["head.weight"].equal(before["head.weight"])  # the reference is untouched
    assert fitted.val is not None and len(fitted.val) < len(ctx.splits["val"])


@pytest.mark.slow  # the sweep's fork server: a process importing every tool
def test_multi_seed_aggregates_an_irm_run(tmp_path, capsys):
    from scripts import multi_seed
    from test_irm import make_envs

    envs = make_envs(tmp_path / "data")
    argv = ["--tool", "irm", "--seeds", "0", "1", "--out_dir", str(tmp_path / "runs"), "--",
            "--minority_env", str(envs / "minority"), "--balance_env", str(envs / "balanced"), "--steps", "20",
            "--penalty_anneal_iters", "5", "--hidden_dim", "16", "--n_restarts", "1", "--device", "cpu"]
    assert multi_seed.main(argv) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "runs" / "summary.json").read_text())
    assert set(summary["test_percent"]) == {"erm", "irm_clusters"} and "| irm_clusters |" in out
    assert len(summary["test_percent"]["irm_clusters"]["worst_group_acc"]) == 2
    assert (tmp_path / "runs" / "report.png").exists()


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


SCRIPT_FILES = ("cluster/clustering.py", "invariant_learning/environments.py", "invariant_learning/irm.py")
"""Thin files kept at the paths the README's commands use; each only calls its program in cli/."""
LAYERS = ["utils", "data", "models", "cluster", "training", "invariant_learning", "methods"]


def library_modules() -> list[Path]:
    return [p for folder in LAYERS for p in (ROOT / folder).glob("*.py")
            if str(p.relative_to(ROOT)) not in SCRIPT_FILES]


def test_command_line_programs_live_in_cli_and_library_code_never_touches_sys_path():
    for path in library_modules():
        text = path.read_text()
        assert "__main__" not in text and "sys.path" not in text, f"{path.relative_to(ROOT)} is a script"
    for name in SCRIPT_FILES:
        imported = imported_modules(ROOT / name) - {"sys", "pathlib", "pathlib.Path"}
        assert {m.split(".")[0] for m in imported} == {"cli"}, f"{name} is more than a call into cli/"
    for path in library_modules():
        bad = {m for m in imported_modules(path) if m.split(".")[0] in ("cli", "run", "scripts")}
        assert not bad, f"{path.relative_to(ROOT)} imports the command-line program(s) {bad}"


def test_layers_import_only_downwards():
    for path in library_modules():
        level = LAYERS.index(path.parent.name)
        for module in imported_modules(path):
            top = module.split(".")[0]
            if top in LAYERS and top != path.parent.name:
                assert LAYERS.index(top) < level, f"{path.relative_to(ROOT)} imports {module} from a higher layer"


def test_the_code_keeps_one_training_loop_and_takes_the_flags_only_at_its_edge(capsys):
    """benchmarks/code_shape.py's counts stay at their goals: a new loop or a library function taking the
    whole argparse.Namespace (outside the command-line layer and the converters) fails here."""
    from benchmarks import code_shape

    assert code_shape.main([str(ROOT)]) == 0
    out = capsys.readouterr().out
    assert "outside the command-line layer and the converters: 0" in out
    assert "by hand: 0" in out and "training loops (functions calling .backward() and .step()): 1:" in out
    assert "import circles: 0" in out


def test_report_script_prints_the_table_and_draws_the_picture(all_run, tmp_path, capsys):
    from scripts import report

    assert report.main([str(all_run), "--out", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    assert "prusc" in out and "dfr [group labels]" in out
    assert (tmp_path / "report" / "worst_group.png").stat().st_size > 10_000
    assert report.main([str(tmp_path)]) == 2  # nothing to report: one line, exit code 2
    assert "no results.json under" in capsys.readouterr().err


@pytest.mark.slow
def test_methods_that_train_their_own_model_build_the_checkpoints_backbone(run_cli, tmp_path):
    assert run_cli("--mode", "erm", "--data", "digits", "--arch", "cnn", "--epochs", "1", "--device", "cpu",
                   "--out_dir", tmp_path / "erm")[0] == 0
    rc, _, err = run_cli("--mode", "all", "--data", "digits", "--methods", "erm,jtt", "--epochs", "1", "--device", "cpu",
                         "--checkpoint", tmp_path / "erm" / "erm.pt", "--out_dir", tmp_path / "all")
    assert rc == 0, err
    assert read_results(tmp_path / "all")["arch"] == "cnn"
    assert torch.load(tmp_path / "all" / "jtt.pt", weights_only=True)["arch"] == "cnn"
