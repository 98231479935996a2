"""Data set registry: ``--data`` names map to a builder returning ``{"train", "val", "test"}`` splits.

To add a data set: write ``data/<name>.py`` with ``build(data: DataConfig) -> dict[str, SpuriousDataset]``
and, if it needs flags of its own, a frozen dataclass of them (``utils.options.option`` fields; ``build``
reads them as ``data.own``); then add one ``register`` line below.
"""
from __future__ import annotations

import argparse
from typing import Any, Mapping

from data.base import SpuriousDataset, TensorSpuriousDataset
from data.config import DataConfig, add_data_args, data_config, data_flag_names, probability  # noqa: F401
from data.registry import (REGISTRY, SPLITS, DatasetSpec, canonical_name, dataset_names,  # noqa: F401
                           default_arch, register)  # noqa: F401  (the registry, re-exported)
from utils.errors import UserError

NOT_DATA_SETTINGS = ("data", "train_root_dir", "val_root_dir", "metadata", "num_workers", "augment", "skip_image_check")


def data_settings(flags: Mapping[str, Any]) -> dict:
    """The data flags (of ``flags``: a run's flag values, or those a checkpoint recorded) that decide which
    samples land in which split and how they look: a checkpoint must be used with the same. Excluded: the data
    set's name (checked on its own), paths (data may move) and options that do not change the samples."""
    names = [name for name in data_flag_names() if name not in NOT_DATA_SETTINGS]
    spec = REGISTRY.get(canonical_name(flags["data"])) if flags.get("data") else None
    defaults = spec.defaults if spec is not None else {}
    settings = {name: flags[name] for name in names if name in flags}
    return {name: defaults.get(name) if value is None else value for name, value in settings.items()}


def build_splits(args: argparse.Namespace) -> dict[str, SpuriousDataset]:
    """Build train/val/test for ``--data`` from the parsed flags (read once into a :class:`DataConfig`) and check
    each follows the contract."""
    data = data_config(args)
    spec = REGISTRY[canonical_name(data.data)]
    if data.val_root_dir and not spec.image_files:
        raise UserError(f"--val_root_dir applies to data sets read from image files; {spec.name!r} has none")
    splits = spec.build(data)
    for split in SPLITS:
        if split not in splits or len(splits[split]) == 0:
            raise UserError(f"data set {spec.name!r} has no samples in split {split!r}; check its split column/files")
    if spec.image_files and not data.no_cache:
        images.cache_splits(splits, data)
    uncached = {split: ds for split, ds in splits.items() if getattr(ds, "cache", False) is None}
    if uncached and not data.skip_image_check:  # decoded at every batch: a damaged image must show now
        images.check_images_open(uncached, data.metadata or "the data set's metadata", decode=True)
    return splits


# registration needs the helpers above
from data import celeba, cmnist, custom_csv, digits, images, isic, waterbirds  # noqa: E402

register(DatasetSpec("digits", digits.build, default_arch="mlp", image_files=False,
                    defaults={"spurious_ratio": digits.DEFAULT_SPURIOUS_RATIO, "label_noise": 0.0}))
register(DatasetSpec("cmnist", cmnist.build, cmnist.CmnistConfig, default_arch="mlp", image_files=False,
                    defaults={"spurious_ratio": cmnist.DEFAULT_SPURIOUS_RATIO,
                              "label_noise": cmnist.DEFAULT_LABEL_NOISE}))
register(DatasetSpec("celebA", celeba.build, celeba.CelebAConfig, aliases=("celeba",)))
register(DatasetSpec("waterbirds", waterbirds.build, aliases=("cub",)))
register(DatasetSpec("isic", isic.build))
register(DatasetSpec("csv", custom_csv.build))

__all__ = ["SpuriousDataset", "TensorSpuriousDataset", "build_splits", "add_data_args", "data_settings",
           "dataset_names", "canonical_name", "register", "DatasetSpec", "probability", "SPLITS", "DataConfig",
           "data_config"]
