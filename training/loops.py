"""The supervised training loop shared by ERM, retraining and the baselines, and batched prediction.

The loop never reads a number back from the device inside an epoch: the running loss sum stays
on the device and is checked (:class:`LossWatch`: NaN/inf, far above an untrained model's, or grown
by orders of magnitude) every ``CHECK_EVERY`` steps and at the end of each epoch, so a GPU is not
stalled once per step.

Given a :class:`~utils.run_dir.StepState`, the loop saves after every epoch what it needs to
continue bit for bit (model, optimizer, epoch, losses, random states, the state of ``stateful``
objects such as the best-epoch selection) and, when that state exists, continues from it.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterable, Mapping, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader

from training.parallel import data_parallel
from utils.distributed import (ShardSampler, all_gather_cat, all_gather_with_grad, gather_in_order, main_print,
                               together)
from utils.errors import UserError
from utils.run_dir import StepState
from utils.runtime import Runtime, as_runtime, make_loader, progress, rng_state, set_rng_state

CHECK_EVERY = 50  # steps between NaN/inf checks of the running loss (each check syncs with the device)
EXPLOSION = 1e3  # a mean loss this many times the lowest seen before (and above 1) means training diverged
INIT_FACTOR = 100.0  # a loss this many times what an untrained model scores means training diverged

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss_fn(logits, y, index)`` -> scalar loss of a batch; ``index`` (on the device) is each sample's
position in the training split, so a method can look up per-sample weights or group ids."""


def mean_cross_entropy(logits: torch.Tensor, y: torch.Tensor, _index: torch.Tensor) -> torch.Tensor:
    """The default :data:`LossFn`: plain mean cross-entropy (ERM)."""
    return nn.functional.cross_entropy(logits, y)


def make_optimizer(params: Iterable[nn.Parameter], name: str, lr: float, weight_decay: float = 0.0,
                   momentum: float = 0.9) -> torch.optim.Optimizer:
    """``sgd`` (with momentum) or ``adam``."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise UserError(f"unknown --optimizer {name!r}; choose sgd or adam")


def check_finite(loss: torch.Tensor, where: str, flag: str = "--lr") -> None:
    """Stop with a clear message when the loss is NaN/inf instead of training on garbage."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise UserError(f"the loss became {value} {where}: training diverged; lower {flag}")


def cross_entropy_limit(n_classes: int) -> float:
    """The mean cross-entropy above which a classifier has diverged: :data:`INIT_FACTOR` times
    ln(classes), the loss of an untrained model that spreads its guesses evenly. A model that is
    learning never goes there, while a diverged optimiser's loss is already there in its first
    epoch (Adam at --lr 1e6: 3e22), so no value seen during training is taken as the reference."""
    return INIT_FACTOR * math.log(max(n_classes, 2))


def check_contrastive(batch_size: int, temperature: float, where: str, mean: float) -> None:
    """Stop when the mean cluster-contrastive loss is over :data:`INIT_FACTOR` times ln(batch size),
    what features that carry no information score (an even softmax over the batch). With unit-norm
    features the loss is at most 2 / temperature + ln(batch size), so only a temperature far too small
    (similarities divided into huge numbers) gets there."""
    limit = INIT_FACTOR * math.log(max(batch_size, 2))
    if not math.isfinite(mean) or mean > limit:
        raise UserError(f"the contrastive loss reached {mean:.3g} {where}, over {limit:.3g} ({INIT_FACTOR:.0f} times "
                        f"what uninformative features score): training diverged; raise --temperature "
                        f"(now {temperature:g})")


class LossWatch:
    """Stops a run whose mean loss is NaN/inf, above ``limit`` (:func:`cross_entropy_limit`), or
    :data:`EXPLOSION` times over the lowest mean seen before; ``flag`` is the learning rate to lower."""

    def __init__(self, baseline: float | None = None, limit: float | None = None, flag: str = "--lr") -> None:
        self.baseline = baseline
        self.limit = limit
        self.flag = flag

    def check(self, total: torch.Tensor, count: int, where: str) -> float:
        """The mean of a running loss ``total`` over ``count`` samples, after the checks."""
        check_finite(total, where, self.flag)
        mean = float(total) / max(count, 1)
        if self.limit is not None and mean > self.limit:
            raise UserError(f"the loss reached {mean:.3g} {where}, over {self.limit:.3g} ({INIT_FACTOR:.0f} times "
                            f"what an untrained model scores): training diverged; lower {self.flag}")
        if self.baseline is not None and mean > EXPLOSION * max(self.baseline, 1.0):
            raise UserError(f"the loss grew from {self.baseline:.3g} to {mean:.3g} {where}: training diverged; "
                            f"lower {self.flag}")
        self.baseline = mean if self.baseline is None else min(self.baseline, mean)
        return mean


