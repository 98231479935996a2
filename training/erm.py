"""ERM: plain cross-entropy training of the reference model, its checkpoint and its evaluation."""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from data import SpuriousDataset, build_splits
from training.experiment import checkpoint_content, evaluate_model, model_from_args, results_payload
from training.loops import make_optimizer, train_classifier
from training.samplers import training_loader
from utils.checkpoint import save_checkpoint
from utils.errors import UserError
from utils.results import format_group_table, format_split_table, prepare_out_dir, write_results
from utils.runtime import resolve_device, seed_everything


@dataclass
class ErmRun:
    model: nn.Module
    arch_args: dict
    checkpoint: Path
    snapshot: Path | None
    losses: list[float]


def train_erm(model: nn.Module, train_set: SpuriousDataset, args: argparse.Namespace, device: torch.device,
              generator: torch.Generator, cells: torch.Tensor | None = None,
              snapshot_to: Path | None = None, arch_args: dict | None = None,
              on_epoch_end: Callable[[int], None] | None = None) -> list[float]:
    """Train ``model`` in place with cross-entropy on the whole training split; return epoch losses.

    With ``cells`` (e.g. true group ids for the oracle) batches are balanced over them. With
    ``snapshot_to`` and ``--cluster_epoch E``, the model after epoch E is checkpointed there: an
    early ERM model whose representation still clusters by the spurious attribute.
    ``on_epoch_end(epoch)`` runs after every epoch (e.g. model selection).
    """
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    loader = training_loader(train_set, args.batch_size, generator, args.num_workers, cells)
    optimizer = make_optimizer(model.parameters(), args.optimizer, args.lr, args.weight_decay)

    def after_epoch(epoch: int) -> None:
        if snapshot_to is not None and epoch + 1 == args.cluster_epoch:
            save_checkpoint(snapshot_to, checkpoint_content(model, args, arch_args, train_set.n_classes,
                                                            epoch=epoch + 1))
        if on_epoch_end is not None:
            on_epoch_end(epoch)

    return train_classifier(model, loader, optimizer, device, args.epochs, "ERM", amp=args.amp,
                            channels_last=args.channels_last, on_epoch_end=after_epoch)


def snapshot_path(out_dir: Path, args: argparse.Namespace) -> Path | None:
    """Where the ``--cluster_epoch`` snapshot of the ERM model goes (None for the final model)."""
    if args.cluster_epoch == args.epochs:
        return None
    if args.cluster_epoch > args.epochs:
        raise UserError(f"--cluster_epoch {args.cluster_epoch} is after the last ERM epoch (--epochs {args.epochs})")
    return Path(out_dir) / f"erm_epoch{args.cluster_epoch}.pt"


def train_and_save_erm(args: argparse.Namespace, train_set: SpuriousDataset, device: torch.device,
                       generator: torch.Generator, out_dir: Path) -> ErmRun:
    """A fresh ``args.arch`` model trained with ERM, saved as ``<out_dir>/erm.pt`` (plus the
    ``--cluster_epoch`` snapshot when that is not the last epoch)."""
    model, arch_args = model_from_args(args, train_set)
    snapshot = snapshot_path(out_dir, args)
    losses = train_erm(model, train_set, args, device, generator, snapshot_to=snapshot, arch_args=arch_args)
    ckpt_path = save_checkpoint(Path(out_dir) / "erm.pt", checkpoint_content(model, args, arch_args,
                                                                              train_set.n_classes))
    return ErmRun(model, arch_args, ckpt_path, snapshot, losses)


def run(args: argparse.Namespace) -> dict:
    """``--mode erm``: train, save ``<out_dir>/erm.pt``, evaluate val/test, write results.json."""
    started = time.time()
    out_dir = prepare_out_dir(args.out_dir, args.overwrite)
    device = resolve_device(args.device)
    generator = seed_everything(args.seed)
    splits = build_splits(args)
    erm = train_and_save_erm(args, splits["train"], device, generator, out_dir)
    model, ckpt_path, losses = erm.model, erm.checkpoint, erm.losses
    metrics = evaluate_model(model, splits, args, device)
    payload = results_payload("erm", args, started, metrics, checkpoint=str(ckpt_path), train_loss=losses)
    path = write_results(out_dir, payload)
    print(format_split_table({"ERM": metrics}, title=f"ERM on {args.data} (seed {args.seed})"))
    print(format_group_table(metrics["test"], "test"))
    print(f"checkpoint: {ckpt_path}\nresults:    {path}")
    return payload
