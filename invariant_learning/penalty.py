"""The IRMv1 penalty and its annealing schedule (Arjovsky et al., 2019, "Invariant Risk Minimization").

IRMv1 asks that one classifier be optimal in every environment at once. It measures how far it
is from that with the gradient of each environment's risk with respect to a fixed scale ``w = 1``
on the logits: zero when rescaling the logits cannot lower that environment's risk.
"""
from __future__ import annotations

import torch
from torch import nn


def irm_penalty(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(d risk(w * logits) / d w at w = 1) ** 2`` for one environment, differentiable in the logits."""
    scale = torch.ones((), device=logits.device, requires_grad=True)
    risk = nn.functional.cross_entropy(logits * scale, y)
    (grad,) = torch.autograd.grad(risk, scale, create_graph=True)
    return grad.pow(2)


def penalty_weight_at(step: int, penalty_weight: float, anneal_iters: int) -> float:
    """Weight 1 during the first ``anneal_iters`` steps (plain ERM-like fitting), ``penalty_weight`` after.

    A weight of 0 (the ERM baseline) stays 0 throughout.
    """
    if penalty_weight == 0 or step >= anneal_iters:
        return penalty_weight
    return 1.0

