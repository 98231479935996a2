"""One training step of ERM and of PruSC's mask learning on a batch already on the device.

The timing harness of ``bench_mask_step.py`` and ``gpu_throughput.py``: model-only steps, no data
loading, no loss read back (``sync`` waits for the device before the clock stops). On the CPU the
clock is the process's CPU time. The pruning
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


def clock(device: torch.device) -> Callable[[], float]:
    """Wall time on an accelerator; on the CPU the CPU time of this process (all its threads), which
    other jobs on a shared machine disturb far less than the wall clock."""
    return time.perf_counter if device.type != "cpu" else time.process_time


def seconds_per_step(step: Callable[[torch.Tensor, torch.Tensor], None], x: torch.Tensor, y: torch.Tensor,
                     device: torch.device, steps: int) -> float:
    """Mean seconds of ``steps`` steps (the device drained before and after; CPU seconds on the CPU)."""
    now = clock(device)
    sync(device)
    start = now()
    for _ in range(steps):
        step(x, y)
    sync(device)
    return (now() - start) / steps


def compare_steps(base: Callable, other: Callable, x: torch.Tensor, y: torch.Tensor, device: torch.device,
                  steps: int, repeats: int, warmup: int = 2) -> tuple[float, float, float]:
    """(best seconds per step of ``base``, of ``other``, median ratio other / base).

    The two are timed in alternating blocks and the ratio is taken within each pair of blocks, so
    load from other jobs on a shared machine affects both sides alike.
    """
    for _ in range(warmup):
        base(x, y)
        other(x, y)
    pairs = [(seconds_per_step(base, x, y, device, steps), seconds_per_step(other, x, y, device, steps))
             for _ in range(repeats)]
    ratios = sorted(b / a for a, b in pairs)
    return min(a for a, _ in pairs), min(b for _, b in pairs), ratios[len(ratios) // 2]
