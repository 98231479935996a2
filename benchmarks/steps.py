"""One training step of ERM and of PruSC's mask learning on a batch already on the device.

The timing harness of ``bench_mask_step.py`` and ``gpu_throughput.py``: model-only steps, no data
loading, no loss read back (``sync`` waits for the device before the clock stops). The pruning
step computes what ``training/prune.py`` computes per batch, with the library's own functions.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn

from models.masking import attach_masks, mask_parameters, set_mask_mode, sparsity_penalty
from training.contrastive import cluster_contrastive_loss
from utils.runtime import autocast


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def erm_step(model: nn.Module, device: torch.device, amp: bool) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """A closure doing one cross-entropy step of ``model`` (train mode, Adam on every weight)."""
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with autocast(device, amp):
            loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def prune_step(model: nn.Module, device: torch.device, amp: bool, clusters: torch.Tensor,
               lambda_sparse: float = 1e-7, lambda_con: float = 1.0,
               temperature: float = 0.2) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """A closure doing one mask-learning step: masks attached to every layer and sampled, weights
    frozen, eval mode, CE + sparsity + cluster-contrastive loss in one forward pass, Adam on the logits."""
    attach_masks(model)
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    logits = mask_parameters(model)
    for p in logits:
        p.requires_grad_(True)
    set_mask_mode(model, "sample")
    optimizer = torch.optim.Adam(logits, lr=0.1)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with autocast(device, amp):
            feats = model.features(x)
            ce = nn.functional.cross_entropy(model.head(feats), y)
        con = cluster_contrastive_loss(nn.functional.normalize(feats.float(), dim=1), y, clusters, temperature)
        loss = ce + lambda_sparse * sparsity_penalty(model) + lambda_con * con
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def seconds_per_step(step: Callable[[torch.Tensor, torch.Tensor], None], x: torch.Tensor, y: torch.Tensor,
                     device: torch.device, steps: int, warmup: int = 2, repeats: int = 1) -> float:
    """Best over ``repeats`` of the mean time of ``steps`` steps, after ``warmup`` steps."""
    for _ in range(warmup):
        step(x, y)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            step(x, y)
        sync(device)
        best = min(best, (time.perf_counter() - start) / steps)
    return best
