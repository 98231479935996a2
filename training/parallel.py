"""How training loops call a model so that data-parallel runs synchronise every gradient.

DistributedDataParallel synchronises gradients only for computations that go through the
wrapped module's ``forward``; PruSC needs the penultimate features *and* the logits, and calling
``model.features`` / ``model.head`` directly would bypass the wrapper. Loops therefore call
``net = data_parallel(model, device)`` once and then ``features, logits = net(x)`` for every
trainable forward (ERM, mask learning, retraining). Mask logits are parameters of the model (its
weight parametrizations), so they are synchronised like weights.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from utils.distributed import is_distributed


class FeaturesAndLogits(nn.Module):
    """``x -> (model.features(x), model.head(features))`` in one forward."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.model.features(x)
        return feats, self.model.head(feats)


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """``FeaturesAndLogits(model)``, wrapped in DistributedDataParallel when several processes run.

    Build it after choosing which parameters train (``requires_grad``): DDP synchronises those.
    On CUDA, BatchNorm layers become SyncBatchNorm (in place; same state_dict keys) so batch
    statistics are those of the global batch; on CPU (gloo) they stay per rank, which only matters
    for models trained in train mode with BatchNorm (mask learning runs in eval mode).
    """
    net = FeaturesAndLogits(model)
    if not is_distributed():
        return net
    if device.type == "cuda":
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        return DistributedDataParallel(net, device_ids=[device.index], output_device=device.index)
    return DistributedDataParallel(net)
