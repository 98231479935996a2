"""Model registry: ``--arch`` names map to constructors taking ``(input_shape, n_classes, **arch_args)``.

Every model offers ``features(x)`` (penultimate representation), ``head`` and ``forward(x)``.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable

from torch import nn

from models.resnet import ResNet
from models.small import MLP, SmallCNN
from utils.errors import UserError

ARCHS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "cnn": SmallCNN,
    "resnet18": partial(ResNet, depth="resnet18"),
    "resnet50": partial(ResNet, depth="resnet50"),
}


def build_model(arch: str, input_shape: tuple[int, ...], n_classes: int, **arch_args: Any) -> nn.Module:
    """Instantiate ``arch``; ``arch_args`` are the constructor's keyword arguments."""
    if arch not in ARCHS:
        raise UserError(f"unknown --arch {arch!r}; choose one of {', '.join(ARCHS)}")
    return ARCHS[arch](tuple(input_shape), n_classes, **arch_args)


__all__ = ["ARCHS", "build_model", "MLP", "SmallCNN", "ResNet"]
