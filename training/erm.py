"""ERM: cross-entropy training of the reference model (or, with a loss hook, of a baseline) and its checkpoint."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from data import SpuriousDataset
from models.factory import ModelConfig, checkpoint_content, model_from_args
from training.loops import LossFn, Stateful, make_optimizer, mean_cross_entropy, train_classifier
from training.samplers import training_loader
from utils.checkpoint import save_checkpoint
from utils.cli import non_negative, positive_int
from utils.errors import UserError
from utils.options import option
from utils.run_dir import StepState
from utils.runtime import Runtime, as_runtime


@dataclass(frozen=True)
class TrainConfig:
    """How models are trained (ERM, and the loops of the baselines and of retraining that share its settings)."""

    epochs: int = option(30, "ERM epochs", type=positive_int)
    lr: float = option(1e-3, "ERM learning rate", type=non_negative(float))
    optimizer: str = option("adam", "optimizer of every training loop but mask learning", choices=["adam", "sgd"])
    weight_decay: float = option(1e-4, "weight decay of those loops", type=non_negative(float))
    batch_size: int = option(64, "training batch size", type=positive_int)


@dataclass
class ErmRun:
    model: nn.Module
    arch_args: dict
    checkpoint: Path
    snapshot: Path | None
    losses: list[float]
    snapshots: dict[int, Path]  # every saved snapshot by epoch (--clusters_auto saves several)


def train_erm(model: nn.Module, train_set: SpuriousDataset, train: TrainConfig, runtime: Runtime | torch.device,
              generator: torch.Generator, cells: torch.Tensor | None = None,
              snapshots: dict[int, Path] | None = None,
              checkpoint: Callable[[nn.Module, int], dict[str, Any]] | None = None,
              on_epoch_end: Callable[[int], None] | None = None, loss_fn: LossFn = mean_cross_entropy,
              epochs: int | None = None, desc: str = "ERM", resume: StepState | None = None,
              stateful: dict[str, Stateful] | None = None) -> list[float]:
    """Train ``model`` in place with cross-entropy on the whole training split; return epoch losses.

    With ``cells`` (e.g. true group ids for the oracle) batches are balanced over them. ``snapshots``
    (``{epoch: path}``) saves ``checkpoint(model, epoch)`` after those epochs: the ``--cluster_epoch``
    model, an early ERM model whose representation still clusters by the spurious attribute, and the
    candidates of ``--clusters_auto``.
    ``on_epoch_end(epoch)`` runs after every epoch (e.g. model selection); ``loss_fn`` replaces the
    mean cross-entropy (per-sample weights, group losses); ``epochs`` overrides ``--epochs``.
    ``resume`` and ``stateful``: per-epoch saving and continuing (:func:`training.loops.train_classifier`).
    """
    runtime = as_runtime(runtime)
    runtime.place(model)
    loader = training_loader(train_set, train.batch_size, generator, runtime.num_workers, cells)
    optimizer = make_optimizer(model.parameters(), train.optimizer, train.lr, train.weight_decay)
    snapshots = snapshots or {}

    def after_epoch(epoch: int) -> None:
        if epoch + 1 in snapshots and checkpoint is not None:
            save_checkpoint(snapshots[epoch + 1], checkpoint(model, epoch + 1))
        if on_epoch_end is not None:
            on_epoch_end(epoch)

    return train_classifier(model, loader, optimizer, runtime, train.epochs if epochs is None else epochs, desc,
                            on_epoch_end=after_epoch,
                            loss_fn=loss_fn, resume=resume, generator=generator, stateful=stateful)


def snapshot_path(out_dir: Path, cluster_epoch: int, epochs: int) -> Path | None:
    """Where the ``--cluster_epoch`` snapshot of the ERM model goes (None for the final model)."""
    if cluster_epoch == epochs:
        return None
    if cluster_epoch > epochs:
        raise UserError(f"--cluster_epoch {cluster_epoch} is after the last ERM epoch (--epochs {epochs})")
    return Path(out_dir) / f"erm_epoch{cluster_epoch}.pt"


def snapshot_epochs(cluster_epoch: int, epochs: int, clusters_auto: bool) -> list[int]:
    """Epochs before the last whose ERM model is saved: ``--cluster_epoch``, and with ``--clusters_auto``
    also 1, a quarter and a half of ``--epochs`` (the snapshots its label-free choice scores)."""
    chosen = {cluster_epoch}
    if clusters_auto:
        chosen |= {1, epochs // 4, epochs // 2}
    return sorted(e for e in chosen if 1 <= e < epochs)


def train_and_save_erm(settings: ModelConfig, train: TrainConfig, runtime: Runtime, train_set: SpuriousDataset,
                       generator: torch.Generator, out_dir: Path, cluster_epoch: int, clusters_auto: bool,
                       recorded: dict[str, Any], resume: StepState | None = None) -> ErmRun:
    """A fresh ``settings.arch`` model trained with ERM, saved as ``<out_dir>/erm.pt`` (plus the
    ``--cluster_epoch`` snapshot when that is not the last epoch, and those of :func:`snapshot_epochs`);
    ``recorded`` is the run's arguments the checkpoints record (:func:`models.factory.checkpoint_content`)."""
    model, arch_args = model_from_args(settings, train_set)
    snapshot = snapshot_path(out_dir, cluster_epoch, train.epochs)
    saved = snapshot_epochs(cluster_epoch, train.epochs, clusters_auto)
    snapshots = {e: Path(out_dir) / f"erm_epoch{e}.pt" for e in saved}
    losses = train_erm(model, train_set, train, runtime, generator, snapshots=snapshots, resume=resume,
                       checkpoint=lambda m, epoch: checkpoint_content(m, recorded, arch_args, train_set.n_classes,
                                                                      epoch=epoch))
    ckpt_path = save_checkpoint(Path(out_dir) / "erm.pt", checkpoint_content(model, recorded, arch_args,
                                                                              train_set.n_classes))
    return ErmRun(model, arch_args, ckpt_path, snapshot, losses, snapshots)
