"""PruSC step 2 (and the retrain-only ablation): fine-tune with the mask fixed, select without group labels.

Recipe (``--retrain_split``, ``--retrain_scope``, ``--retrain_balance``, ``--retrain_ep``, ``--lr_main``):

- data: the validation split (as the reference code did) or the training split. With ``val``, a
  seeded half of it (stratified by cell) is used for fine-tuning and the other half for model
  selection, so selection never scores samples the model was fitted on;
- batches balanced over (label, cluster) cells (``cluster``), over labels (``class``), or plain;
- parameters: every weight (``all``) or only the classifier head (``head``); mask logits stay fixed;
- selection: after every epoch (and before the first) the method's selector (training/selection.py:
  the worst-cluster accuracy of ``--selection worst_cluster``, or the oracle's true worst-group
  accuracy) scores the model on the selection samples; the best epoch is kept.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from data import SpuriousDataset
from models.masking import mask_parameters
from training.erm import TrainConfig
from training.loops import make_optimizer, train_classifier
from training.samplers import training_loader
from training.selection import BestEpoch, Selector, cells_of, stratified_halves
from utils.cli import non_negative
from utils.options import option
from utils.run_dir import StepState
from utils.runtime import Runtime, as_runtime


@dataclass(frozen=True)
class RetrainConfig:
    """The retraining recipe of PruSC and retrain-only (the module docstring)."""

    retrain_ep: int = option(20, "retraining epochs (0: none)", type=non_negative(int))
    lr_main: float = option(1e-3, "retraining learning rate", type=non_negative(float))
    retrain_split: str = option("val", "data for retraining (val: half fits, half selects)", choices=["val", "train"])
    retrain_scope: str = option("all", "weights fine-tuned", choices=["all", "head"])
    retrain_balance: str = option("cluster", "balance retraining batches over (label, cluster) cells, labels, or not",
                                  choices=["cluster", "class", "none"])


@dataclass
class RetrainData:
    fit: SpuriousDataset
    fit_cells: torch.Tensor
    select: SpuriousDataset
    select_cells: torch.Tensor


def retrain_data(splits: dict[str, SpuriousDataset], train_clusters: torch.Tensor, val_clusters: torch.Tensor,
                 split: str, seed: int) -> RetrainData:
    """Fitting and selection samples with their cells (see the module docstring)."""
    val = splits["val"]
    val_cells = cells_of(val.y, val_clusters)
    if split == "train":
        train = splits["train"]
        return RetrainData(train, cells_of(train.y, train_clusters), val, val_cells)
    fit_idx, select_idx = stratified_halves(val_cells, seed)
    return RetrainData(val.subset(fit_idx), val_cells[fit_idx], val.subset(select_idx), val_cells[select_idx])


def retrain(model: nn.Module, data: RetrainData, selector: Selector, recipe: RetrainConfig, train: TrainConfig,
            runtime: Runtime | torch.device, generator: torch.Generator, resume: StepState | None = None) -> dict:
    """Fine-tune ``model`` in place (mask fixed) and restore the epoch ``selector`` scores best on the
    selection samples (batch size, optimizer and weight decay from ``train``); with ``resume``, saved after
    every epoch and continued when a saved state exists."""
    runtime = as_runtime(runtime)
    logits = {id(p) for p in mask_parameters(model)}
    scope = model.head.parameters() if recipe.retrain_scope == "head" else model.parameters()
    trainable = [p for p in scope if id(p) not in logits]
    trainable_ids = {id(p) for p in trainable}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable_ids)
    best = BestEpoch(model)

    def select(epoch: int) -> None:  # epoch -1: before the first
        best.record(selector.score_model(model, data.select, data.select_cells, runtime), epoch + 1)

    select(-1)
    losses: list[float] = []
    if recipe.retrain_ep > 0:
        cells = {"cluster": data.fit_cells, "class": data.fit.y, "none": None}[recipe.retrain_balance]
        loader = training_loader(data.fit, train.batch_size, generator, runtime.num_workers, cells)
        optimizer = make_optimizer(trainable, train.optimizer, recipe.lr_main, train.weight_decay)
        losses = train_classifier(model, loader, optimizer, runtime, recipe.retrain_ep, "retrain",
                                  on_epoch_end=select, train_mode=recipe.retrain_scope == "all", resume=resume,
                                  generator=generator, stateful={"best": best}, lr_flag="--lr_main")
    best.restore()
    for p in model.parameters():
        p.requires_grad_(True)
    return {"best_epoch": best.epoch, "selection_scores": best.scores, "train_loss": losses,
            "fit_size": len(data.fit), "select_size": len(data.select)}
