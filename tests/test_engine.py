"""training.loops.run_training, the one training loop: a step-counted plan continues bit for bit, a callback's
early stop ends training with a finished state, and a diverged objective stops naming its flag."""
from __future__ import annotations

import pytest
import torch

from training.loops import Callback, LossWatch, Step, Steps, run_training
from utils.errors import UserError
from utils.run_dir import StepState
from utils.runtime import Runtime

CPU = Runtime(torch.device("cpu"))
X = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
Y = (X[:, 0] > 0).long()


def draw_from(generator: torch.Generator):
    def draw(_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(X), (8,), generator=generator)
        return X[idx], Y[idx]
    return draw


def objective(net: torch.nn.Module, batch: tuple[int, tuple[torch.Tensor, torch.Tensor]]) -> Step:
    _step, (x, y) = batch
    return Step(torch.nn.functional.cross_entropy(net(x), y), len(y))


class StopAt(Callback):
    def __init__(self, step: int, error: bool = False) -> None:
        self.step, self.error = step, error

    def after_batch(self, step: int) -> bool:
        if step == self.step and self.error:
            raise KeyboardInterrupt
        return step == self.step


def train(steps: int, resume: StepState | None = None, callbacks: tuple[Callback, ...] = ()) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    generator = torch.Generator().manual_seed(1)
    run_training(model, objective, Steps(draw_from(generator), steps, 3, "toy"), torch.optim.Adam(model.parameters()),
                 CPU, LossWatch(), callbacks, resume, generator, parallel=False)
    return model


def test_an_interrupted_step_plan_continues_bit_for_bit(tmp_path, capsys):
    whole = train(10)
    state = StepState(tmp_path, "toy")
    with pytest.raises(KeyboardInterrupt):
        train(10, state, (StopAt(8, error=True),))  # saved after steps 3 and 6
    resumed = train(10, state)
    assert "resuming toy after step 6/10" in capsys.readouterr().out
    assert torch.equal(resumed.weight, whole.weight) and torch.equal(resumed.bias, whole.bias)


def test_an_early_stop_ends_training_with_a_finished_state(tmp_path, capsys):
    state = StepState(tmp_path, "toy")
    stopped = train(10, state, (StopAt(4),))
    assert state.load()["finished"] and state.load()["step"] == 4
    again = train(10, state, (StopAt(4),))
    assert "reusing the finished toy after step 4/10" in capsys.readouterr().out
    assert torch.equal(again.weight, stopped.weight)


def test_a_diverged_objective_stops_naming_its_flag():
    def exploding(net: torch.nn.Module, batch) -> Step:
        return Step(objective(net, batch).loss * float("inf"), 1)

    model = torch.nn.Linear(4, 2)
    generator = torch.Generator().manual_seed(1)
    with pytest.raises(UserError, match="in toy by step 3: training diverged; lower --toy_lr"):
        run_training(model, exploding, Steps(draw_from(generator), 5, 3, "toy"),
                     torch.optim.SGD(model.parameters(), lr=0.1), CPU, LossWatch(flag="--toy_lr"),
                     parallel=False)
