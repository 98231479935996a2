"""Image transforms of the photo data sets: ImageNet normalisation, resize + centre crop, optional augmentation.

Evaluation resizes the short side to ``size * 256 / 224`` and centre-crops ``size`` (the usual
ImageNet recipe, also used for Waterbirds and CelebA in group_DRO). ``--augment`` replaces this
in training by a random resized crop (70-100% of the area) and a horizontal flip.
"""
from __future__ import annotations

from typing import Callable

from torchvision import transforms as T

from utils.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AUGMENT_SCALE = (0.7, 1.0)


def _to_normalised_tensor() -> list[Callable]:
    return [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def eval_transform(size: int) -> T.Compose:
    """Deterministic: resize, centre crop to ``size`` x ``size``, normalise."""
    return T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size), *_to_normalised_tensor()])


def augment_transform(size: int) -> T.Compose:
    """Training augmentation: random resized crop and horizontal flip, then normalise."""
    return T.Compose([T.RandomResizedCrop(size, scale=AUGMENT_SCALE), T.RandomHorizontalFlip(),
                      *_to_normalised_tensor()])


def split_transforms(size: int, augment: bool) -> dict[str, T.Compose]:
    """The transform of each split; only ``train`` is augmented, and only with ``--augment``."""
    if size < 1:
        raise UserError(f"--image_size {size} is not allowed; it must be >= 1")
    evaluation = eval_transform(size)
    return {"train": augment_transform(size) if augment else evaluation, "val": evaluation, "test": evaluation}
