"""The runtime (device, bf16 autocast, memory format): --amp on the CPU, its fallback, the fp32 default unchanged."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import run
from conftest import read_results
from data import build_splits
from models import build_model
from models.factory import ModelConfig, model_from_args
from models.masking import mask_parameters
from training.erm import TrainConfig, train_erm
from training.loops import make_optimizer, predict_logits, train_classifier
from training.prune import PruneConfig, learn_masks
from training.samplers import training_loader
from utils import runtime as runtime_module
from utils.options import from_args
from utils.runtime import Runtime, runtime_from_args, seed_everything

CPU = torch.device("cpu")
TINY = ("--data", "digits", "--device", "cpu", "--epochs", "2", "--pruning_ep", "1", "--retrain_ep", "1",
        "--irm_steps", "5", "--penalty_anneal_iters", "2", "--dfr_num_retrains", "2")
# results.json of `run.py --data digits --device cpu --methods erm,prusc,jtt --epochs 6 --pruning_ep 2
# --retrain_ep 2 --seed 0` at commit 49333e0, before the runtime existed: (avg_acc, worst_group_acc) per split
BEFORE_RUNTIME = {
    "erm": {"val": (0.5590200445434298, 0.0), "test": (0.5666666666666667, 0.0)},
    "prusc": {"val": (0.6681614349775785, 0.14285714285714285), "test": (0.6911111111111111, 0.2)},
    "jtt": {"val": (0.8396436525612472, 0.7589285714285714), "test": (0.8422222222222222, 0.7583333333333333)},
}
PRUSC_DENSITY_BEFORE = 0.4481423611111111


class ForwardLog:
    """Records, for every Conv2d/Linear forward, whether bf16 autocast was on and the input's memory format."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool, bool]] = []

    def __call__(self, module: nn.Module, inputs: tuple) -> None:
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            x = inputs[0]
            bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
            cl = x.dim() != 4 or x.is_contiguous(memory_format=torch.channels_last)
            self.calls.append((type(module).__name__, bf16, cl))


@pytest.fixture
def forward_log():
    log = ForwardLog()
    handle = nn.modules.module.register_module_forward_pre_hook(log)
    yield log
    handle.remove()


