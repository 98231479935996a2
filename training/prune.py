"""PruSC step 1: learn a binary weight mask over the frozen ERM network.

Only mask logits are optimised; weights and BatchNorm statistics stay as trained (the network
runs in eval mode). Per batch, in one forward pass of the masked network:

    loss = CE + lambda_sparse * S + lambda_con_prune * L_con

with ``S = REFERENCE_WEIGHTS * (kept share)`` (``--sparsity_penalty mean_keep``, the default) or
``S = sum of the mask logits`` (``sum_logits``, the original code's form: every logit gets the same
gradient ``lambda_sparse``, whatever the network's size; ``--recipe original`` uses it)

where ``L_con`` (training/contrastive.py) uses the L2-normalised penultimate features, the
labels and the representation clusters. Batches are balanced over (label, cluster) cells.

Three choices keep the result independent of the network's size and of the number of steps,
so a default run does not collapse a network (a short run with a fixed Adam rate used to cut
ResNets to a few percent of their weights, deleting whole layers):

- size: the sparsity term is the *share* of weights kept (soft, sum of keep probabilities over
  the number of masked weights), scaled by :data:`REFERENCE_WEIGHTS` (a ResNet-50's conv and head
  weights). ``--lambda_sparse`` is therefore a penalty per weight of a ResNet-50, as in the
  reference code's ResNet-50 runs, and asks for the same trade-off at any size: the CE gradient
  of one weight's logit shrinks as the network grows, and so does this term's;
- steps: Adam moves a logit by about its learning rate per step whenever the gradient keeps its
  sign, so with a fixed rate the density reached follows the number of steps. By default
  (``--lr_prune auto``) the rate is ``2 * mask_init / total steps``: a logit pushed the same way
  for half of the run crosses zero, in a run of any length;
- safety: the sparsity term stops acting on a layer whose density is at or below
  ``--min_layer_density``, and the mask is checked ``--prune_checks`` times during the run
  (plus the dense start) with the retraining's selection rule (worst-cluster accuracy on the
  selection half of val, no group labels). The kept mask is the sparsest one scoring within
  ``--prune_tolerance`` of the best check; pruning stops early once ``PATIENCE`` checks in a
  row fall below that band. A mask that hurts is thus never kept: the dense start is a candidate.

Each check writes the current masked model atomically (``save_to``), so a NaN stop keeps the last good one.
The loss is read back from the device only at checks (every ``CHECK_EVERY`` steps and at epoch end).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from data import SpuriousDataset
from models.masking import attach_masks, density_report, iter_masks, mask_parameters, set_mask_mode
from training.contrastive import cluster_contrastive_loss
from training.loops import (INIT_FACTOR, Callback, Epochs, LossWatch, Objective, Step, check_contrastive,
                            cross_entropy_limit, run_training)
from utils.distributed import all_gather_cat, all_gather_with_grad
from training.selection import cells_of, sparsest_within
from training.samplers import training_loader
from utils.checkpoint import save_checkpoint
from utils.cli import non_negative, positive_float, positive_int
from utils.errors import UserError
from utils.options import option
from utils.run_dir import StepState
from utils.runtime import Runtime, as_runtime

REFERENCE_WEIGHTS = 23_459_008  # Conv2d + Linear weights of a two-class torchvision ResNet-50
PATIENCE = 3
LOSS_TERMS = ("ce", "con", "sparse")
PENALTIES = ("mean_keep", "sum_logits")


@dataclass(frozen=True)
class PruneConfig:
    """The mask-learning settings (PruSC's pruning flags, added to the parser by methods/prusc.py)."""

    pruning_ep: int = option(20, "mask-learning epochs", type=non_negative(int))
    lr_prune: float | None = option(None, "Adam learning rate of mask logits (None: 2 * mask_init / total pruning "
                                          "steps, so the density reached does not follow the number of steps)",
                                    type=non_negative(float))
    lambda_sparse: float = option(5e-8, "sparsity penalty per weight of a ResNet-50-sized network: the term is "
                                        "lambda * 23.46M * (share of weights kept), the same trade-off at any "
                                        "network size", type=non_negative(float))
    sparsity_penalty: str = option("mean_keep", "mean_keep: lambda * 23.46M * (share of weights kept); sum_logits: "
                                                "lambda * sum of the mask logits (the original code's form)",
                                   choices=list(PENALTIES))
    min_layer_density: float = option(0.1, "the sparsity term stops pushing a layer at or below this density",
                                      type=non_negative(float))
    prune_checks: int = option(10, "how often the mask is scored during pruning (worst-cluster val accuracy, or "
                                   "--selection oracle); the sparsest mask within --prune_tolerance of the best is "
                                   "kept", type=positive_int)
    prune_tolerance: float = option(0.02, "accuracy a sparser mask may lose against the best-scoring one and still "
                                          "be kept", type=non_negative(float))
    lambda_con_prune: float = option(1.0, "weight of the cluster-contrastive loss", type=non_negative(float))
    temperature: float = option(0.2, "contrastive temperature", type=positive_float)
    prune_layers: str = option("all", "all, head, or N (the last N Conv2d/Linear layers)")
    mask_init: float = option(3.0, "initial mask logit (> 0: all weights kept)", type=float)
    mask_temperature: float = option(1.0, "Gumbel-sigmoid temperature", type=positive_float)


def prune_learning_rate(prune: PruneConfig, total_steps: int) -> float:
    """``--lr_prune``, or with ``auto`` the rate that lets a steadily pushed logit cross zero halfway."""
    if prune.lr_prune is not None:
        return prune.lr_prune
    return 2 * prune.mask_init / max(total_steps, 1)


def kept_share(model: nn.Module, floor: float) -> torch.Tensor:
    """Soft share of weights kept over all masked weights, counting only layers denser than ``floor``."""
    kept: torch.Tensor | float = 0.0
    total = 0
    for _, mask in iter_masks(model):
        total += mask.logits.numel()
        dense_enough = ((mask.logits >= 0).float().mean() > floor).float()  # 0/1 on the device: no host sync
        kept = kept + mask.keep_probability().sum() * dense_enough
    return torch.as_tensor(kept) / max(total, 1)


def logit_sum(model: nn.Module, floor: float) -> torch.Tensor:
    """Sum of the mask logits over the layers denser than ``floor`` (the original code's penalty)."""
    total: torch.Tensor | float = 0.0
    for _, mask in iter_masks(model):
        dense_enough = ((mask.logits >= 0).float().mean() > floor).float()
        total = total + mask.logits.sum() * dense_enough
    return torch.as_tensor(total)


def sparsity_term(model: nn.Module, penalty: str, floor: float) -> torch.Tensor:
    """The term ``--lambda_sparse`` multiplies, in the form ``--sparsity_penalty`` names."""
    if penalty == "sum_logits":
        return logit_sum(model, floor)
    if penalty == "mean_keep":
        return REFERENCE_WEIGHTS * kept_share(model, floor)
    raise ValueError(f"sparsity penalty must be one of {PENALTIES}, got {penalty!r}")


def _score(score: Callable[[nn.Module], float] | None, model: nn.Module) -> float:
    if score is None:
        return 0.0
    with torch.no_grad():
        return float(score(model))


def prusc_objective(model: nn.Module, runtime: Runtime, clusters: torch.Tensor, prune: PruneConfig) -> Objective:
    """PruSC's objective on the mask logits of ``model`` (the module docstring), with its three terms as
    ``terms``; the losses of the whole global batch on every rank (rows of all ranks, with gradient)."""
    device = runtime.device

    def objective(net: nn.Module, batch: Any) -> Step:
        x, y, _a, idx = batch
        x, y = runtime.batch(x), y.to(device)
        with runtime.autocast():
            feats, scores = net(x)
        feats, scores = all_gather_with_grad(feats.float()), all_gather_with_grad(scores.float())
        y, idx = all_gather_cat(y), all_gather_cat(idx.to(device))
        ce = nn.functional.cross_entropy(scores, y)
        con = cluster_contrastive_loss(nn.functional.normalize(feats, dim=1), y, clusters[idx], prune.temperature)
        sparse = sparsity_term(model, prune.sparsity_penalty, prune.min_layer_density)
        loss = ce + prune.lambda_sparse * sparse + prune.lambda_con_prune * con
        return Step(loss, 1, torch.stack([ce, con, sparse]).detach())

    return objective


class MaskChecks(Callback):
    """The mask checks of pruning: every ``every`` steps (and at the start) the fixed mask's density and
    score are recorded, its binary masks kept while it may be chosen, and it is saved when it is the one
    :func:`~training.selection.sparsest_within` would keep; training stops once ``PATIENCE`` checks in a row
    fall below the tolerance band. Between checks the loss terms add up on the device."""

    def __init__(self, model: nn.Module, prune: PruneConfig, batch_size: int, every: int, total_steps: int,
                 steps_per_epoch: int, device: torch.device, score: Callable[[nn.Module], float] | None,
                 save_to: Path | None, checkpoint: Callable[[nn.Module], dict[str, Any]] | None) -> None:
        self.model, self.prune, self.batch_size = model, prune, batch_size
        self.every, self.total_steps, self.steps_per_epoch = every, total_steps, steps_per_epoch
        self.device, self.score, self.save_to, self.checkpoint = device, score, save_to, checkpoint
        self.logits = mask_parameters(model)
        self.checks: list[dict[str, float]] = []
        self.candidates: dict[int, list[torch.Tensor]] = {}  # check index -> its binary masks, while in the band
        self.sums = torch.zeros(len(LOSS_TERMS), device=device)  # loss terms since the last check
        self.n = 0

    def start(self, state: dict[str, Any] | None) -> None:
        if state is None:
            self.record(0, torch.zeros(len(LOSS_TERMS)), 0)
            return
        self.checks.extend(state["checks"])
        self.candidates.update({int(k): list(v) for k, v in state["candidates"].items()})
        self.sums, self.n = state["sums"].to(self.device), state["n"]

    def saved(self) -> dict[str, Any]:
        return {"n": self.n, "sums": self.sums, "checks": self.checks, "candidates": self.candidates}

    def on_batch(self, step: int, out: Step) -> None:
        self.sums += out.terms  # read only at the next check
        self.n += 1

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.total_steps

    def check(self, where: str) -> None:
        if self.prune.lambda_con_prune > 0:
            check_contrastive(self.batch_size, self.prune.temperature, where, float(self.sums[1]) / max(self.n, 1))

    def after_batch(self, step: int) -> bool:
        if not self.due(step):
            return False
        stop = self.record(step, self.sums, self.n)
        self.sums, self.n = torch.zeros(len(LOSS_TERMS), device=self.device), 0
        if stop:
            print(f"pruning stopped early at step {step}: the score fell below the best for {PATIENCE} checks")
        return stop

    def note(self) -> str:
        return last_good(self.save_to)

    def record(self, step: int, sums: torch.Tensor, n: int) -> bool:
        """Record the fixed mask's density and score, keep its masks while it may be chosen; True to stop early."""
        model, tolerance = self.model, self.prune.prune_tolerance
        set_mask_mode(model, "fixed")
        means = (sums / max(n, 1)).tolist()
        record = {"step": step, "epoch": step / self.steps_per_epoch} | dict(zip(LOSS_TERMS, means))
        record |= {"density": density_report(model, warn=False)["overall"], "score": _score(self.score, model)}
        checks = self.checks
        checks.append(record)
        set_mask_mode(model, "sample")
        best = max(c["score"] for c in checks)
        self.candidates[len(checks) - 1] = [p.detach() >= 0 for p in self.logits]
        for index in [i for i in self.candidates if checks[i]["score"] < best - tolerance]:
            del self.candidates[index]  # the best score never falls, so it can never be chosen again
        if sparsest_within(checks, tolerance) == len(checks) - 1 and self.save_to is not None \
                and self.checkpoint is not None:
            set_mask_mode(model, "fixed")
            save_checkpoint(self.save_to, self.checkpoint(model))
            set_mask_mode(model, "sample")
        print(f"prune step {step}/{self.total_steps}: ce {record['ce']:.4f}  con {record['con']:.4f}  "
              f"density {record['density']:.4f}  score {record['score']:.4f}")
        recent = checks[-PATIENCE:]
        return len(recent) == PATIENCE and all(c["score"] < best - tolerance for c in recent)


def learn_masks(model: nn.Module, train_set: SpuriousDataset, clusters: torch.Tensor, prune: PruneConfig,
                batch_size: int, runtime: Runtime | torch.device, generator: torch.Generator,
                save_to: Path | None = None, checkpoint: Callable[[nn.Module], dict[str, Any]] | None = None,
                score: Callable[[nn.Module], float] | None = None,
                resume: StepState | None = None) -> list[dict[str, float]]:
    """Attach masks to ``model`` and learn them for up to ``--pruning_ep`` epochs; return one record per check.

    ``checkpoint(model)`` is what ``save_to`` gets at each check that may be kept. ``score(model)`` rates
    the masked model (higher is better, e.g. worst-cluster val accuracy);
    without it every check scores 0, so the sparsest (usually the last) mask is kept. The model
    ends with the kept mask, fixed (deterministic). With ``resume`` the state (mask logits,
    optimizer, checks, random states) is saved after every epoch and a saved state is continued.
    The loop is :func:`training.loops.run_training` with :func:`prusc_objective` and :class:`MaskChecks`.
    """
    attach_masks(model, prune.prune_layers, prune.mask_init, prune.mask_temperature)
    runtime = as_runtime(runtime).for_pruning()
    device = runtime.device
    runtime.place(model).eval()
    logits = mask_parameters(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in logits:
        p.requires_grad_(True)
    loader = training_loader(train_set, batch_size, generator, runtime.num_workers, cells_of(train_set.y, clusters))
    total_steps = prune.pruning_ep * len(loader)
    optimizer = torch.optim.Adam(logits, lr=prune_learning_rate(prune, total_steps))
    every = max(1, math.ceil(total_steps / max(prune.prune_checks, 1)))
    set_mask_mode(model, "sample")
    loss_limit = (cross_entropy_limit(train_set.n_classes) + prune.lambda_sparse * REFERENCE_WEIGHTS
                  + prune.lambda_con_prune * INIT_FACTOR * math.log(max(batch_size, 2)))
    checks = MaskChecks(model, prune, batch_size, every, total_steps, len(loader), device, score, save_to, checkpoint)
    # under torchrun: DDP, which synchronises the mask logits' gradients
    run_training(model, prusc_objective(model, runtime, clusters.to(device), prune),
                 Epochs(loader, prune.pruning_ep, "pruning", "prune", global_steps=True), optimizer, runtime,
                 LossWatch(limit=loss_limit, flag="--lr_prune"), [checks], resume, generator, train_mode=False)
    chosen = sparsest_within(checks.checks, prune.prune_tolerance)
    record = checks.checks[chosen]
    record["kept"] = True
    with torch.no_grad():
        for p, keep in zip(logits, checks.candidates[chosen]):
            p.copy_(torch.where(keep.to(p.device), p.abs().clamp_min(1e-3), -p.abs().clamp_min(1e-3)))
    print(f"kept the mask of step {record['step']} (density {record['density']:.4f}, score {record['score']:.4f})")
    if record["density"] == 0:
        raise UserError(f"pruning removed every weight (density 0) by step {record['step']}: the model is "
                        f"empty; raise --mask_temperature (now {prune.mask_temperature:g}) or lower --lambda_sparse "
                        f"(now {prune.lambda_sparse:g})")
    set_mask_mode(model, "fixed")
    for p in model.parameters():
        p.requires_grad_(True)
    return checks.checks


def last_good(save_to: Path | None) -> str:
    """The note a loss failure adds: where the last good pruned checkpoint is."""
    return f" (last good checkpoint: {save_to})" if save_to is not None and save_to.exists() else ""
