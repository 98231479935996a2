"""Tiny data, models and one training step shared by the torchrun worker and the single-process
references in tests/test_distributed.py."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from data.base import TensorSpuriousDataset
from models import MLP
from models.masking import attach_masks, mask_parameters, set_mask_mode, sparsity_penalty
from training.contrastive import cluster_contrastive_loss, global_cluster_contrastive_loss
from utils.distributed import all_reduce_sum, global_mean
from utils.errors import UserError

N, DIM = 23, 6
BAD_INDEX = 17
STEP_BATCH = [3, 14, 7, 0, 22, 9, 11, 18, 5, 1, 16]  # one global batch of 11: shares of 6 and 5 on 2 ranks


def toy_data() -> tuple[TensorSpuriousDataset, torch.Tensor]:
    """23 samples, 2 classes, and 2 clusters inside each class."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(N) % 2
    a = (torch.arange(N) // 2) % 2
    data = TensorSpuriousDataset(torch.randn(N, DIM, generator=g), y, a, 2, 2, "train")
    return data, (torch.arange(N) // 3) % 2


class BadImageDataset(TensorSpuriousDataset):
    """``toy_data`` whose sample ``BAD_INDEX`` cannot be read."""

    def __init__(self) -> None:
        data, _ = toy_data()
        super().__init__(data.images, data.y, data.a, 2, 2, "train")

    def load_images(self, indices: torch.Tensor) -> torch.Tensor:
        if BAD_INDEX in indices.tolist():
            raise UserError(f"cannot read image {BAD_INDEX}.png: truncated file; remove it from --train_root_dir")
        return super().load_images(indices)


def dense_model() -> MLP:
    torch.manual_seed(7)
    return MLP((DIM,), 2, hidden_dim=8)


def masked_model() -> tuple[MLP, list[nn.Parameter]]:
    """The dense model with masks on every layer; only the mask logits train."""
    model = dense_model()
    attach_masks(model, "all", init_logit=0.5)
    for p in model.parameters():
        p.requires_grad_(False)
    logits = mask_parameters(model)
    for p in logits:
        p.requires_grad_(True)
    return model, logits


def global_step_losses(wrap: Callable[[nn.Module], nn.Module], rank: int, world: int) -> dict:
    """One ERM step and one mask-learning step on ``STEP_BATCH`` (this rank computes its share);
    the losses and the gradients after backward (DDP-averaged when ``wrap`` adds DDP)."""
    data, clusters = toy_data()
    share = torch.tensor_split(torch.tensor(STEP_BATCH), world)[rank]
    x, y, c = data.images[share], data.y[share], clusters[share]

    dense = dense_model()
    net = wrap(dense)  # kept alive until backward: DDP's gradient hooks live in the wrapper
    _, logits = net(x)
    per_sample = nn.functional.cross_entropy(logits, y, reduction="none")
    global_mean(per_sample).backward()
    erm = {"loss": float(all_reduce_sum(per_sample.detach().sum())) / len(STEP_BATCH),
           "grads": {n: p.grad.clone() for n, p in dense.named_parameters()}}

    model, mask_logits = masked_model()
    net = wrap(model)
    set_mask_mode(model, "sample")
    torch.manual_seed(11)  # the same mask noise on every rank and in one process
    feats, logits = net(x)
    z = nn.functional.normalize(feats, dim=1)
    ce = global_mean(nn.functional.cross_entropy(logits, y, reduction="none"))
    con = global_cluster_contrastive_loss(z, y, c, temperature=0.5)
    (ce + 1e-3 * sparsity_penalty(model) + con).backward()
    prune = {"con": float(con.detach()), "local_con": float(cluster_contrastive_loss(z.detach(), y, c, 0.5)),
             "grads": [p.grad.clone() for p in mask_logits]}
    return {"erm": erm, "prune": prune}
