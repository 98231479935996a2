"""Backbones for small images (Colored Digits, ColoredMNIST): an MLP and a small CNN.

Both expose ``features(x)`` (penultimate representation), ``head`` (the final linear layer)
and ``feature_dim``, so clustering and the contrastive loss never look inside.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class MLP(nn.Module):
    """Flatten -> [Linear -> ReLU] x depth -> head. The IRM paper's ColoredMNIST model shape."""

    def __init__(self, input_shape: tuple[int, ...], n_classes: int, hidden_dim: int = 256, depth: int = 2,
                 dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for _ in range(depth):
            layers += [nn.Linear(width, hidden_dim), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden_dim
        self.body = nn.Sequential(*layers)
        self.feature_dim = hidden_dim
        self.head = nn.Linear(hidden_dim, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SmallCNN(nn.Module):
    """Three 3x3 conv blocks with BatchNorm, global average pooling, then the head."""

    def __init__(self, input_shape: tuple[int, ...], n_classes: int, width: int = 32) -> None:
        super().__init__()
        channels = input_shape[0]

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.body = nn.Sequential(
            *block(channels, width),
            *block(width, 2 * width),
            nn.MaxPool2d(2),
            *block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.feature_dim = 4 * width
        self.head = nn.Linear(self.feature_dim, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
