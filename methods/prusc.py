"""PruSC (Le, Schlötterer, Seifert, "Out of Spuriousity", arXiv 2407.14974) and its ablation without L_con.

A binary mask over the frozen ERM weights is learned with CE + sparsity + the cluster-contrastive
loss (training/prune.py), then the masked network is retrained with the mask fixed
(training/retrain.py), exactly as retrain-only retrains the dense model.

``RECIPES`` holds named hyperparameter sets that ``run.py --recipe`` puts in place (docs/recipe.md
has the table and the reasons the defaults differ); flags given on the command line win.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
from typing import Any

from torch import nn

from methods.base import Context, Fitted, Method
from methods.registry import register
from methods.retrain_only import recipe_data, retrain_fitted
from models import build_model
from models.factory import checkpoint_content
from models.masking import select_layers
from training.erm import TrainConfig
from training.prune import PruneConfig, learn_masks
from training.selection import Selector


# The hyperparameters of the original code (the authors' public repository: its run.py defaults and README
# command) and of the paper. Its test-split evaluation is not copied: selection stays label-free.
RECIPES: dict[str, dict[str, Any]] = {
    "original": {
        "mask_init": 1.5,
        "lr_prune": 1e-2,
        "sparsity_penalty": "sum_logits",
        "lambda_sparse": 1e-8,
        "min_layer_density": 0.0,
        "lambda_con_prune": 0.1,
        "temperature": 0.07,
        "num_clusters": 16,
        "per_class": False,
        "cluster_epoch": "final",
        "pruning_ep": 20,
        "retrain_ep": 5,
        "lr_main": 1e-2,
        "retrain_split": "val",
        "optimizer": "adam",
        "batch_size": 64,
        "weight_decay": 1e-4,
    },
}
# Per data set changes to a recipe (the original's CelebA command sets --lambda_sparse 5e-8).
RECIPE_DATA: dict[str, dict[str, dict[str, Any]]] = {"original": {"celebA": {"lambda_sparse": 5e-8}}}


def recipe_values(recipe: str, data: str) -> dict[str, Any]:
    """The flag values of ``recipe`` on data set ``data`` (canonical name)."""
    return RECIPES[recipe] | RECIPE_DATA.get(recipe, {}).get(data, {})


def apply_recipe(args: argparse.Namespace, given: set[str]) -> None:
    """Set ``args.recipe``'s values on ``args``, except those of flags in ``given`` (typed by the user)."""
    if args.recipe == "none":
        return
    for name, value in recipe_values(args.recipe, args.data).items():
        if name not in given:
            setattr(args, name, value)


class PruSC(Method):
    """Mask learning with ``--lambda_con_prune`` * L_con, then retraining."""

    name = "prusc"
    config = PruneConfig
    selection = ("sparsest mask within --prune_tolerance of the best, then the best retraining epoch, both by {score} "
                 "on the selection samples")

    def check_inputs(self, ctx: Context) -> None:
        """``--prune_layers`` must name layers the backbone has, before the reference model trains (all and
        head always do, so the default builds no model here)."""
        if ctx.args.prune_layers not in ("all", "head"):
            select_layers(build_model(ctx.args.arch, ctx.train.input_shape, ctx.train.n_classes),
                          ctx.args.prune_layers)

    def selector(self, requested: Selector) -> Selector:
        return requested

    def pruning(self, prune: PruneConfig) -> PruneConfig:
        """The mask-learning settings of this variant, given those of the flags."""
        return prune

    def fit(self, ctx: Context) -> Fitted:
        prune = self.pruning(ctx.part(PruneConfig))
        model = copy.deepcopy(ctx.reference.model)
        data = recipe_data(ctx)
        selector = self.selector(ctx.requested_selector)
        runtime, arch_args = ctx.runtime, ctx.reference.arch_args

        def score(masked: nn.Module) -> float:  # the retraining's selection rule, on its selection samples
            return selector.score_model(masked, data.select, data.select_cells, runtime)

        def checkpoint(masked: nn.Module) -> dict[str, Any]:
            return checkpoint_content(masked, ctx.recorded_args(), arch_args, ctx.train.n_classes)

        history = learn_masks(model, ctx.train, ctx.clusters.train, prune, ctx.part(TrainConfig).batch_size, runtime,
                              ctx.generator(), save_to=ctx.out_dir / f"{self.name}_pruned.pt", checkpoint=checkpoint,
                              score=score, resume=ctx.step(f"{self.name}_prune"))
        fitted = retrain_fitted(model, ctx, data, selector, f"{self.name}_retrain")
        fitted.info["pruning"] = history
        return fitted


@register
class PruSCNoCon(PruSC):
    """The ablation: the same mask learning with ``lambda_con_prune = 0`` (CE + sparsity only)."""

    name = "prusc_no_con"

    def pruning(self, prune: PruneConfig) -> PruneConfig:
        return dataclasses.replace(prune, lambda_con_prune=0.0)


register(PruSC)
