"""Pixel transforms of the photo data sets: resize + centre crop, optional augmentation, as uint8 pixels.

Evaluation resizes the short side to ``size * 256 / 224`` and centre-crops ``size`` (the usual
ImageNet recipe, also used for Waterbirds and CelebA in group_DRO). ``--augment`` replaces this
in training by a random resized crop (70-100% of the area) and a horizontal flip.

Every transform returns the image as a ``(H, W, 3)`` uint8 array: batches travel as 8-bit
pixels and ``utils.runtime.to_device`` converts and normalises them (ImageNet mean/std) on the
device. The image cache (``data/cache.py``) stores the evaluation crop itself, so cached and
decoded evaluation batches are the same bytes; for augmented training it stores the whole image
squeezed to a square, and :func:`augment_batch` draws the same random crops and flips as the
PIL path (same random numbers) and resizes them from there.

torchvision is imported inside the functions that use it: it takes seconds to import, and runs on
the embedded digits or on tensors never need it.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from PIL import Image

from utils.errors import UserError
from utils.runtime import IMAGENET_MEAN, IMAGENET_STD

AUGMENT_SCALE = (0.7, 1.0)
AUGMENT_RATIO = (3 / 4, 4 / 3)



class Pixels:
    """A PIL transform whose result is returned as a ``(H, W, 3)`` uint8 array (picklable for workers)."""

    def __init__(self, transform: Callable[[Image.Image], Image.Image]) -> None:
        self.transform = transform

    def __call__(self, image: Image.Image) -> np.ndarray:
        return np.array(self.transform(image), dtype=np.uint8)


def resize_side(size: int) -> int:
    """Short side the evaluation transform resizes to before its centre crop."""
    return round(size * 256 / 224)


def eval_pixels(size: int) -> Pixels:
    """Deterministic: resize the short side, centre crop to ``size`` x ``size``."""
    from torchvision import transforms as T  # imported on use: torchvision takes seconds to import
    return Pixels(T.Compose([T.Resize(resize_side(size)), T.CenterCrop(size)]))


def augment_pixels(size: int) -> Pixels:
    """Training augmentation on the decoded image: random resized crop and horizontal flip."""
    from torchvision import transforms as T  # imported on use: torchvision takes seconds to import
    return Pixels(T.Compose([T.RandomResizedCrop(size, scale=AUGMENT_SCALE, ratio=AUGMENT_RATIO),
                             T.RandomHorizontalFlip()]))


def square_pixels(size: int) -> Pixels:
    """The whole image resized to a ``resize_side(size)`` square: what the cache keeps for augmentation."""
    from torchvision import transforms as T  # imported on use: torchvision takes seconds to import
    side = resize_side(size)
    return Pixels(T.Resize((side, side)))


def augment_batch(squares: np.ndarray, original_hw: np.ndarray, size: int) -> np.ndarray:
    """Random resized crops + flips of cached squares, ``(B, size, size, 3)`` uint8.

    Crop boxes are drawn for each image's original height and width exactly as the PIL path draws
    them (same calls, same random numbers), mapped onto the square and resized with antialiased
    bilinear interpolation.
    """
    from torchvision import transforms as T  # imported on use: torchvision takes seconds to import
    side = squares.shape[1]
    out = np.empty((len(squares), size, size, 3), dtype=np.uint8)
    for k, (square, (height, width)) in enumerate(zip(squares, original_hw)):
        top, left, h, w = T.RandomResizedCrop.get_params(torch.empty(0, int(height), int(width)),
                                                         list(AUGMENT_SCALE), list(AUGMENT_RATIO))
        y0, x0 = round(top * side / height), round(left * side / width)
        y1 = max(y0 + 1, round((top + h) * side / height))
        x1 = max(x0 + 1, round((left + w) * side / width))
        crop = torch.from_numpy(square[y0:y1, x0:x1]).permute(2, 0, 1).unsqueeze(0).contiguous()
        crop = torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear", antialias=True)
        if torch.rand(1) < 0.5:
            crop = crop.flip(-1)
        out[k] = crop[0].permute(1, 2, 0).numpy()
    return out


def split_pixels(size: int, augment: bool) -> dict[str, Pixels]:
    """The pixel transform of each split; only ``train`` is augmented, and only with ``--augment``."""
    if size < 1:
        raise UserError(f"--image_size {size} is not allowed; it must be >= 1")
    evaluation = eval_pixels(size)
    return {"train": augment_pixels(size) if augment else evaluation, "val": evaluation, "test": evaluation}


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Pixels", "augment_batch", "augment_pixels", "eval_pixels", "resize_side",
           "split_pixels", "square_pixels"]
