"""Retrain-only: PruSC's retraining recipe applied to the dense ERM model (the ablation without a mask).

Retraining every weight on a cluster-balanced half of the validation split is by itself a strong,
annotation-free method (the lesson of DFR), so the mask has to earn its place against this.
"""
from __future__ import annotations

import copy

from torch import nn

from methods.base import Context, Fitted, Method
from methods.registry import register
from training.erm import TrainConfig
from training.retrain import RetrainConfig, RetrainData, retrain, retrain_data
from training.selection import Selector

HELD_OUT_NOTE = "held-out half of val (the other half was used for retraining)"


def recipe_data(ctx: Context) -> RetrainData:
    """The fitting and selection samples of the ``--retrain_*`` recipe (seeded: the same for every method)."""
    return retrain_data(ctx.splits, ctx.clusters.train, ctx.clusters.val, ctx.args.retrain_split, ctx.args.seed)


def retrain_fitted(model: nn.Module, ctx: Context, data: RetrainData, selector: Selector, step: str) -> Fitted:
    """Retrain ``model`` in place with the ``--retrain_*`` recipe on ``data`` and select the epoch with
    ``selector``; ``step`` names the resume state."""
    recipe = ctx.part(RetrainConfig)
    info = retrain(model, data, selector, recipe, ctx.part(TrainConfig), ctx.runtime, ctx.generator(),
                   resume=ctx.step(step))
    on_val = recipe.retrain_split == "val"
    return Fitted(model, info=info, val=data.select if on_val else None, val_note=HELD_OUT_NOTE if on_val else None)


@register
class RetrainOnly(Method):
    """The ``--retrain_*`` recipe (see training/retrain.py) on a copy of the reference model, no mask."""

    name = "retrain_only"
    selection = "epoch (before retraining included) with the best {score} on the selection samples"

    def selector(self, requested: Selector) -> Selector:
        return requested

    def fit(self, ctx: Context) -> Fitted:
        return retrain_fitted(copy.deepcopy(ctx.reference.model), ctx, recipe_data(ctx),
                              self.selector(ctx.requested_selector), f"{self.name}_retrain")
