"""Group DRO (Sagawa, Koh, Hashimoto, Liang; ICLR 2020), online version with group adjustments.

Minimises the worst expected loss over the true (label, attribute) groups. Per step, the loss of
each group present in the batch is computed; the group weights ``q`` follow an exponentiated
gradient step ``q_g <- q_g * exp(eta * (loss_g + C / sqrt(n_g)))`` and are renormalised; the
model minimises ``sum_g q_g * loss_g``. ``C`` (``--groupdro_adj``) favours small groups, whose
training loss underestimates their test loss. Defaults: ``eta = 0.01`` and ``C = 0``, the paper's
values. It needs the true group of every training sample and selects the epoch on the true
worst-group validation accuracy, as the paper does: an oracle, not an annotation-free competitor.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch import nn

from methods.base import Context, Fitted, Method, train_and_select
from methods.registry import register
from training.selection import Selector, WorstGroup
from utils.cli import non_negative
from utils.metrics import absent_groups
from utils.options import option



class GroupDROLoss:
    """The :data:`training.loops.LossFn` of Group DRO; ``q`` holds the current group weights."""

    def __init__(self, groups: torch.Tensor, n_groups: int, eta: float, adjustment: float,
                 device: torch.device) -> None:
        self.groups = groups.to(device)
        counts = torch.bincount(groups, minlength=n_groups).float().to(device)
        self.adjustment = adjustment / counts.clamp(min=1).sqrt()
        self.eta = eta
        self.n_groups = n_groups
        self.q = torch.full((n_groups,), 1.0 / n_groups, device=device)

    def __call__(self, logits: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        g = self.groups[index]
        per_sample = nn.functional.cross_entropy(logits, y, reduction="none")
        in_batch = torch.bincount(g, minlength=self.n_groups).float()
        group_loss = torch.zeros(self.n_groups, device=logits.device).index_add(0, g, per_sample)
        group_loss = group_loss / in_batch.clamp(min=1)
        present = in_batch > 0
        step = self.eta * (group_loss.detach() + self.adjustment) * present
        self.q = self.q * torch.exp(step)
        self.q = self.q / self.q.sum()
        return (self.q * group_loss).sum()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"q": self.q}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.q = state["q"].to(self.q.device)


@dataclass(frozen=True)
class GroupDROConfig:
    """Group DRO's own settings."""

    groupdro_eta: float = option(0.01, "GroupDRO: step size of the group weights (paper: 0.01)",
                                 type=non_negative(float))
    groupdro_adj: float = option(0.0, "GroupDRO: group adjustment C, added as C/sqrt(group size) (paper default 0)",
                                 type=non_negative(float))


@register
class GroupDRO(Method):
    """ERM's loop with the Group DRO loss on the true groups (uses group labels)."""

    name = "groupdro"
    uses_group_labels = True
    group_labels = "training (group losses) and model selection"
    selection = "epoch with the best {score} on val"
    needs_attributes = True
    config = GroupDROConfig

    def selector(self, requested: Selector) -> Selector:
        return WorstGroup()

    def fit(self, ctx: Context) -> Fitted:
        settings, train = ctx.part(GroupDROConfig), ctx.train
        model, arch_args = ctx.new_model()
        absent = absent_groups(train.groups, train.n_classes, train.n_attrs)
        if absent:
            print(f"warning: groupdro: the training split has no sample of group(s) {', '.join(absent)}; their "
                  "weight never moves, so Group DRO guards only the groups present", file=sys.stderr)
        loss = GroupDROLoss(train.groups, train.n_classes * train.n_attrs, settings.groupdro_eta, settings.groupdro_adj,
                            ctx.device)
        best = train_and_select(ctx, "groupdro", model, train, self.selector(ctx.requested_selector), stateful={"loss": loss},
                                loss_fn=loss, desc="GroupDRO")
        return Fitted(model, arch_args=arch_args, info={"best_epoch": best.epoch, "selection_scores": best.scores,
                                                        "group_weights": loss.q.cpu().tolist(),
                                                        "absent_train_groups": absent})
