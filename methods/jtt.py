"""JTT, Just Train Twice (Liu, Haghgoo, Chen, Raghunathan, Koh, Sagawa, Liang, Finn; ICML 2021).

1. An identification model is trained with ERM for a few epochs (``--jtt_id_epochs``); the
   training samples it gets wrong form the *error set*, which is rich in minority groups.
2. A fresh model is trained with ERM for ``--epochs`` on the training split in which every sample
   of the error set appears ``--jtt_lambda_up`` times (upsampling), so it cannot ignore them.

No group labels are used for training. The paper picked the epoch (and T, lambda_up) on the true
worst-group validation accuracy; here the epoch is picked without group labels, by the
``--selection`` score on the whole validation split (worst accuracy over (label, cluster) cells of
the reference model's clusters by default). The defaults T = 1, lambda_up = 50 are the paper's
CelebA values (its Waterbirds values are T = 60, lambda_up = 100).
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from data import SpuriousDataset
from methods.base import Context, Fitted, Method, train_and_select
from methods.registry import register
from training.erm import TrainConfig, train_erm
from training.loops import predict
from training.selection import Selector
from utils.cli import positive_int
from utils.options import option
from utils.results import atomic_write_text
from utils.runtime import Runtime

ERROR_SET_NAME = "jtt_error_set.csv"


@dataclass(frozen=True)
class JttConfig:
    """JTT's own settings."""

    jtt_id_epochs: int = option(1, "JTT: ERM epochs of the identification model (T; paper: 1 CelebA, 60 Waterbirds)",
                                type=positive_int)
    jtt_lambda_up: int = option(50, "JTT: copies of each error-set sample (lambda_up; paper: 50 CelebA, 100 "
                                    "Waterbirds)", type=positive_int)


def error_set(model: nn.Module, train: SpuriousDataset, runtime: Runtime | torch.device) -> torch.Tensor:
    """Sorted training positions the model classifies wrongly."""
    preds = predict(model, train, runtime, desc="JTT error set").argmax(1)
    return torch.nonzero(preds != train.y).flatten()


def upsampled(train: SpuriousDataset, errors: torch.Tensor, lambda_up: int) -> SpuriousDataset:
    """The training split with every error-set sample repeated ``lambda_up`` times in all."""
    return train.subset(torch.cat([torch.arange(len(train)), errors.repeat(lambda_up - 1)]))


@register
class JTT(Method):
    """Train an identification model, upsample its training mistakes, train again."""

    name = "jtt"
    config = JttConfig
    selection = "epoch with the best {score} on val"


    def selector(self, requested: Selector) -> Selector:
        return requested

    def fit(self, ctx: Context) -> Fitted:
        train, jtt = ctx.train, ctx.part(JttConfig)
        identifier, _ = ctx.new_model()
        train_erm(identifier, train, ctx.part(TrainConfig), ctx.runtime, ctx.generator(), epochs=jtt.jtt_id_epochs,
                  desc="JTT identification", resume=ctx.step("jtt_identification"))
        errors = error_set(identifier, train, ctx.runtime)
        atomic_write_text(ctx.out_dir / ERROR_SET_NAME, pd.DataFrame({"index": errors.numpy()}).to_csv(index=False))
        model, arch_args = ctx.new_model()
        best = train_and_select(ctx, "jtt", model, upsampled(train, errors, jtt.jtt_lambda_up), self.selector(ctx.requested_selector),
                                seed_offset=1, desc="JTT")
        return Fitted(model, arch_args=arch_args, info={
            "error_set_size": len(errors), "error_set_file": str(ctx.out_dir / ERROR_SET_NAME),
            "best_epoch": best.epoch, "selection_scores": best.scores})
