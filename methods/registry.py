"""The method registry itself: ``--methods`` names map to :class:`methods.base.Method` classes.

Method files import :func:`register` from here (not from the package, whose ``__init__`` imports
them), so no module imports one that imports it back.
"""
from __future__ import annotations

import argparse

from methods.base import Method
from utils.errors import UserError

REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` available as ``--methods cls.name``."""
    REGISTRY[cls.name] = cls
    return cls


def method_names() -> list[str]:
    """Every registered method, in the default order."""
    return list(REGISTRY)


def method_input_flags() -> tuple[str, ...]:
    """Every registered method's flags that name inputs (``Method.input_flags``), in registry order."""
    return tuple(flag for cls in REGISTRY.values() for flag in cls.input_flags)


def parse_methods(text: str) -> list[str]:
    """``--methods``: a comma-separated list of registered names (``all`` for every one)."""
    if text.strip() == "all":
        return method_names()
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UserError(f"--methods {text!r} is empty; name at least one of {', '.join(REGISTRY)}, or all")
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise UserError(f"--methods {text!r}: unknown method(s) {unknown}; choose from {', '.join(REGISTRY)} or all")
    return list(dict.fromkeys(names))


def add_method_args(parser: argparse.ArgumentParser) -> None:
    """Each registered method's own flags, in one argument group per method (a variant that inherits its
    parent's flags, such as prusc_no_con, adds none)."""
    for cls in REGISTRY.values():
        if "add_args" in vars(cls) or "config" in vars(cls):
            cls.add_args(parser.add_argument_group(f"method {cls.name}"))
