"""Group-wise accuracy metrics (definitions as in docs/methods.md and ARCHITECTURE.md).

A group is a pair (label y, spurious attribute a). Samples whose attribute is unknown (a = -1)
form the group ``y=k,a=-1``, so on data without attributes the worst group is the worst class.

- ``avg_acc``: plain accuracy over the split.
- ``worst_group_acc``: minimum accuracy over the groups present in the split.
- ``mean_group_acc``: unweighted mean of the accuracies of the groups present.
- ``weighted_avg_acc``: group accuracies weighted by the *training* group proportions
  (group_DRO / DFR convention for Waterbirds); groups absent from the split are dropped and the
  remaining weights renormalised. Without training counts it equals ``avg_acc``.
"""
from __future__ import annotations

from typing import Mapping

import torch


def group_key(y: int, a: int) -> str:
    """The results.json name of group (y, a)."""
    return f"y={y},a={a}"


def absent_groups(groups: torch.Tensor, n_classes: int, n_attrs: int) -> list[str]:
    """Names of the (label, attribute) groups that have no sample in ``groups`` (group ids)."""
    present = set(groups.unique().tolist())
    return [group_key(g // n_attrs, g % n_attrs) for g in range(n_classes * n_attrs) if g not in present]


def group_counts(y: torch.Tensor, a: torch.Tensor) -> dict[str, int]:
    """Number of samples in each (y, a) group, keyed like results.json."""
    pairs = torch.stack([y.long(), a.long()], dim=1)
    uniq, counts = torch.unique(pairs, dim=0, return_counts=True)
    return {group_key(int(p[0]), int(p[1])): int(c) for p, c in zip(uniq, counts)}


def compute_metrics(
    preds: torch.Tensor,
    y: torch.Tensor,
    a: torch.Tensor,
    train_counts: Mapping[str, int] | None = None,
) -> dict:
    """All split metrics from predicted labels, true labels and attributes (1-D tensors)."""
    if not (preds.shape == y.shape == a.shape) or preds.dim() != 1:
        raise ValueError(f"preds, y, a must be equal-length 1-D tensors, got {preds.shape}, {y.shape}, {a.shape}")
    if len(y) == 0:
        raise ValueError("cannot compute metrics on an empty split")
    correct = (preds.long() == y.long()).double()
    groups: dict[str, dict] = {}
    for yv, av in torch.unique(torch.stack([y.long(), a.long()], dim=1), dim=0).tolist():
        mask = (y == yv) & (a == av)
        groups[group_key(yv, av)] = {"acc": float(correct[mask].mean()), "n": int(mask.sum())}
    accs = [g["acc"] for g in groups.values()]
    avg_acc = float(correct.mean())
    weighted = avg_acc
    if train_counts:
        weights = {k: train_counts.get(k, 0) for k in groups}
        total = sum(weights.values())
        if total > 0:
            weighted = sum(groups[k]["acc"] * w for k, w in weights.items()) / total
    return {
        "avg_acc": avg_acc,
        "worst_group_acc": min(accs),
        "mean_group_acc": sum(accs) / len(accs),
        "weighted_avg_acc": float(weighted),
        "groups": groups,
    }