class Stateful(Protocol):
    """Anything whose state a resumed step must get back (e.g. :class:`BestEpoch`, a loss with memory)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def save_step(resume: StepState, epoch: int, last: bool, parts: Mapping[str, Any],
              generator: torch.Generator | None, **plain: Any) -> None:
    """Save a step's state after ``epoch`` epochs (or steps): the ``state_dict`` of each of ``parts`` (the optimizer's
    only while the step is unfinished: nothing will continue it), random states and ``plain`` values."""
    states = {name: part.state_dict() for name, part in parts.items()
              if not (last and isinstance(part, torch.optim.Optimizer))}
    resume.save({"epoch": epoch, "finished": last, "parts": states, "rng": rng_state(generator), **plain})


def load_step(resume: StepState | None, parts: Mapping[str, Any], generator: torch.Generator | None,
              desc: str, total: int, unit: str = "epoch") -> dict[str, Any] | None:
    """Load the saved state of a step into ``parts`` and the random states; None when there is none.
    (``state["epoch"]`` counts the finished ``unit``s: epochs, or steps for a step-counted loop.)"""
    state = resume.load() if resume is not None else None
    if state is None:
        return None
    try:
        for name, part in parts.items():
            if name in state["parts"]:
                part.load_state_dict(state["parts"][name])
        set_rng_state(state["rng"], generator)
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:  # another model shape or another step's state
        reason = " ".join(line.strip() for line in str(exc).splitlines()[:2])[:200] or type(exc).__name__
        where = resume.path  # type: ignore[union-attr]
        raise UserError(f"resume state {where} does not fit {desc} ({type(exc).__name__}: {reason}); "
                        f"delete it to run {desc} again from its start") from None
    word = "reusing the finished" if state["finished"] else "resuming"
    print(f"{word} {desc} after {unit} {state['epoch']}/{total} ({resume.path})", flush=True)  # type: ignore[union-attr]
    return state


def train_classifier(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    runtime: Runtime | torch.device,
    epochs: int,
    desc: str,
    on_epoch_end: Callable[[int], None] | None = None,
    train_mode: bool = True,
    loss_fn: LossFn = mean_cross_entropy,
    resume: StepState | None = None,
    generator: torch.Generator | None = None,
    stateful: Mapping[str, Stateful] | None = None,
    lr_flag: str = "--lr",
) -> list[float]:
    """Train for ``epochs`` with ``loss_fn``; returns the mean loss of each epoch.

    ``train_mode=False`` keeps BatchNorm statistics and dropout as in evaluation (head-only tuning).
    Under ``torchrun`` each rank runs its share of the global batch through the DDP-wrapped model,
    then ``loss_fn`` sees the logits (gathered with gradient), labels and indices of the whole
    global batch on every rank, so every method's loss means what it means for one process.
    With ``resume``, the state is saved after every epoch and a saved state is continued (module
    docstring; every ``runtime.resume_every`` epochs and the last); ``generator`` is the loader's and
    ``stateful`` what ``on_epoch_end`` or ``loss_fn`` keep. ``runtime`` says device, precision and memory format.
    A diverged loss (:class:`LossWatch`) stops the run with one line naming ``lr_flag``.
    """
    runtime = as_runtime(runtime)
    device = runtime.device
    parts = {"model": model, "optimizer": optimizer, **(stateful or {})}
    state = load_step(resume, parts, generator, desc, epochs)
    history: list[float] = list(state["history"]) if state else []
    watch = LossWatch(state["loss_baseline"] if state else None, flag=lr_flag)
    net = data_parallel(model, device)
    for epoch in range(state["epoch"] if state else 0, epochs):
        started = time.perf_counter()
        model.train(train_mode)
        total = torch.zeros((), device=device)
        count = 0
        where = f"in {desc} epoch {epoch + 1}"
        batches = together(progress(loader, desc=f"{desc} epoch {epoch + 1}/{epochs}"), where)
        for step, (x, y, _a, idx) in enumerate(batches):
            x, y = runtime.batch(x), y.to(device, non_blocking=True)
            with runtime.autocast():
                logits = net(x)[1]
            logits, y = all_gather_with_grad(logits.float()), all_gather_cat(y)
            if watch.limit is None:
                watch.limit = cross_entropy_limit(logits.shape[-1])
            loss = loss_fn(logits, y, all_gather_cat(idx.to(device, non_blocking=True)))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(y)
            count += len(y)
            if (step + 1) % CHECK_EVERY == 0:
                watch.check(total, count, f"{where} (by step {step + 1})")
        history.append(watch.check(total, count, where))
        main_print(f"{desc} epoch {epoch + 1}/{epochs}: loss {history[-1]:.4f} ({time.perf_counter() - started:.1f} s)",
                   flush=True)
        if on_epoch_end is not None:
            on_epoch_end(epoch)
        if resume is not None and ((epoch + 1) % runtime.resume_every == 0 or epoch + 1 == epochs):
            save_step(resume, epoch + 1, epoch + 1 == epochs, parts, generator, history=history,
                      loss_baseline=watch.baseline)
    return history


def predict(model: nn.Module, dataset: Any, runtime: Runtime | torch.device, desc: str = "predict") -> torch.Tensor:
    """:func:`predict_logits` over ``dataset`` in batches of the runtime's ``eval_batch_size`` and workers."""
    runtime = as_runtime(runtime)
    loader = make_loader(dataset, runtime.eval_batch_size, num_workers=runtime.num_workers)
    return predict_logits(model, loader, runtime, desc)


@torch.no_grad()
def predict_logits(model: nn.Module, loader: DataLoader, runtime: Runtime | torch.device,
                   desc: str = "predict") -> torch.Tensor:
    """Logits for every sample of the loader's data set, in dataset order (uses the index field), as
    fp32 on the CPU; batches in ``runtime``'s memory format and precision (the model is left as it is).

    Under ``torchrun`` each rank predicts a contiguous share and every rank gets all rows.
    """
    runtime = as_runtime(runtime)
    model.eval()
    dataset = loader.dataset
    loader = make_loader(dataset, loader.batch_size or 1, sampler=ShardSampler(len(dataset)),
                         num_workers=loader.num_workers)
    indices, rows = [torch.empty(0, dtype=torch.long)], [torch.empty(0, dataset.n_classes)]
    for x, _y, _a, idx in together(progress(loader, desc=desc), f"in {desc}"):
        with runtime.autocast():
            rows.append(model(runtime.batch(x)).float().cpu())
        indices.append(idx)
    return gather_in_order(torch.cat(indices), torch.cat(rows), len(dataset))
