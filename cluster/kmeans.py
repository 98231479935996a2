"""k-means in cosine geometry, over all samples or within each class, and the choice of k.

Features are L2-normalised before scikit-learn's (Euclidean) k-means: on the unit sphere
``|u - v|^2 = 2 - 2 cos(u, v)``, so the clusters are those of cosine similarity, the geometry in
which PruSC's contrastive loss compares samples. Centroids are the unit-norm mean directions of
their members (:func:`cluster.features.cluster_centroids`), the same definition used for clusters
loaded from a CSV, so new samples are placed by :func:`assign_nearest` identically in both cases.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from cluster.features import cluster_centroids
from utils.errors import UserError

N_INIT = 3  # k-means++ restarts: enough for a stable fit, cheap on 60k samples (benchmarks/bench_clustering.py)
SILHOUETTE_SAMPLES = 3000  # silhouette is O(n^2): `auto` fits and scores each k on a subsample of this size


@dataclass
class ClusterFit:
    """A clustering of N samples into K clusters.

    ``assign`` (N,) holds ids 0..K-1, each used at least once; a per-class fit gives class ``c``
    its own block of ids (classes in increasing order), so ids are unique across classes.
    ``centroids`` (K, D) are unit-norm. ``cluster_label`` (K,) is the majority training label of
    each cluster (the class itself for a per-class fit); ``None`` when fitted without labels.
    """

    assign: torch.Tensor
    centroids: torch.Tensor
    cluster_label: torch.Tensor | None = None
    per_class: bool = False

    @property
    def num_clusters(self) -> int:
        return int(self.centroids.shape[0])


def _kmeans(unit: torch.Tensor, k: int, seed: int, who: str) -> torch.Tensor:
    """Cluster ids 0..k-1 of the rows of ``unit``; fails clearly when k cannot be met."""
    if k < 2:
        raise UserError(f"--num_clusters {k} is below 2; one cluster carries no information, use 2 or more")
    if k > len(unit):
        raise UserError(f"--num_clusters {k} exceeds the {len(unit)} samples of {who}; use at most {len(unit)}")
    from sklearn.cluster import KMeans  # on use: scikit-learn takes seconds to import (runs without k-means skip it)
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # reported below as a UserError
        ids = KMeans(n_clusters=k, n_init=N_INIT, random_state=seed).fit_predict(unit.numpy())
    assign = torch.as_tensor(ids).long()
    found = len(torch.unique(assign))
    if found < k:
        raise UserError(f"--num_clusters {k}: the features of {who} hold only {found} distinct direction(s); "
                        "lower --num_clusters or use a reference model that is not collapsed")
    return assign


def fit_kmeans(features: torch.Tensor, k: int, seed: int, labels: torch.Tensor | None = None) -> ClusterFit:
    """k-means with ``k`` clusters over all samples, or ``k`` clusters within each class when ``labels`` is given."""
    unit = nn.functional.normalize(features.float(), dim=1)
    if labels is None:
        assign = _kmeans(unit, k, seed, "the training set")
        return ClusterFit(assign, cluster_centroids(unit, assign))
    labels = torch.as_tensor(labels).long()
    if labels.shape != (len(unit),):
        raise ValueError(f"labels must have shape ({len(unit)},), got {tuple(labels.shape)}")
    assign = torch.empty(len(unit), dtype=torch.long)
    classes = torch.unique(labels)
    for block, cls in enumerate(classes.tolist()):
        members = torch.nonzero(labels == cls).flatten()
        assign[members] = _kmeans(unit[members], k, seed, f"class {cls}") + block * k
    return ClusterFit(assign, cluster_centroids(unit, assign), classes.repeat_interleave(k), per_class=True)


def assign_nearest(features: torch.Tensor, centroids: torch.Tensor, labels: torch.Tensor | None = None,
                   cluster_label: torch.Tensor | None = None) -> torch.Tensor:
    """Id of the centroid with the highest cosine similarity to each row of ``features``.

    With ``labels`` and ``cluster_label`` a sample only considers clusters of its own label (what a
    per-class fit means); a sample whose label owns no cluster considers all of them.
    """
    sims = nn.functional.normalize(features.float(), dim=1) @ nn.functional.normalize(centroids.float(), dim=1).T
    if labels is not None:
        if cluster_label is None:
            raise ValueError("assign_nearest: labels need cluster_label (the label owning each cluster)")
        allowed = torch.as_tensor(labels).long()[:, None] == cluster_label[None, :]
        allowed |= ~allowed.any(dim=1, keepdim=True)
        sims = sims.masked_fill(~allowed, float("-inf"))
    return sims.argmax(dim=1)


def majority_label(assign: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Most frequent label in each cluster (ties go to the smaller label), shape (K,)."""
    assign, labels = torch.as_tensor(assign).long(), torch.as_tensor(labels).long()
    counts = torch.zeros(int(assign.max()) + 1, int(labels.max()) + 1, dtype=torch.long)
    counts.index_put_((assign, labels), torch.ones_like(assign), accumulate=True)
    return counts.argmax(dim=1)


def select_k(features: torch.Tensor, candidates: Sequence[int], seed: int,
             labels: torch.Tensor | None = None) -> tuple[int, dict[int, float]]:
    """The k with the highest silhouette (cosine), and the score of every candidate tried.

    Each candidate is fitted and scored on a seeded subsample of at most ``SILHOUETTE_SAMPLES``
    rows. Per class (``labels`` given) the score is the class-size-weighted mean of the
    silhouettes within each class, since only within-class structure is being clustered.
    """
    gen = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(features), generator=gen)[:SILHOUETTE_SAMPLES]
    unit = nn.functional.normalize(features[keep].float(), dim=1)
    groups = [torch.arange(len(unit))] if labels is None else \
        [torch.nonzero(labels[keep] == c).flatten() for c in torch.unique(labels[keep])]
    smallest = min(len(g) for g in groups)
    tried = [k for k in candidates if 2 <= k < smallest]
    if not tried:
        raise UserError(f"--num_clusters auto: no k in {list(candidates)} fits {smallest} samples "
                        "(silhouette needs 2 <= k < samples); pass --num_clusters N")
    from sklearn.metrics import silhouette_score  # on use: scikit-learn takes seconds to import

    scores = {}
    for k in tried:
        assign = fit_kmeans(unit, k, seed, None if labels is None else labels[keep]).assign
        per_group = [(len(g), silhouette_score(unit[g].numpy(), assign[g].numpy(), metric="cosine")) for g in groups]
        scores[k] = float(sum(n * s for n, s in per_group) / sum(n for n, _ in per_group))
    return max(scores, key=scores.get), scores