def test_amp_force_trains_and_evaluates_a_tiny_model_in_bf16(forward_log):
    """The forced path (what --amp is on a CPU with bf16): training and prediction run under bf16 autocast."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 3, 8, 8), torch.arange(64) % 2
    data = torch.utils.data.TensorDataset(x, y, torch.zeros(64, dtype=torch.long), torch.arange(64))
    data.n_classes = 2
    loader = torch.utils.data.DataLoader(data, batch_size=16)
    model = build_model("cnn", (3, 8, 8), 2, width=4)
    bf16 = Runtime(CPU, bf16=True, channels_last=True)
    losses = train_classifier(model, loader, make_optimizer(model.parameters(), "adam", 1e-2), bf16, 3, "ERM")
    logits = predict_logits(model, loader, bf16)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert logits.dtype == torch.float32 and logits.shape == (64, 2)
    assert forward_log.calls and all(on and cl for _, on, cl in forward_log.calls)


@pytest.mark.slow
def test_no_forward_of_mode_all_drops_amp_or_channels_last(tmp_path, run_cli, forward_log):
    """Every Conv2d/Linear forward of every method (ERM, clustering, pruning, retraining, baselines,
    evaluation) runs under bf16 autocast with a channels-last batch when both are asked for."""
    rc, out, _ = run_cli("--mode", "all", *TINY, "--arch", "cnn", "--cnn_width", "4", "--amp", "force",
                         "--channels_last", "--prune_memory_format", "channels_last", "--out_dir", tmp_path)
    assert rc == 0
    assert out.splitlines()[0].startswith("runtime: cpu") and "bf16 autocast, channels-last" in out.splitlines()[0]
    results = read_results(tmp_path)
    assert {"erm", "prusc", "jtt", "irm", "groupdro", "dfr"} <= set(results["methods"])
    assert results["args"]["amp"] == "force"
    assert len(forward_log.calls) > 100
    dropped = {(name, on, cl) for name, on, cl in forward_log.calls if not (on and cl)}
    assert not dropped


@pytest.mark.slow
def test_fp32_default_results_are_those_before_the_runtime(tmp_path, run_cli):
    """Without --amp nothing changes: the exact numbers a seeded digits run gave before the runtime existed."""
    rc, out, _ = run_cli("--data", "digits", "--device", "cpu", "--methods", "erm,prusc,jtt", "--epochs", "6",
                         "--pruning_ep", "2", "--retrain_ep", "2", "--seed", "0", "--out_dir", tmp_path)
    assert rc == 0 and out.splitlines()[0].startswith("runtime: cpu") and ", fp32, NCHW" in out.splitlines()[0]
    methods = read_results(tmp_path)["methods"]
    got = {name: {split: (m["avg_acc"], m["worst_group_acc"]) for split, m in methods[name]["splits"].items()}
           for name in BEFORE_RUNTIME}
    assert got == BEFORE_RUNTIME
    assert methods["prusc"]["density"]["overall"] == PRUSC_DENSITY_BEFORE


def test_fp32_runtime_trains_exactly_like_a_plain_loop():
    """The default runtime adds nothing to a step: ERM through it equals a hand-written fp32 loop bit for bit."""
    args = run.parse_args([*TINY, "--arch", "cnn", "--cnn_width", "4", "--out_dir", "unused"])
    assert runtime_from_args(args) == Runtime(CPU)
    train = build_splits(args)["train"]
    seed_everything(0)
    model, _ = model_from_args(from_args(ModelConfig, args), train)
    plain = copy.deepcopy(model)
    train_erm(model, train, from_args(TrainConfig, args), runtime_from_args(args, CPU), seed_everything(0))

    generator = seed_everything(0)
    loader = training_loader(train, args.batch_size, generator, 0, None)
    optimizer = make_optimizer(plain.parameters(), args.optimizer, args.lr, args.weight_decay)
    for _ in range(args.epochs):
        plain.train()
        for x, y, _a, _i in loader:
            loss = nn.functional.cross_entropy(plain(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    for (name, a), b in zip(model.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), name


def test_amp_on_a_cpu_without_bf16_falls_back_to_fp32_with_one_line(tmp_path, run_cli, monkeypatch):
    monkeypatch.setattr(runtime_module, "cpu_bf16_support", lambda: None)
    rc, out, _ = run_cli("--mode", "erm", *TINY, "--amp", "--out_dir", tmp_path)
    assert rc == 0
    notes = [line for line in out.splitlines() if "--amp" in line]
    assert len(notes) == 1 and "falls back to fp32" in notes[0] and "--amp force" in notes[0]
    args = run.parse_args([*TINY, "--amp", "--out_dir", str(tmp_path)])
    assert runtime_from_args(args).bf16 is False
    assert runtime_from_args(run.parse_args([*TINY, "--amp", "force", "--out_dir", str(tmp_path)])).bf16 is True


def test_amp_uses_bf16_on_a_cpu_that_has_it(monkeypatch):
    monkeypatch.setattr(runtime_module, "cpu_bf16_support", lambda: "avx512_bf16")
    on = runtime_from_args(run.parse_args([*TINY, "--amp", "--out_dir", "unused"]))
    off = runtime_from_args(run.parse_args([*TINY, "--out_dir", "unused"]))
    assert on.bf16 and "bf16 autocast" in on.describe() and "avx512_bf16" in on.describe()
    assert not off.bf16 and "--amp would use bf16" in off.describe()


def test_cpu_bf16_support_reads_the_cpu_flags(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    monkeypatch.setattr(runtime_module, "CPUINFO", info)
    try:
        for flags, expected in (("flags\t\t: fpu avx2 avx512f avx512_bf16", "avx512_bf16"),
                                ("flags\t\t: fpu avx2 amx_bf16 avx512_bf16", "amx_bf16"),
                                ("Features\t: fp asimd bf16 i8mm", "bf16"), ("flags\t\t: fpu sse4_2 avx2", None)):
            info.write_text(f"processor\t: 0\n{flags}\n")
            runtime_module.cpu_bf16_support.cache_clear()
            assert runtime_module.cpu_bf16_support() == expected
    finally:
        runtime_module.cpu_bf16_support.cache_clear()


def test_bad_amp_value_and_resume_every_are_one_line(tmp_path, run_cli, capsys):
    with pytest.raises(SystemExit) as stop:
        run.main(["--amp", "fast", "--out_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "--amp" in err and "force" in err and len(err.strip().splitlines()) == 1
    rc, _, err = run_cli("--mode", "erm", *TINY, "--resume_every", "0", "--out_dir", tmp_path / "r")
    assert rc == 2 and "--resume_every" in err and len(err.strip().splitlines()) == 1


def test_pruning_runs_in_nchw_unless_asked_otherwise():
    def runtime(*flags: str, device: str = "cpu") -> Runtime:
        return runtime_from_args(run.parse_args([*TINY, *flags, "--out_dir", "unused"]), torch.device(device))

    for device in ("cpu", "cuda"):
        with_cl = runtime("--channels_last", device=device)
        assert with_cl.channels_last and not with_cl.for_pruning().channels_last
        assert "(pruning NCHW)" in with_cl.describe()
        assert runtime("--channels_last", "--prune_memory_format", "channels_last", device=device).for_pruning().channels_last
    assert not runtime().for_pruning().channels_last


def masks_learned(model: nn.Module, *flags: str) -> list[torch.Tensor]:
    args = run.parse_args([*TINY, "--arch", "cnn", "--cnn_width", "4", "--batch_size", "32", *flags,
                           "--out_dir", "unused"])
    train = build_splits(args)["train"]
    learn_masks(model, train, train.y * 2 + train.a, from_args(PruneConfig, args), args.batch_size,
                runtime_from_args(args, CPU), seed_everything(0))
    return [p.detach().clone() for p in mask_parameters(model)]


def test_pruning_in_nchw_after_channels_last_erm_learns_the_masks_of_an_nchw_run():
    """The switch of the pruning step's memory format: a channels-last model pruned in NCHW learns the
    same masks, bit for bit, as the same model kept in NCHW throughout; pruned in channels-last, the same
    masks up to rounding."""
    torch.manual_seed(0)
    model = build_model("cnn", (3, 8, 8), 2, width=4)
    reference = masks_learned(copy.deepcopy(model))
    switched = masks_learned(copy.deepcopy(model).to(memory_format=torch.channels_last), "--channels_last",
                             "--prune_memory_format", "nchw")
    kept = masks_learned(copy.deepcopy(model), "--channels_last", "--prune_memory_format", "channels_last")
    assert reference and all(torch.equal(a, b) for a, b in zip(reference, switched))
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(reference, kept))


class CountingState:
    """A stand-in StepState that counts saves (nothing saved before: a fresh run)."""

    def __init__(self) -> None:
        self.saved: list[int] = []
        self.path = Path("unused")

    def load(self) -> None:
        return None

    def save(self, state: dict) -> None:
        self.saved.append(state["epoch"])


def test_resume_every_saves_every_n_epochs_and_the_last():
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 4), torch.arange(32) % 2, torch.zeros(32, dtype=torch.long),
                                          torch.arange(32))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    model = build_model("mlp", (4,), 2, hidden_dim=8)
    state = CountingState()
    train_classifier(model, loader, make_optimizer(model.parameters(), "adam", 1e-3), Runtime(CPU, resume_every=2),
                     5, "ERM", resume=state)  # type: ignore[arg-type]
    assert state.saved == [2, 4, 5]
