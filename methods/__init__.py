"""Method registry: ``--methods`` names map to :class:`methods.base.Method` classes.

To add a method, write ``methods/<name>.py`` with a ``Method`` subclass decorated with
``@register`` and add one import line below; the import order is the default ``--methods`` order
(annotation-free methods first, then those that use group labels).
"""
from __future__ import annotations

import argparse

from methods.base import Context, Fitted, Method
from utils.errors import UserError

REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` available as ``--methods cls.name``."""
    REGISTRY[cls.name] = cls
    return cls


def method_names() -> list[str]:
    """Every registered method, in the default order."""
    return list(REGISTRY)


def parse_methods(text: str) -> list[str]:
    """``--methods``: a comma-separated list of registered names (``all`` for every one)."""
    if text.strip() == "all":
        return method_names()
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in REGISTRY]
    if unknown or not names:
        raise UserError(f"--methods {text!r}: unknown method(s) {unknown}; choose from {', '.join(REGISTRY)} or all")
    return list(dict.fromkeys(names))


def add_method_args(parser: argparse.ArgumentParser) -> None:
    """Each registered method's own flags, in one argument group per method."""
    for cls in REGISTRY.values():
        cls.add_args(parser.add_argument_group(f"method {cls.name}"))


# registration: one line per method, in the default order
from methods import erm  # noqa: E402,F401
from methods import retrain_only  # noqa: E402,F401
from methods import prusc  # noqa: E402,F401
from methods import jtt  # noqa: E402,F401
from methods import irm  # noqa: E402,F401
from methods import groupdro  # noqa: E402,F401
from methods import dfr  # noqa: E402,F401
from methods import oracle  # noqa: E402,F401

__all__ = ["REGISTRY", "register", "method_names", "parse_methods", "add_method_args", "Context", "Fitted",
           "Method"]
