"""ResNet-18/50 from torchvision for photo data sets, with ImageNet or local weights.

``--imagenet`` asks torchvision for its ImageNet weights (needs the network or a filled torch
hub cache); ``--pretrained_path`` loads a local file instead, which works offline.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from utils.errors import UserError

_WEIGHTS = {"resnet18": "ResNet18_Weights", "resnet50": "ResNet50_Weights"}  # torchvision's builder: the key
BLOCKS = ("stem", "layer1", "layer2", "layer3", "layer4", "head")


def block_of(layer: str) -> str:
    """The block of :data:`BLOCKS` a layer of :class:`ResNet` belongs to (``backbone.layer3.0.conv2`` -> ``layer3``)."""
    parts = layer.split(".")
    return "head" if parts[0] == "head" else next((p for p in parts if p.startswith("layer")), "stem")


class ResNet(nn.Module):
    """A torchvision ResNet split into ``features`` (up to global pooling) and ``head``."""

    def __init__(self, input_shape: tuple[int, ...], n_classes: int, depth: str = "resnet18",
                 imagenet: bool = False, pretrained_path: str | None = None) -> None:
        super().__init__()
        if depth not in _WEIGHTS:
            raise UserError(f"unknown ResNet {depth!r}; choose one of {sorted(_WEIGHTS)}")
        import torchvision  # imported on use: it takes seconds, and MLP runs never need it

        builder, weights_enum = getattr(torchvision.models, depth), _WEIGHTS[depth]
        weights = None
        if imagenet and pretrained_path is None:
            weights = getattr(torchvision.models, weights_enum).IMAGENET1K_V1
        try:
            net = builder(weights=weights)
        except Exception as exc:  # no network, no cache
            raise UserError(
                f"could not fetch torchvision's ImageNet weights for {depth} ({type(exc).__name__}); "
                "you seem to be offline: pass --pretrained_path <local .pth file> or drop --imagenet"
            ) from exc
        if pretrained_path is not None:
            load_backbone_weights(net, pretrained_path)
        if input_shape[0] != 3:
            net.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.feature_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.backbone = net
        self.head = nn.Linear(self.feature_dim, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def load_backbone_weights(net: nn.Module, path: str) -> None:
    """Load a torchvision-format state dict from ``path``, ignoring its classifier (``fc.*``)."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--pretrained_path {file} does not exist; pass a torchvision ResNet .pth file")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"--pretrained_path {file} is not a readable state dict ({type(exc).__name__}: {exc})") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"--pretrained_path {file} does not hold a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise UserError(
            f"--pretrained_path {file} does not match this ResNet (shapes differ); "
            "was it saved from the same depth (--arch)?"
        ) from exc
    missing = [k for k in result.missing_keys if not k.startswith("fc.")]
    if missing or result.unexpected_keys:
        raise UserError(
            f"--pretrained_path {file} does not match this ResNet: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}; was it saved from the same depth (--arch)?"
        )
