"""The data flags as typed settings: :class:`DataConfig` holds the flags every data set shares and, in ``own``,
the chosen data set's own settings (the frozen dataclass its registry entry declares, e.g. cmnist's)."""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any

from data.registry import REGISTRY, canonical_name, dataset_names
from utils.cli import non_negative, seed_int
from utils.options import add_options, flag_fields, from_args, option


def probability(text: str) -> float:
    """argparse type for a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is outside [0, 1]")
    return value


@dataclass(frozen=True)
class DataConfig:
    """What a data set's ``build`` reads: the shared data flags, and ``own``, its own settings (None without)."""

    data: str = option("digits", lambda: f"data set: {', '.join(dataset_names())}")
    train_root_dir: str | None = option(None, "folder holding the data set's files")
    val_root_dir: str | None = option(None, "photo data sets: folder of the validation images when they live apart "
                                            "from --train_root_dir (same relative names)")
    spurious_ratio: float | None = option(None, "P(attribute agrees with label) in train (None: digits 0.95, cmnist "
                                                "0.9)", type=probability)
    label_noise: float | None = option(None, "probability of flipping a label (None: digits 0, cmnist 0.25)",
                                       type=probability)
    data_seed: int = option(0, "seed of the data split and colouring", type=seed_int)
    num_workers: int = option(0, "DataLoader worker processes", type=non_negative(int))
    image_size: int = option(224, "photo data sets: side of the square crop fed to the model", type=int)
    augment: bool = option(False, "photo data sets: random resized crop + horizontal flip in training",
                           action="store_true")
    cache_dir: str | None = option(None, "photo data sets: folder of the decode-once image cache (None: "
                                         "$XDG_CACHE_HOME/spurious-robustness/images, i.e. ~/.cache/...)")
    no_cache: bool = option(False, "photo data sets: decode every image at every batch instead of using the cache",
                            action="store_true")
    cache_max_gb: float = option(32.0, "photo data sets: most GB the image caches of one run may take on disk (and "
                                       "in the page cache); splits beyond it are decoded at every batch",
                                 type=non_negative(float))
    skip_image_check: bool = option(False, "photo data sets: skip opening every image at start (for very large sets)",
                                    action="store_true")
    metadata: str | None = option(None, "csv: the metadata CSV; isic: the labels CSV (None: isic reads "
                                        "<train_root_dir>/metadata.csv)")
    image_col: str | None = option(None, "csv/isic: column of image paths or ids (None: csv image, isic isic_id)")
    label_col: str | None = option(None, "csv/isic: column of the label (None: csv label, isic benign_malignant)")
    attr_col: str | None = option(None, "csv/isic: column of the spurious attribute (None: csv none, isic patches)")
    split_col: str | None = option(None, "csv/isic: column of train/val/test or 0/1/2 (None: 'split' when present, "
                                         "else a seeded 80/10/10 split)")
    own: Any = None  # the data set's own settings (not a flag)


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """The shared data flags (:class:`DataConfig`), then each data set's own."""
    group = parser.add_argument_group("data")
    add_options(group, DataConfig)
    for spec in REGISTRY.values():
        if spec.config is not None:
            add_options(group, spec.config)


def data_config(args: argparse.Namespace) -> DataConfig:
    """The data settings of the parsed flags, with the settings of ``--data``'s own dataclass as ``own``."""
    config = REGISTRY[canonical_name(args.data)].config
    return dataclasses.replace(from_args(DataConfig, args), own=None if config is None else from_args(config, args))


def data_flag_names() -> list[str]:
    """Every data flag's name (without ``--``), shared ones first, in parser order."""
    classes = [DataConfig, *(spec.config for spec in REGISTRY.values() if spec.config is not None)]
    return [field.name for cls in classes for field in flag_fields(cls)]
