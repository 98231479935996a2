"""Typed settings: a frozen dataclass per group of flags, with each flag's help, type and choices in its field.

    @dataclass(frozen=True)
    class PruneConfig:
        pruning_ep: int = option(20, "mask-learning epochs", type=non_negative(int))

    add_options(group, PruneConfig)        # --pruning_ep in the parser, help and default from the field
    prune = from_args(PruneConfig, args)   # the part a function needs, frozen (an ablation: dataclasses.replace)

The command line stays argparse (the flag is ``--<field name>``); a function takes the part it reads
instead of the whole namespace, so its signature says which settings it depends on.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def option(default: Any, help: str, **flag: Any) -> Any:
    """A dataclass field that is also the flag ``--<name>``; ``flag`` goes to ``add_argument`` (``type``,
    ``choices``, ``action``, ``nargs``, ``const``, ``metavar``)."""
    return dataclasses.field(default=default, metadata={"help": help, "flag": flag})


def add_options(group: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type) -> None:
    """One flag per field of ``cls``, in field order."""
    for field in dataclasses.fields(cls):
        group.add_argument(f"--{field.name}", default=field.default, help=field.metadata["help"],
                           **field.metadata["flag"])


def from_args(cls: type[T], args: argparse.Namespace) -> T:
    """The settings of ``cls`` read from the parsed flags."""
    return cls(**{field.name: getattr(args, field.name) for field in dataclasses.fields(cls)})
