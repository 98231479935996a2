"""A reference that uses group labels everywhere: ERM on group-balanced batches, early-stopped on the
true worst-group validation accuracy (the upper end of what balancing alone can do)."""
from __future__ import annotations

from methods.base import Context, Fitted, Method, train_and_select
from methods.registry import register
from training.selection import Selector, WorstGroup
from utils.metrics import absent_groups


@register
class GroupBalancedOracle(Method):
    """ERM with every batch balanced over the true (label, attribute) groups."""

    name = "oracle_group_balanced"
    uses_group_labels = True
    group_labels = "training (balanced batches) and model selection"
    selection = "epoch with the best {score} on val"
    needs_attributes = True

    def selector(self, requested: Selector) -> Selector:
        return WorstGroup()

    def unavailable(self, ctx: Context) -> str | None:
        train = ctx.train
        absent, n_groups = absent_groups(train.groups, train.n_classes, train.n_attrs), train.n_classes * train.n_attrs
        if absent and not super().unavailable(ctx):
            return (f"the training split holds only {n_groups - len(absent)} of the {n_groups} (label, attribute) "
                    "groups, so group-balanced batches cannot cover the others")
        return super().unavailable(ctx)

    def fit(self, ctx: Context) -> Fitted:
        train = ctx.train
        model, arch_args = ctx.new_model()
        best = train_and_select(ctx, self.name, model, train, self.selector(ctx.requested_selector),
                                cells=train.groups, desc="group-balanced ERM")
        return Fitted(model, arch_args=arch_args, info={"best_epoch": best.epoch, "selection_scores": best.scores})
