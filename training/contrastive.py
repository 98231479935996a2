"""The cluster-contrastive loss of PruSC, in one vectorised pass over a batch.

Inputs: L2-normalised penultimate features ``z`` (B, D) of the *masked* network, class labels
``y`` (B,) and representation-cluster ids ``c`` (B,).

For anchor ``i``:

- positives ``P(i)`` = other samples with the same label and a *different* cluster
  (same class, different spurious context: pull them together);
- negatives ``N(i)`` = other samples in the *same* cluster (they share the spurious context:
  push them apart);
- everything else is ignored.

    loss_i = - mean_{p in P(i)} log( exp(z_i.z_p / tau) / sum_{k in P(i) u N(i)} exp(z_i.z_k / tau) )

The loss is the mean over anchors that have at least one positive; anchors without positives are
skipped, and a batch with no valid anchor gives a zero that still belongs to the graph (so callers
can always add it and call ``backward``). The whole batch costs one similarity matrix, not one
forward pass per anchor.

Under ``torchrun`` :func:`global_cluster_contrastive_loss` computes the same loss over the global
batch: every rank gathers all ranks' features (with gradient), labels and clusters.
"""
from __future__ import annotations

import torch

from utils.distributed import all_gather_cat, all_gather_with_grad


def cluster_contrastive_loss(z: torch.Tensor, y: torch.Tensor, c: torch.Tensor,
                             temperature: float = 0.07) -> torch.Tensor:
    """Supervised contrastive loss with cluster-defined positives/negatives (see module docstring)."""
    if z.dim() != 2 or y.shape != (z.shape[0],) or c.shape != (z.shape[0],):
        raise ValueError(f"expected z (B, D), y (B,), c (B,), got {tuple(z.shape)}, {tuple(y.shape)}, {tuple(c.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    not_self = ~torch.eye(len(z), dtype=torch.bool, device=z.device)
    same_cluster = c[:, None] == c[None, :]
    positives = (y[:, None] == y[None, :]) & ~same_cluster & not_self
    candidates = positives | (same_cluster & not_self)
    valid = positives.any(dim=1)
    if not bool(valid.any()):
        return z.sum() * 0.0
    sim = (z @ z.T).float() / temperature
    sim = sim.masked_fill(~candidates, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos_log_prob = log_prob.masked_fill(~positives, 0.0).sum(dim=1) / positives.sum(dim=1).clamp(min=1)
    return -pos_log_prob[valid].mean()


def global_cluster_contrastive_loss(z: torch.Tensor, y: torch.Tensor, c: torch.Tensor,
                                    temperature: float = 0.07) -> torch.Tensor:
    """:func:`cluster_contrastive_loss` over the global batch, so positives and negatives come from
    every rank's share; with DDP's gradient averaging its gradient is the single-process one.
    For one process it is the plain loss on the local batch."""
    return cluster_contrastive_loss(all_gather_with_grad(z), all_gather_cat(y), all_gather_cat(c), temperature)
