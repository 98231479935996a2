"""``--config FILE``: a TOML or JSON file of flag values (a finished run's run_args.json too), flags typed on
the command line winning, every value checked as the command line checks it."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import methods
import run
from cli import environments, irm
from methods.base import Context, Fitted, Method
from utils.options import option
from benchmarks.same_metrics import numbers
from conftest import read_results

ROOT = Path(__file__).resolve().parent.parent
TINY = ("--data", "digits", "--device", "cpu", "--epochs", "1", "--hidden_dim", "16")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def recorded_args(out_dir: Path) -> dict:
    return json.loads((out_dir / "run_args.json").read_text())["args"]


def test_precedence_defaults_recipe_file_typed(tmp_path):
    config = write(tmp_path / "c.toml", 'recipe = "original"\nepochs = 7\n[prusc]\nmask_init = 2.5\nlr_prune = 0.5\n')
    args = run.parse_args(["--config", str(config), "--lr_prune", "0.25"])
    assert args.epochs == 7 and args.pruning_ep == 20           # file; default
    assert args.mask_init == 2.5 and args.temperature == 0.07   # file over the recipe; the recipe
    assert args.lr_prune == 0.25                                # typed over the file
    assert args.cluster_epoch == 7                              # the recipe's "final", settled after the file
    assert not hasattr(args, "config")                          # a run records the values, not the file name


def test_values_go_through_the_flags_types(tmp_path):
    config = write(tmp_path / "c.toml", 'methods = ["erm", "prusc"]\namp = "force"\nper_class = false\n'
                                        'cluster_epoch = 2\ndfr_c_grid = [1, 0.5]\nprune_layers = 2\n')
    args = run.parse_args(["--config", str(config)])
    assert args.methods == ["erm", "prusc"] and args.amp == "force" and args.per_class is False
    assert args.cluster_epoch == 2 and args.dfr_c_grid == (1.0, 0.5) and args.prune_layers == "2"


@pytest.mark.parametrize("text, says", [
    ("lr_prun = 0.1\n", "unknown key 'lr_prun'; did you mean 'lr_prune'?"),
    ("[prusc]\npruning_epochs = 3\n", "unknown key 'pruning_epochs'; did you mean 'pruning_ep'?"),
    ('epochs = "ten"\n', "epochs = \"ten\": 'ten' is not an int"),
    ("epochs = 1.5\n", "epochs = 1.5: '1.5' is not an int"),
    ("lr = -1.0\n", "lr = -1.0: -1.0 is too small"),
    ("seed = -1\n", "seed = -1: -1 is too small"),
    ("data_seed = 4294967296\n", "4294967296 is too large for a seed"),
    ('optimizer = "adamw"\n', 'optimizer = "adamw": choose from adam, sgd'),
    ("augment = 1\n", "augment = 1: --augment is a switch; write true or false"),
    ("overwrite = true\n", "'overwrite' is accepted on the command line only"),
    ("epochs = \n", "not valid TOML"),
    ("epochs = {a = 1}\n", "table [epochs] holds 'a', which is no flag, and epochs is itself a flag; to set it, "
                          "write epochs = <value>"),
])
def test_a_bad_file_is_one_line_naming_the_key(run_cli, tmp_path, text, says):
    config = write(tmp_path / "bad.toml", text)
    rc, out, err = run_cli("--config", config, "--out_dir", tmp_path / "run")
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"run.py: error: --config {config}: ") and says in err, err
    assert not (tmp_path / "run").exists()


def test_a_json_key_twice_and_a_file_not_in_utf8_are_one_line(run_cli, tmp_path):
    twice = write(tmp_path / "twice.json", '{"epochs": 1, "epochs": 2}')
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b"# r\xe9glage\nepochs = 1\n")
    for config, says in ((twice, "key 'epochs' is given twice"), (latin, "not UTF-8 text (byte 0xe9 at 3)")):
        rc, _, err = run_cli("--config", config, "--out_dir", tmp_path / "run")
        assert rc == 2 and err.count("\n") == 1 and says in err, err


def test_a_leading_tilde_is_expanded_as_the_shell_would(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # --flag=~/x and file values reach the program unexpanded
    write(tmp_path / "c.toml", 'checkpoint = "~/erm.pt"\n')
    args = run.parse_args(["--config=~/c.toml", "--out_dir=~/runs/x"])
    assert args.out_dir == str(tmp_path / "runs" / "x") and args.checkpoint == str(tmp_path / "erm.pt")


def test_a_record_of_another_tool_is_refused(run_cli, tmp_path):
    config = write(tmp_path / "run_args.json", json.dumps({"tool": "irm.py", "args": {"irm_steps": 5}}))
    rc, _, err = run_cli("--config", config)
    assert rc == 2 and "written by irm.py; pass it to irm.py --config" in err


def test_a_config_run_equals_the_run_from_flags_and_its_record_repeats_it(run_cli, tmp_path):
    flags = ("--mode", "erm", *TINY, "--lr", "0.002", "--batch_size", "32", "--seed", "3")
    assert run_cli(*flags, "--out_dir", tmp_path / "flags")[0] == 0
    config = write(tmp_path / "erm.toml", 'mode = "erm"\nseed = 3\n[data]\ndata = "digits"\n'
                                          '[training]\nepochs = 1\nlr = 0.002\nbatch_size = 32\nhidden_dim = 16\n')
    assert run_cli("--config", config, "--device", "cpu", "--out_dir", tmp_path / "file")[0] == 0
    assert run_cli("--config", tmp_path / "flags" / "run_args.json", "--out_dir", tmp_path / "again")[0] == 0
    reference = numbers(read_results(tmp_path / "flags"))
    for name in ("file", "again"):
        assert numbers(read_results(tmp_path / name)) == reference, name
        assert {k: v for k, v in recorded_args(tmp_path / name).items() if k != "out_dir"} == \
            {k: v for k, v in recorded_args(tmp_path / "flags").items() if k != "out_dir"}


def test_a_typed_flag_overrides_the_file_and_the_record_keeps_no_folder(run_cli, tmp_path):
    assert run_cli("--mode", "erm", *TINY, "--out_dir", tmp_path / "first")[0] == 0
    record = tmp_path / "first" / "run_args.json"
    args = run.parse_args(["--config", str(record), "--lr", "0.01"])
    assert args.lr == 0.01 and args.epochs == 1 and args.hidden_dim == 16
    assert args.out_dir != str(tmp_path / "first")  # a repeat goes to a new folder, never into the old one
    assert run_cli("--config", record, "--lr", "0.01", "--out_dir", tmp_path / "second")[0] == 0
    assert recorded_args(tmp_path / "second")["lr"] == 0.01
    assert numbers(read_results(tmp_path / "second")) != numbers(read_results(tmp_path / "first"))


@pytest.mark.slow
def test_a_pruning_run_repeats_from_its_record(run_cli, tmp_path):
    config = write(tmp_path / "prusc.toml", 'methods = ["erm", "prusc"]\n[prusc]\npruning_ep = 1\nretrain_ep = 1\n'
                                            'lambda_sparse = 1e-6\nprune_checks = 2\n')
    assert run_cli("--config", config, *TINY, "--out_dir", tmp_path / "first")[0] == 0
    assert run_cli("--config", tmp_path / "first" / "run_args.json", "--out_dir", tmp_path / "again")[0] == 0
    first, again = (numbers(read_results(tmp_path / name)) for name in ("first", "again"))
    assert first == again and set(first["methods"]) == {"erm", "prusc"}


def test_irm_and_environments_take_a_config_too(tmp_path, capsys):
    config = write(tmp_path / "irm.toml", f'minority_env = "{tmp_path / "m"}"\nbalance_env = "{tmp_path / "b"}"\n'
                                          f'out_dir = "{tmp_path / "out"}"\nirm_steps = 7\n')
    args = irm.parse_args(["--config", str(config), "--irm_lr", "0.01"])
    assert (args.minority_env, args.irm_steps, args.irm_lr) == (str(tmp_path / "m"), 7, 0.01)
    assert irm.main(["--irm_steps", "7"]) == 2
    assert capsys.readouterr().err == ("irm.py: error: --minority_env and --balance_env are required, on the command "
                                       "line or in --config\n")
    config = write(tmp_path / "envs.toml", 'clusters = "c.csv"\noutput_dir = "envs"\nminority_share = 0.7\n')
    args = environments.parse_args(["--config", str(config), "--seed", "3"])
    assert (args.clusters, args.output_dir, args.minority_share, args.seed) == ("c.csv", "envs", 0.7, 3)


def test_the_documented_example_is_valid(tmp_path):
    text = (ROOT / "docs" / "cli.md").read_text()
    example = write(tmp_path / "example.toml", text.split("```toml\n", 1)[1].split("```", 1)[0])
    args = run.parse_args(["--config", str(example)])
    assert args.methods == ["erm", "retrain_only", "prusc"] and args.spurious_ratio == 0.9 and args.per_class


@dataclass(frozen=True)
class ConstantConfig:
    """A new method's settings: one frozen dataclass in the method's file, one field per flag."""

    constant_class: int = option(0, "the class the constant method predicts", type=int, choices=[0, 1])


def test_a_new_methods_config_is_one_dataclass(run_cli, tmp_path):
    @methods.register
    class Constant(Method):
        name = "dummy_constant_config"
        config = ConstantConfig

        def fit(self, ctx: Context) -> Fitted:
            settings = ctx.part(ConstantConfig)
            model, arch_args = ctx.new_model()
            with torch.no_grad():
                model.head.weight.zero_()
                model.head.bias.copy_(torch.eye(2)[settings.constant_class])
            return Fitted(model, arch_args=arch_args, info={"constant_class": settings.constant_class})

    try:
        assert "--constant_class" in run.build_parser().format_help()
        config = write(tmp_path / "c.toml", "[dummy_constant_config]\nconstant_class = 1\n")
        rc, _, err = run_cli("--config", config, "--methods", Constant.name, *TINY, "--out_dir", tmp_path / "run")
        assert rc == 0, err
        entry = read_results(tmp_path / "run")["methods"][Constant.name]
        assert entry["constant_class"] == 1 and entry["splits"]["test"]["groups"]["y=1,a=0"]["acc"] == 1.0
        assert recorded_args(tmp_path / "run")["constant_class"] == 1
    finally:
        methods.REGISTRY.pop(Constant.name)
