"""Checkpoints (ARCHITECTURE.md, "Contracts"): plain dicts loadable with ``weights_only=True``, written atomically.

Content: ``state_dict``, ``arch``, ``arch_args`` (enough to rebuild the model), ``data``,
``n_classes``, ``args`` (the argparse namespace as a dict of plain values) and, for masked
models, ``mask_logits``.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch

from utils.errors import UserError
from utils.results import atomic_write

REQUIRED_KEYS = ("state_dict", "arch", "arch_args", "data", "n_classes")


def plain_args(args: argparse.Namespace | dict) -> dict[str, Any]:
    """The namespace with only JSON/``weights_only``-safe values (paths and the like as strings)."""
    items = vars(args) if isinstance(args, argparse.Namespace) else args
    out: dict[str, Any] = {}
    for key, value in items.items():
        if value is None or isinstance(value, (bool, int, float, str)):
            out[key] = value
        elif isinstance(value, (list, tuple)):
            out[key] = [v if isinstance(v, (bool, int, float, str)) else str(v) for v in value]
        else:
            out[key] = str(value)
    return out


def save_checkpoint(path: str | os.PathLike, content: dict[str, Any]) -> Path:
    """Save ``content`` to ``path`` through a temporary file and an atomic rename."""
    missing = [k for k in REQUIRED_KEYS if k not in content]
    if missing:
        raise ValueError(f"checkpoint content lacks {missing}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: torch.save(content, tmp))


def load_checkpoint(path: str | os.PathLike, data: str | None = None, arch: str | None = None) -> dict[str, Any]:
    """Load and validate a checkpoint; ``data`` (a registered name, aliases resolved) and ``arch``, when
    given, must match what it holds."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--checkpoint {path} does not exist; pass the .pt file written by --mode erm")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle of another format, ...
        raise UserError(f"--checkpoint {path} could not be read as a checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED_KEYS):
        have = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UserError(
            f"--checkpoint {path} is not a checkpoint of this toolkit: it needs keys {list(REQUIRED_KEYS)}, has {have}"
        )
    if data is not None and ckpt["data"] != data:
        raise UserError(
            f"--checkpoint {path} was trained on data {ckpt['data']!r}, but --data is {data!r}; "
            "pass the matching --data or a checkpoint trained on it"
        )
    if arch is not None and ckpt["arch"] != arch:
        raise UserError(
            f"--checkpoint {path} holds architecture {ckpt['arch']!r}, but --arch is {arch!r}; "
            f"pass --arch {ckpt['arch']} or a checkpoint of {arch!r}"
        )
    return ckpt

