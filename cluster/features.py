"""Penultimate features of any model in ``models/`` (batched, no grad), optionally L2-normalised."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from utils.distributed import ShardSampler, gather_in_order, together
from utils.runtime import Runtime, as_runtime, make_loader, progress


@torch.no_grad()
def extract_features(model: nn.Module, dataset: Dataset, runtime: Runtime | torch.device, batch_size: int = 512,
                     normalize: bool = True, num_workers: int = 0) -> torch.Tensor:
    """``model.features`` of every sample, in dataset order, as a float CPU tensor (N, D).

    With ``normalize`` each row has unit L2 norm, so Euclidean k-means works in cosine geometry.
    ``runtime`` gives device, precision and memory format (with channels-last the model is put in it too).
    Under ``torchrun`` each rank extracts a contiguous share and every rank gets all rows.
    """
    runtime = as_runtime(runtime)
    model.eval().to(runtime.device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    loader = make_loader(dataset, batch_size, sampler=ShardSampler(len(dataset)), num_workers=num_workers)
    indices, rows = [torch.empty(0, dtype=torch.long)], [torch.empty(0, model.feature_dim)]
    for x, _y, _a, idx in together(progress(loader, desc="features"), "while extracting features"):
        with runtime.autocast():
            rows.append(model.features(runtime.batch(x)).float().cpu())
        indices.append(idx)
    out = gather_in_order(torch.cat(indices), torch.cat(rows), len(dataset))
    return nn.functional.normalize(out, dim=1) if normalize else out


def cluster_centroids(features: torch.Tensor, assign: torch.Tensor) -> torch.Tensor:
    """Unit-norm mean direction of each cluster's L2-normalised features, (K, D) with K = max id + 1.

    This is how centroids are defined everywhere (k-means fits and clusters loaded from a CSV), so
    nearest-centroid assignment of new samples means the same thing whatever made the clusters.
    """
    assign = torch.as_tensor(assign).long()
    unit = nn.functional.normalize(features.float(), dim=1)
    sums = torch.zeros(int(assign.max()) + 1, unit.shape[1]).index_add_(0, assign, unit)
    return nn.functional.normalize(sums, dim=1)
