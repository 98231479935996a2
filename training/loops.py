"""The one training loop (:func:`run_training`) with its objectives, callbacks and plans, and batched prediction.

Every training of the toolkit runs through :func:`run_training`: ERM, retraining and the baselines
(:func:`train_classifier`, the cross-entropy objective or a method's loss hook), PruSC's mask
learning (``training/prune.py``), IRM (``methods/irm.py``) and the pretraining script. An objective
computes one batch's loss; callbacks add what a step needs around it (epoch lines, model selection,
mid-epoch checks, early stops, per-batch bookkeeping, state to resume).

The loop never reads a number back from the device inside an epoch: the running loss sum stays
on the device and is checked (:class:`LossWatch`: NaN/inf, far above an untrained model's, or grown
by orders of magnitude) every ``CHECK_EVERY`` steps, when a callback asks, and at the end of each
epoch, so a GPU is not stalled once per step.

Given a :class:`~utils.run_dir.StepState`, the loop saves after every epoch what it needs to
continue bit for bit (model, optimizer, epoch, losses, random states, the state of the callbacks
such as the best-epoch selection) and, when that state exists, continues from it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
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


@dataclass
class Step:
    """What an objective returns for one batch: the ``loss`` to minimise, its ``weight`` in the running mean
    the loss watch checks (samples, or 1 for a per-step mean), and ``terms`` (detached, kept on the device)
    for a callback's bookkeeping (PruSC's CE, contrastive and sparsity terms)."""

    loss: torch.Tensor
    weight: int
    terms: torch.Tensor | None = None


Objective = Callable[[nn.Module, Any], Step]
"""``objective(net, batch)`` -> :class:`Step`: the forward pass (in the runtime's precision and memory format)
and the loss of one batch; ``net`` is what :func:`run_training` calls the model through (its ``parallel``)."""


class Callback:
    """Hooks of :func:`run_training`; each default does nothing. ``parts`` are saved and restored with a step's
    resume state (``state_dict``/``load_state_dict``), :meth:`saved` adds plain values, :meth:`start` gets them back."""

    parts: Mapping[str, Stateful] = {}

    def start(self, state: dict[str, Any] | None) -> None:
        """Before the first batch: ``state`` is the loaded resume state, None on a fresh start."""

    def saved(self) -> dict[str, Any]:
        """Plain values the resume state keeps for :meth:`start`."""
        return {}

    def on_batch(self, step: int, out: Step) -> None:
        """After the optimizer step ``step`` (counted over the whole run, from 1): per-batch bookkeeping."""

    def due(self, step: int) -> bool:
        """Whether the loss must be checked after ``step`` (e.g. before a check that may save the model)."""
        return False

    def check(self, where: str) -> None:
        """A divergence check of the callback's own, run with the loss watch's (before it)."""

    def after_batch(self, step: int) -> bool:
        """After the loss checks of ``step``; True stops training (early stop) at the end of this epoch."""
        return False

    def after_epoch(self, epoch: int, mean: float, seconds: float) -> None:
        """After ``epoch`` (from 0) with its mean loss and duration, before its resume save."""

    def note(self) -> str:
        """Text added to a loss failure's message (e.g. where the last good checkpoint is)."""
        return ""


class EpochLog(Callback):
    """Prints ``<desc> epoch e/E: loss L (t s)`` after every epoch (rank 0)."""

    def __init__(self, desc: str, epochs: int) -> None:
        self.desc, self.epochs = desc, epochs

    def after_epoch(self, epoch: int, mean: float, seconds: float) -> None:
        main_print(f"{self.desc} epoch {epoch + 1}/{self.epochs}: loss {mean:.4f} ({seconds:.1f} s)", flush=True)


class Keep(Callback):
    """Saves and restores ``parts`` with the resume state (a :class:`BestEpoch`, a loss with memory)."""

    def __init__(self, parts: Mapping[str, Stateful]) -> None:
        self.parts = parts


class EachEpoch(Callback):
    """Calls ``fn(epoch)`` after every epoch (model selection, snapshots)."""

    def __init__(self, fn: Callable[[int], None]) -> None:
        self.fn = fn

    def after_epoch(self, epoch: int, mean: float, seconds: float) -> None:
        self.fn(epoch)


@dataclass
class Epochs:
    """Passes over a data loader: the unit of progress bars, loss checks and resume saves. ``label`` names the
    progress bar (``<label> epoch e/E``); ``global_steps`` numbers the steps of a failure message over the run."""

    loader: Iterable[Any]
    epochs: int
    desc: str
    label: str
    global_steps: bool = False
    unit = "epoch"

    @property
    def total(self) -> int:
        return self.epochs

    def batches(self, epoch: int) -> tuple[Iterable[Any], str, int | None]:
        """The batches of ``epoch`` (from 0), their progress label and number (None: the iterable's length)."""
        return self.loader, f"{self.label} epoch {epoch + 1}/{self.epochs}", None

    def where(self, epoch: int, in_epoch: int, step: int) -> str:
        """Where a loss failure happened, for its message (``in_epoch``: batches of the epoch done so far, 0 at
        its start and end; ``step``: over the run)."""
        by = f" (by step {step if self.global_steps else in_epoch})" if in_epoch else ""
        return f"in {self.desc} epoch {epoch + 1}{by}"

    def done(self, epochs: int, _steps: int) -> int:
        """Units finished after ``epochs`` epochs and ``steps`` steps (what a resume state records)."""
        return epochs

    def epochs_done(self, done: int) -> int:
        return done


@dataclass
class Steps:
    """``steps`` optimizer steps, each on ``draw(step)`` (from 0), in epochs of ``every`` steps (IRM: batches drawn from
    environments rather than a loader); checks and resume saves happen at those epochs' ends."""

    draw: Callable[[int], Any]
    steps: int
    every: int
    desc: str
    unit = "step"

    @property
    def total(self) -> int:
        return self.steps

    @property
    def epochs(self) -> int:
        return math.ceil(self.steps / self.every)

    def batches(self, epoch: int) -> tuple[Iterable[Any], str, int | None]:
        first, last = epoch * self.every, min((epoch + 1) * self.every, self.steps)
        return ((step, self.draw(step)) for step in range(first, last)), f"{self.desc} steps {first + 1}-{last}", \
            last - first

    def where(self, _epoch: int, _in_epoch: int, step: int) -> str:
        return f"in {self.desc} by step {step}"

    def done(self, _epochs: int, steps: int) -> int:
        return steps

    def epochs_done(self, done: int) -> int:
        return math.ceil(done / self.every)


Plan = Epochs | Steps


def run_training(model: nn.Module, objective: Objective, plan: Plan, optimizer: torch.optim.Optimizer,
                 runtime: Runtime, watch: LossWatch, callbacks: Iterable[Callback] = (),
                 resume: StepState | None = None, generator: torch.Generator | None = None,
                 train_mode: bool = True, parallel: bool = True) -> list[float]:
    """The one training loop: minimise ``objective`` over the batches of ``plan``; return each epoch's mean loss.

    Per batch: the objective's forward and loss, one optimizer step, the running loss kept on the device;
    ``watch`` reads it every :data:`CHECK_EVERY` batches, when a callback says a check is ``due``, and at
    each epoch's end (so no batch waits for the device). ``callbacks`` add selection, mid-epoch checks,
    early stops and bookkeeping. ``parallel``: the objective's ``net`` is
    :func:`training.parallel.data_parallel`'s (``features, logits = net(x)``, DDP-wrapped under ``torchrun``,
    the objective gathering the global batch); False: the model itself, trained whole by every rank.
    With ``resume``, the state (model, optimizer, ``callbacks``' parts and values, random states of the
    global generators and ``generator``) is saved every ``runtime.resume_every`` epochs and at the end
    (or the early stop), and a saved state is continued bit for bit.
    ``train_mode=False`` keeps BatchNorm statistics and dropout as in evaluation.
    """
    callbacks = list(callbacks)
    device = runtime.device
    parts: dict[str, Any] = {"model": model, "optimizer": optimizer}
    for callback in callbacks:
        parts |= callback.parts
    epochs = plan.epochs
    state = load_step(resume, parts, generator, plan.desc, plan.total, plan.unit)
    for callback in callbacks:
        callback.start(state)
    history: list[float] = []
    step, stop = 0, False
    if state:  # a state saved before this loop ran IRM lacks the last four (its "epoch" counts steps)
        history, watch.baseline = list(state.get("history", [])), state.get("loss_baseline")
        step, stop = state.get("step", state["epoch"] if plan.unit == "step" else 0), state.get("stop", False)
    net = data_parallel(model, device) if parallel else model

    def notes() -> str:
        return "".join(callback.note() for callback in callbacks)

    for epoch in range(plan.epochs_done(state["epoch"]) if state else 0, epochs):
        if stop:
            break
        started = time.perf_counter()
        model.train(train_mode)
        total = torch.zeros((), device=device)
        count = 0
        iterable, label, size = plan.batches(epoch)
        batches = together(progress(iterable, desc=label, total=size), plan.where(epoch, 0, step))
        for index, batch in enumerate(batches):
            out = objective(net, batch)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            step += 1
            total += out.loss.detach() * out.weight
            count += out.weight
            for callback in callbacks:
                callback.on_batch(step, out)
            if (index + 1) % CHECK_EVERY == 0 or any([callback.due(step) for callback in callbacks]):
                where = plan.where(epoch, index + 1, step) + notes()
                for callback in callbacks:
                    callback.check(where)
                watch.check(total, count, where)
            stop = any([callback.after_batch(step) for callback in callbacks])
            if stop:
                break
        history.append(watch.check(total, count, plan.where(epoch, 0, step) + notes()))
        for callback in callbacks:
            callback.after_epoch(epoch, history[-1], time.perf_counter() - started)
        last = stop or epoch + 1 == epochs
        if resume is not None and (last or (epoch + 1) % runtime.resume_every == 0):
            plain: dict[str, Any] = {}
            for callback in callbacks:
                plain |= callback.saved()
            save_step(resume, plan.done(epoch + 1, step), last, parts, generator, history=history,
                      loss_baseline=watch.baseline, step=step, stop=stop, **plain)
    return history


def cross_entropy_objective(runtime: Runtime, watch: LossWatch, loss_fn: LossFn = mean_cross_entropy) -> Objective:
    """The classifier objective: ``loss_fn`` of the global batch's logits, labels and indices (under
    ``torchrun`` each rank runs its share, then every rank sees the whole batch's rows, with gradient).
    The first batch gives ``watch`` its limit, :func:`cross_entropy_limit` of the model's classes."""
    device = runtime.device

    def objective(net: nn.Module, batch: Any) -> Step:
        x, y, _a, idx = batch
        x, y = runtime.batch(x), y.to(device, non_blocking=True)
        with runtime.autocast():
            logits = net(x)[1]
        logits, y = all_gather_with_grad(logits.float()), all_gather_cat(y)
        if watch.limit is None:
            watch.limit = cross_entropy_limit(logits.shape[-1])
        return Step(loss_fn(logits, y, all_gather_cat(idx.to(device, non_blocking=True))), len(y))

    return objective


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
    """:func:`run_training` with the cross-entropy objective (or ``loss_fn``) for ``epochs`` over ``loader``;
    returns the mean loss of each epoch, printed as it ends.

    ``on_epoch_end(epoch)`` runs after every epoch; ``stateful`` is what it or ``loss_fn`` keep (saved and
    restored with ``resume``; ``generator`` is the loader's). A loss over :func:`cross_entropy_limit` of the
    model's classes, or one that explodes (:class:`LossWatch`), stops the run with one line naming ``lr_flag``.
    """
    runtime = as_runtime(runtime)
    callbacks: list[Callback] = [EpochLog(desc, epochs), Keep(stateful or {})]
    if on_epoch_end is not None:
        callbacks.append(EachEpoch(on_epoch_end))
    watch = LossWatch(flag=lr_flag)
    return run_training(model, cross_entropy_objective(runtime, watch, loss_fn), Epochs(loader, epochs, desc, desc),
                        optimizer, runtime, watch, callbacks, resume, generator, train_mode)


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
