"""Colored Digits: the embedded default data set (no download), built like ColoredMNIST.

Source: scikit-learn's bundled handwritten digits (1,797 images, 8x8, grey levels 0..16).
Construction, all driven by ``--data_seed``:

1. A fixed seeded split of the 1,797 source images, before any colouring:
   50% train, 25% val, 25% test.
2. Label ``y = 1`` if the digit is < 5 else 0; with ``--label_noise p`` each label is flipped
   with probability p (in every split, as in the IRM paper's ColoredMNIST).
3. Attribute ``a`` is the colour of the digit's strokes, drawn in RGB: colour 0 is orange
   (1, 0.5, 0), colour 1 is azure (0, 0.5, 1). As with real colours the two share a channel
   (green carries the shape at half intensity in both), while red/blue carry it only for one
   colour; a network can therefore rely on the colour or read the shape colour-blind.
   In train the colour agrees with ``y`` with probability ``--spurious_ratio`` (default 0.95).
   In val and test the colour is independent of ``y``: within each class, exactly half of the
   samples (rounded) get each colour, so all four (label, colour) groups are populated.
"""
from __future__ import annotations

import numpy as np
import torch

from data.base import TensorSpuriousDataset
from data.config import DataConfig

DEFAULT_SPURIOUS_RATIO = 0.95
SPLIT_FRACTIONS = (0.5, 0.25, 0.25)
PALETTE = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.5, 1.0]])  # RGB of colour 0 (orange) and 1 (azure)


def colourise(images: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """Draw each grey image (N, H, W) in RGB colour ``PALETTE[colour[i]]``: (N, 3, H, W)."""
    return images[:, None] * PALETTE[colour][:, :, None, None].to(images.dtype)


def make_colored_digits(spurious_ratio: float = DEFAULT_SPURIOUS_RATIO, label_noise: float = 0.0,
                        data_seed: int = 0) -> dict[str, TensorSpuriousDataset]:
    """Build the three splits of Colored Digits (see the module docstring)."""
    from sklearn.datasets import load_digits  # on use: scikit-learn takes seconds to import

    bunch = load_digits()
    images = torch.tensor(bunch.images / 16.0, dtype=torch.float32)
    digits = torch.tensor(bunch.target, dtype=torch.long)
    rng = np.random.default_rng(data_seed)
    order = rng.permutation(len(images))
    n_train = int(SPLIT_FRACTIONS[0] * len(images))
    n_val = int(SPLIT_FRACTIONS[1] * len(images))
    parts = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    splits = {}
    for split, idx in parts.items():
        idx = torch.as_tensor(idx)
        y = (digits[idx] < 5).long()
        flip = torch.as_tensor(rng.random(len(idx)) < label_noise)
        y = torch.where(flip, 1 - y, y)
        if split == "train":
            agree = torch.as_tensor(rng.random(len(idx)) < spurious_ratio)
            a = torch.where(agree, y, 1 - y)
        else:
            a = torch.empty_like(y)
            for cls in (0, 1):
                members = torch.nonzero(y == cls).flatten()
                members = members[torch.as_tensor(rng.permutation(len(members)))]
                a[members] = (torch.arange(len(members)) % 2).long()
        splits[split] = TensorSpuriousDataset(colourise(images[idx], a), y, a, n_classes=2, n_attrs=2, split=split)
    return splits


def build(data: DataConfig) -> dict[str, TensorSpuriousDataset]:
    """Colored Digits from the shared flags alone (--spurious_ratio, --label_noise, --data_seed)."""
    ratio = DEFAULT_SPURIOUS_RATIO if data.spurious_ratio is None else data.spurious_ratio
    noise = 0.0 if data.label_noise is None else data.label_noise
    return make_colored_digits(ratio, noise, data.data_seed)
