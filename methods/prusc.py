"""PruSC (Le, Schlötterer, Seifert, "Out of Spuriousity", arXiv 2407.14974) and its ablation without L_con.

A binary mask over the frozen ERM weights is learned with CE + sparsity + the cluster-contrastive
loss (training/prune.py), then the masked network is retrained with the mask fixed
(training/retrain.py), exactly as retrain-only retrains the dense model.
"""
from __future__ import annotations

import argparse
import copy

from torch import nn

from methods.base import Context, Fitted, Method
from methods.registry import register
from methods.retrain_only import recipe_data, retrain_fitted
from training.prune import learn_masks
from training.selection import Selector


class PruSC(Method):
    """Mask learning with ``--lambda_con_prune`` * L_con, then retraining."""

    name = "prusc"
    selection = ("sparsest mask within --prune_tolerance of the best, then the best retraining epoch, both by {score} "
                 "on the selection samples")

    def selector(self, requested: Selector) -> Selector:
        return requested

    def pruning_args(self, args: argparse.Namespace) -> argparse.Namespace:
        return args

    def fit(self, ctx: Context) -> Fitted:
        args = self.pruning_args(ctx.args)
        model = copy.deepcopy(ctx.reference.model)
        data = recipe_data(ctx)
        selector = self.selector(ctx.requested_selector)

        def score(masked: nn.Module) -> float:  # the retraining's selection rule, on its selection samples
            return selector.score_model(masked, data.select, data.select_cells, args, ctx.device)

        history = learn_masks(model, ctx.train, ctx.clusters.train, args, ctx.device, ctx.generator(),
                              save_to=ctx.out_dir / f"{self.name}_pruned.pt", arch_args=ctx.reference.arch_args,
                              score=score, resume=ctx.step(f"{self.name}_prune"))
        fitted = retrain_fitted(model, ctx, data, selector, f"{self.name}_retrain")
        fitted.info["pruning"] = history
        return fitted


@register
class PruSCNoCon(PruSC):
    """The ablation: the same mask learning with ``lambda_con_prune = 0`` (CE + sparsity only)."""

    name = "prusc_no_con"

    def pruning_args(self, args: argparse.Namespace) -> argparse.Namespace:
        return argparse.Namespace(**{**vars(args), "lambda_con_prune": 0.0})


register(PruSC)
