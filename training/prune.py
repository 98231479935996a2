"""PruSC step 1: learn a binary weight mask over the frozen ERM network.

Only mask logits are optimised; weights and BatchNorm statistics stay as trained (the network
runs in eval mode). Per batch, in one forward pass of the masked network:

    loss = CE + lambda_sparse * (sum of keep probabilities) + lambda_con_prune * L_con

where ``L_con`` (training/contrastive.py) uses the L2-normalised penultimate features, the
labels and the representation clusters. Batches are balanced over (label, cluster) cells.
After every epoch the masked model is checkpointed atomically, so a NaN stop keeps the last good one.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import nn

from data import SpuriousDataset
from models.masking import attach_masks, density_report, mask_parameters, set_mask_mode, sparsity_penalty
from training.contrastive import cluster_contrastive_loss
from models.factory import checkpoint_content
from training.loops import check_finite
from training.retrain import cells_of
from training.samplers import training_loader
from utils.checkpoint import save_checkpoint
from utils.runtime import autocast, progress, to_device


def learn_masks(model: nn.Module, train_set: SpuriousDataset, clusters: torch.Tensor, args: argparse.Namespace,
                device: torch.device, generator: torch.Generator,
                save_to: Path | None = None, arch_args: dict[str, Any] | None = None) -> list[dict[str, float]]:
    """Attach masks to ``model`` and learn them for ``--pruning_ep`` epochs; return per-epoch losses.

    The model ends with fixed (deterministic) masks. With ``save_to``, the masked model is written
    there after each epoch.
    """
    attach_masks(model, args.prune_layers, args.mask_init, args.mask_temperature)
    model.to(device).eval()
    logits = mask_parameters(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in logits:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(logits, lr=args.lr_prune)
    loader = training_loader(train_set, args.batch_size, generator, args.num_workers,
                             cells_of(train_set.y, clusters))
    clusters = clusters.to(device)
    history = []
    set_mask_mode(model, "sample")
    for epoch in range(args.pruning_ep):
        sums = {"ce": 0.0, "con": 0.0, "sparse": 0.0}
        for x, y, _a, idx in progress(loader, desc=f"prune epoch {epoch + 1}/{args.pruning_ep}"):
            x, y = to_device(x, device, args.channels_last), y.to(device)
            with autocast(device, args.amp):
                feats = model.features(x)
                ce = nn.functional.cross_entropy(model.head(feats), y)
            con = cluster_contrastive_loss(nn.functional.normalize(feats.float(), dim=1), y,
                                           clusters[idx.to(device)], args.temperature)
            sparse = sparsity_penalty(model)
            loss = ce + args.lambda_sparse * sparse + args.lambda_con_prune * con
            check_finite(loss, f"in pruning epoch {epoch + 1}" + (f" (last good checkpoint: {save_to})" if save_to
                                                                   and save_to.exists() else ""))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for key, value in (("ce", ce), ("con", con), ("sparse", sparse)):
                sums[key] += float(value.detach())
        set_mask_mode(model, "fixed")
        density = density_report(model, warn=False)["overall"]
        history.append({k: v / len(loader) for k, v in sums.items()} | {"density": density})
        print(f"prune epoch {epoch + 1}: ce {history[-1]['ce']:.4f}  con {history[-1]['con']:.4f}  "
              f"density {density:.4f}")
        if save_to is not None and arch_args is not None:
            save_checkpoint(save_to, checkpoint_content(model, args, arch_args, train_set.n_classes))
        set_mask_mode(model, "sample")
    set_mask_mode(model, "fixed")
    for p in model.parameters():
        p.requires_grad_(True)
    return history
