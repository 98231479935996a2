"""PruSC step 2 (and the retrain-only ablation): fine-tune with the mask fixed, select without group labels.

Recipe (``--retrain_split``, ``--retrain_scope``, ``--retrain_balance``, ``--retrain_ep``, ``--lr_main``):

- data: the validation split (as the reference code did) or the training split. With ``val``, a
  seeded half of it (stratified by cell) is used for fine-tuning and the other half for model
  selection, so selection never scores samples the model was fitted on;
- batches balanced over (label, cluster) cells (``cluster``), over labels (``class``), or plain;
- parameters: every weight (``all``) or only the classifier head (``head``); mask logits stay fixed;
- selection: after every epoch (and before the first) the *worst-cluster accuracy* on the
  selection samples is computed (accuracy of each (label, cluster) cell, minimum over cells with
  at least ``--min_cell_size`` samples); the best epoch is kept. ``--selection oracle`` uses the
  true worst-group accuracy instead and is labelled as using group labels in results.json.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from torch import nn

from data import SpuriousDataset
from models.masking import mask_parameters
from training.loops import BestEpoch, make_optimizer, predict_logits, train_classifier
from training.samplers import training_loader
from utils.metrics import compute_metrics
from utils.run_dir import StepState
from utils.runtime import make_loader

SELECTION_LABELS = {
    "worst_cluster": "worst-cluster val accuracy (no group labels)",
    "oracle": "ORACLE: true worst-group val accuracy (uses group labels)",
}


@dataclass
class RetrainData:
    fit: SpuriousDataset
    fit_cells: torch.Tensor
    select: SpuriousDataset
    select_cells: torch.Tensor


def cells_of(y: torch.Tensor, clusters: torch.Tensor) -> torch.Tensor:
    """One id per (label, cluster) pair."""
    return y * (int(clusters.max()) + 1) + clusters


def stratified_halves(cells: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted positions of two halves of a split, each cell split in half (the first half gets the odd one)."""
    gen = torch.Generator().manual_seed(seed)
    first, second = [], []
    for cell in torch.unique(cells):
        members = torch.nonzero(cells == cell).flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        half = (len(members) + 1) // 2
        first.append(members[:half])
        second.append(members[half:])
    return torch.cat(first).sort().values, torch.cat(second).sort().values


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


def worst_cell_accuracy(preds: torch.Tensor, y: torch.Tensor, cells: torch.Tensor, min_size: int = 1) -> float:
    """Minimum accuracy over cells holding at least ``min_size`` samples (all cells if none do)."""
    accs, fallback = [], []
    for cell in torch.unique(cells):
        member = cells == cell
        acc = float((preds[member] == y[member]).float().mean())
        fallback.append(acc)
        if int(member.sum()) >= min_size:
            accs.append(acc)
    return min(accs or fallback)


def selection_score(model: nn.Module, dataset: SpuriousDataset, cells: torch.Tensor, args: argparse.Namespace,
                    device: torch.device) -> float:
    """The ``--selection`` score of ``model`` on ``dataset``: worst-cell accuracy over ``cells``
    (e.g. (label, cluster) pairs; no group labels), or with ``oracle`` the true worst-group accuracy."""
    loader = make_loader(dataset, args.eval_batch_size, num_workers=args.num_workers)
    preds = predict_logits(model, loader, device, amp=args.amp, desc="selection").argmax(1)
    if args.selection == "oracle":
        return compute_metrics(preds, dataset.y, dataset.a)["worst_group_acc"]
    return worst_cell_accuracy(preds, dataset.y, cells, args.min_cell_size)


def retrain(model: nn.Module, data: RetrainData, args: argparse.Namespace, device: torch.device,
            generator: torch.Generator, resume: StepState | None = None) -> dict:
    """Fine-tune ``model`` in place (mask fixed) and restore the best epoch by the selection score;
    with ``resume``, saved after every epoch and continued when a saved state exists."""
    logits = {id(p) for p in mask_parameters(model)}
    scope = model.head.parameters() if args.retrain_scope == "head" else model.parameters()
    trainable = [p for p in scope if id(p) not in logits]
    trainable_ids = {id(p) for p in trainable}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable_ids)
    best = BestEpoch(model)
    best.record(selection_score(model, data.select, data.select_cells, args, device), 0)

    def select(epoch: int) -> None:
        best.record(selection_score(model, data.select, data.select_cells, args, device), epoch + 1)

    losses: list[float] = []
    if args.retrain_ep > 0:
        cells = {"cluster": data.fit_cells, "class": data.fit.y, "none": None}[args.retrain_balance]
        loader = training_loader(data.fit, args.batch_size, generator, args.num_workers, cells)
        optimizer = make_optimizer(trainable, args.optimizer, args.lr_main, args.weight_decay)
        losses = train_classifier(model, loader, optimizer, device, args.retrain_ep, "retrain", amp=args.amp,
                                  on_epoch_end=select, train_mode=args.retrain_scope == "all", resume=resume,
                                  generator=generator, stateful={"best": best}, lr_flag="--lr_main")
    best.restore()
    for p in model.parameters():
        p.requires_grad_(True)
    return {"selection": SELECTION_LABELS[args.selection], "best_epoch": best.epoch,
            "selection_scores": best.scores, "train_loss": losses,
            "fit_size": len(data.fit), "select_size": len(data.select)}
