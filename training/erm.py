"""ERM: cross-entropy training of the reference model (or, with a loss hook, of a baseline) and its checkpoint."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from data import SpuriousDataset
from models.factory import checkpoint_content, model_from_args
from training.loops import LossFn, Stateful, make_optimizer, mean_cross_entropy, train_classifier
from training.samplers import training_loader
from utils.checkpoint import save_checkpoint
from utils.errors import UserError
from utils.run_dir import StepState
from utils.runtime import runtime_from_args


@dataclass
class ErmRun:
    model: nn.Module
    arch_args: dict
    checkpoint: Path
    snapshot: Path | None
    losses: list[float]
    snapshots: dict[int, Path]  # every saved snapshot by epoch (--clusters_auto saves several)


def train_erm(model: nn.Module, train_set: SpuriousDataset, args: argparse.Namespace, device: torch.device,
              generator: torch.Generator, cells: torch.Tensor | None = None,
              snapshot_to: Path | dict[int, Path] | None = None, arch_args: dict | None = None,
              on_epoch_end: Callable[[int], None] | None = None, loss_fn: LossFn = mean_cross_entropy,
              epochs: int | None = None, desc: str = "ERM", resume: StepState | None = None,
              stateful: dict[str, Stateful] | None = None) -> list[float]:
    """Train ``model`` in place with cross-entropy on the whole training split; return epoch losses.

    With ``cells`` (e.g. true group ids for the oracle) batches are balanced over them. With
    ``snapshot_to`` and ``--cluster_epoch E``, the model after epoch E is checkpointed there: an
    early ERM model whose representation still clusters by the spurious attribute (a dict
    ``{epoch: path}`` saves several, the candidates of ``--clusters_auto``).
    ``on_epoch_end(epoch)`` runs after every epoch (e.g. model selection); ``loss_fn`` replaces the
    mean cross-entropy (per-sample weights, group losses); ``epochs`` overrides ``--epochs``.
    ``resume`` and ``stateful``: per-epoch saving and continuing (:func:`training.loops.train_classifier`).
    """
    runtime = runtime_from_args(args, device)
    runtime.place(model)
    loader = training_loader(train_set, args.batch_size, generator, args.num_workers, cells)
    optimizer = make_optimizer(model.parameters(), args.optimizer, args.lr, args.weight_decay)

    snapshots = snapshot_to if isinstance(snapshot_to, dict) else \
        ({} if snapshot_to is None else {args.cluster_epoch: snapshot_to})

    def after_epoch(epoch: int) -> None:
        if epoch + 1 in snapshots:
            save_checkpoint(snapshots[epoch + 1], checkpoint_content(model, args, arch_args, train_set.n_classes,
                                                                     epoch=epoch + 1))
        if on_epoch_end is not None:
            on_epoch_end(epoch)

    return train_classifier(model, loader, optimizer, runtime, args.epochs if epochs is None else epochs, desc,
                            on_epoch_end=after_epoch,
                            loss_fn=loss_fn, resume=resume, generator=generator, stateful=stateful)


def snapshot_path(out_dir: Path, args: argparse.Namespace) -> Path | None:
    """Where the ``--cluster_epoch`` snapshot of the ERM model goes (None for the final model)."""
    if args.cluster_epoch == args.epochs:
        return None
    if args.cluster_epoch > args.epochs:
        raise UserError(f"--cluster_epoch {args.cluster_epoch} is after the last ERM epoch (--epochs {args.epochs})")
    return Path(out_dir) / f"erm_epoch{args.cluster_epoch}.pt"


def snapshot_epochs(args: argparse.Namespace) -> list[int]:
    """Epochs before the last whose ERM model is saved: ``--cluster_epoch``, and with ``--clusters_auto``
    also 1, a quarter and a half of ``--epochs`` (the snapshots its label-free choice scores)."""
    epochs = {args.cluster_epoch}
    if getattr(args, "clusters_auto", False):
        epochs |= {1, args.epochs // 4, args.epochs // 2}
    return sorted(e for e in epochs if 1 <= e < args.epochs)


def train_and_save_erm(args: argparse.Namespace, train_set: SpuriousDataset, device: torch.device,
                       generator: torch.Generator, out_dir: Path, resume: StepState | None = None) -> ErmRun:
    """A fresh ``args.arch`` model trained with ERM, saved as ``<out_dir>/erm.pt`` (plus the
    ``--cluster_epoch`` snapshot when that is not the last epoch, and those of :func:`snapshot_epochs`)."""
    model, arch_args = model_from_args(args, train_set)
    snapshot = snapshot_path(out_dir, args)
    snapshots = {e: Path(out_dir) / f"erm_epoch{e}.pt" for e in snapshot_epochs(args)}
    losses = train_erm(model, train_set, args, device, generator, snapshot_to=snapshots, arch_args=arch_args,
                       resume=resume)
    ckpt_path = save_checkpoint(Path(out_dir) / "erm.pt", checkpoint_content(model, args, arch_args,
                                                                              train_set.n_classes))
    return ErmRun(model, arch_args, ckpt_path, snapshot, losses, snapshots)

