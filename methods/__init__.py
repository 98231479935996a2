"""Method registry: ``--methods`` names map to :class:`methods.base.Method` classes.

To add a method, write ``methods/<name>.py`` with a ``Method`` subclass decorated with
``@register`` (from :mod:`methods.registry`) and add one import line below; the import order is
the default ``--methods`` order (annotation-free methods first, then those that use group labels).
"""
from __future__ import annotations

from methods.base import Context, Fitted, Method
from methods.registry import REGISTRY, add_method_args, method_input_flags, method_names, parse_methods, register

# registration: one line per method, in the default order
from methods import erm  # noqa: E402,F401
from methods import retrain_only  # noqa: E402,F401
from methods import prusc  # noqa: E402,F401
from methods import jtt  # noqa: E402,F401
from methods import irm  # noqa: E402,F401
from methods import groupdro  # noqa: E402,F401
from methods import dfr  # noqa: E402,F401
from methods import oracle  # noqa: E402,F401

__all__ = ["REGISTRY", "register", "method_names", "method_input_flags", "parse_methods", "add_method_args",
           "Context", "Fitted", "Method"]
