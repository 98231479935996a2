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
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def option(default: Any, help: str | Callable[[], str], **flag: Any) -> Any:
    """A dataclass field that is also the flag ``--<name>``; ``flag`` goes to ``add_argument`` (``type``,
    ``choices``, ``action``, ``nargs``, ``const``, ``metavar``). ``help`` may be a function, called when the
    parser is built (a list of registered names). A field made without ``option`` is not a flag."""
    return dataclasses.field(default=default, metadata={"help": help, "flag": flag})


def add_options(group: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type) -> None:
    """One flag per :func:`option` field of ``cls``, in field order."""
    for field in flag_fields(cls):
        text = field.metadata["help"]
        group.add_argument(f"--{field.name}", default=field.default, help=text() if callable(text) else text,
                           **field.metadata["flag"])


def from_args(cls: type[T], args: argparse.Namespace) -> T:
    """The settings of ``cls`` read from the parsed flags."""
    return cls(**{field.name: getattr(args, field.name) for field in flag_fields(cls)})


def flag_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls`` that are flags (made with :func:`option`)."""
    return [field for field in dataclasses.fields(cls) if "flag" in field.metadata]
