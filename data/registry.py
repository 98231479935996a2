"""The ``--data`` registry itself (names, aliases, builders), apart from ``data/__init__.py`` so that
the data set modules can use it without importing the package that imports them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from data.base import SpuriousDataset
from utils.errors import UserError

SPLITS = ("train", "val", "test")


@dataclass
class DatasetSpec:
    name: str
    build: Callable[[Any], dict[str, SpuriousDataset]]  # given the run's data.config.DataConfig
    config: type | None = None  # the frozen dataclass of the data set's own flags (DataConfig.own)
    aliases: tuple[str, ...] = field(default_factory=tuple)
    default_arch: str = "resnet18"  # used when neither --arch nor --checkpoint names one
    image_files: bool = True  # read from image files (False: built in memory, like digits and cmnist)
    defaults: dict = field(default_factory=dict)  # what a data flag left at None means for this data set


REGISTRY: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> None:
    REGISTRY[spec.name] = spec


def canonical_name(name: str) -> str:
    """The registered name for ``name`` or one of its aliases; raise a clear error otherwise."""
    for spec in REGISTRY.values():
        if name == spec.name or name in spec.aliases:
            return spec.name
    raise UserError(f"unknown --data {name!r}; choose one of {', '.join(dataset_names())}")


def default_arch(name: str) -> str:
    """The backbone a data set uses unless told otherwise (MLP for small images, ResNet-18 for photos)."""
    return REGISTRY[canonical_name(name)].default_arch


def dataset_names() -> list[str]:
    """All accepted ``--data`` values, aliases included."""
    names: list[str] = []
    for spec in REGISTRY.values():
        names += [spec.name, *spec.aliases]
    return names
