"""Data set registry: ``--data`` names map to a builder returning ``{"train", "val", "test"}`` splits.

To add a data set: write ``data/<name>.py`` with ``build(args) -> dict[str, SpuriousDataset]``
and, if it needs flags, ``add_args(parser)``; then add one ``register`` line below.
"""
from __future__ import annotations

import argparse

from data.base import SpuriousDataset, TensorSpuriousDataset
from data.registry import (REGISTRY, SPLITS, DatasetSpec, canonical_name, dataset_names,  # noqa: F401
                           default_arch, register)  # noqa: F401  (the registry, re-exported)
from utils.cli import non_negative
from utils.errors import UserError

def add_data_args(parser: argparse.ArgumentParser) -> None:
    """Flags shared by several data sets, then each data set's own flags."""
    group = parser.add_argument_group("data")
    group.add_argument("--data", default="digits", help=f"data set: {', '.join(dataset_names())}")
    group.add_argument("--train_root_dir", default=None, help="folder holding the data set's files")
    group.add_argument("--val_root_dir", default=None,
                       help="photo data sets: folder of the validation images when they live apart from "
                            "--train_root_dir (same relative names)")
    group.add_argument("--spurious_ratio", type=probability, default=None,
                       help="P(attribute agrees with label) in train (None: digits 0.95, cmnist 0.9)")
    group.add_argument("--label_noise", type=probability, default=None,
                       help="probability of flipping a label (None: digits 0, cmnist 0.25)")
    group.add_argument("--data_seed", type=int, default=0, help="seed of the data split and colouring")
    group.add_argument("--num_workers", type=non_negative(int), default=0, help="DataLoader worker processes")
    group.add_argument("--image_size", type=int, default=224,
                       help="photo data sets: side of the square crop fed to the model")
    group.add_argument("--augment", action="store_true",
                       help="photo data sets: random resized crop + horizontal flip in training")
    group.add_argument("--cache_dir", default=None,
                       help="photo data sets: folder of the decode-once image cache "
                            "(None: $XDG_CACHE_HOME/spurious-robustness/images, i.e. ~/.cache/...)")
    group.add_argument("--no_cache", action="store_true",
                       help="photo data sets: decode every image at every batch instead of using the cache")
    group.add_argument("--cache_max_gb", type=non_negative(float), default=32.0,
                       help="photo data sets: most GB the image caches of one run may take on disk (and in "
                            "the page cache); splits beyond it are decoded at every batch")
    group.add_argument("--skip_image_check", action="store_true",
                       help="photo data sets: skip opening every image at start (for very large sets)")
    group.add_argument("--metadata", default=None,
                       help="csv: the metadata CSV; isic: the labels CSV "
                            "(None: isic reads <train_root_dir>/metadata.csv)")
    group.add_argument("--image_col", default=None,
                       help="csv/isic: column of image paths or ids (None: csv image, isic isic_id)")
    group.add_argument("--label_col", default=None,
                       help="csv/isic: column of the label (None: csv label, isic benign_malignant)")
    group.add_argument("--attr_col", default=None,
                       help="csv/isic: column of the spurious attribute (None: csv none, isic patches)")
    group.add_argument("--split_col", default=None,
                       help="csv/isic: column of train/val/test or 0/1/2 (None: 'split' when present, "
                            "else a seeded 80/10/10 split)")
    for spec in REGISTRY.values():
        if spec.add_args is not None:
            spec.add_args(group)


NOT_DATA_SETTINGS = ("data", "train_root_dir", "val_root_dir", "metadata", "num_workers", "augment", "skip_image_check")


def data_settings(args: argparse.Namespace) -> dict:
    """The data flags that decide which samples land in which split and how they look: a checkpoint must
    be used with the same. Excluded: the data set's name (checked on its own), paths (data may move)
    and options that do not change the samples."""
    parser = argparse.ArgumentParser(add_help=False)
    add_data_args(parser)
    names = [a.dest for a in parser._actions if a.dest not in NOT_DATA_SETTINGS]
    spec = REGISTRY.get(canonical_name(args.data)) if getattr(args, "data", None) else None
    defaults = spec.defaults if spec is not None else {}
    settings = {name: getattr(args, name) for name in names if hasattr(args, name)}
    return {name: defaults.get(name) if value is None else value for name, value in settings.items()}


def build_splits(args: argparse.Namespace) -> dict[str, SpuriousDataset]:
    """Build train/val/test for ``args.data`` and check each follows the contract."""
    spec = REGISTRY[canonical_name(args.data)]
    if args.val_root_dir and not spec.image_files:
        raise UserError(f"--val_root_dir applies to data sets read from image files; {spec.name!r} has none")
    splits = spec.build(args)
    for split in SPLITS:
        if split not in splits or len(splits[split]) == 0:
            raise UserError(f"data set {spec.name!r} has no samples in split {split!r}; check its split column/files")
    if spec.image_files and not args.no_cache:
        images.cache_splits(splits, args)
    uncached = {split: ds for split, ds in splits.items() if getattr(ds, "cache", False) is None}
    if uncached and not args.skip_image_check:  # decoded at every batch: a damaged image must show now
        images.check_images_open(uncached, args.metadata or "the data set's metadata", decode=True)
    return splits


def probability(text: str) -> float:
    """argparse type for a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is outside [0, 1]")
    return value


# registration needs the helpers above
from data import celeba, cmnist, custom_csv, digits, images, isic, waterbirds  # noqa: E402

register(DatasetSpec("digits", digits.build, digits.add_args, default_arch="mlp", image_files=False,
                    defaults={"spurious_ratio": digits.DEFAULT_SPURIOUS_RATIO, "label_noise": 0.0}))
register(DatasetSpec("cmnist", cmnist.build, cmnist.add_args, default_arch="mlp", image_files=False,
                    defaults={"spurious_ratio": cmnist.DEFAULT_SPURIOUS_RATIO,
                              "label_noise": cmnist.DEFAULT_LABEL_NOISE}))
register(DatasetSpec("celebA", celeba.build, celeba.add_args, aliases=("celeba",)))
register(DatasetSpec("waterbirds", waterbirds.build, aliases=("cub",)))
register(DatasetSpec("isic", isic.build))
register(DatasetSpec("csv", custom_csv.build))

__all__ = ["SpuriousDataset", "TensorSpuriousDataset", "build_splits", "add_data_args", "data_settings", "dataset_names",
           "canonical_name", "register", "DatasetSpec", "probability", "SPLITS"]
