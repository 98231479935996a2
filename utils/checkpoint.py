"""Checkpoints (ARCHITECTURE.md, "Contracts"): plain dicts loadable with ``weights_only=True``, written atomically.

Content: ``state_dict``, ``arch``, ``arch_args`` (enough to rebuild the model), ``data``,
``n_classes``, ``args`` (the run's arguments as plain values, with what it settled:
``methods.base.Context.recorded_args``) and, for masked models, ``mask_logits``.
"""
from __future__ import annotations

import argparse
import os
import warnings
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


def load_checkpoint(path: str | os.PathLike, data: str | None = None, arch: str | None = None,
                    flag: str = "--checkpoint") -> dict[str, Any]:
    """Load and validate a checkpoint; ``data`` (a registered name, aliases resolved) and ``arch``, when
    given, must match what it holds. ``flag`` names the option that gave ``path`` in errors."""
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.pt"))
        hint = f" (it holds {', '.join(inside[:5])})" if inside else ""
        raise UserError(f"{flag} {path} is a folder{hint}; pass the .pt file itself")
    if not path.is_file():
        raise UserError(f"{flag} {path} does not exist; pass the .pt file written by "
                        f"{'--mode erm' if flag.startswith('--') else 'run.py'}")
    try:
        with warnings.catch_warnings():  # torch warns about a plain pickle's protocol before failing on it
            warnings.simplefilter("ignore", UserWarning)
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle of another format, ...
        raise UserError(f"{flag} {path} could not be read as a checkpoint of this toolkit "
                        f"({_load_failure(exc)}); pass a .pt file written by run.py") from exc
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED_KEYS):
        have = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UserError(
            f"{flag} {path} is not a checkpoint of this toolkit: it needs keys {list(REQUIRED_KEYS)}, has {have}"
        )
    _check_content(ckpt, path, flag)
    if data is not None and ckpt["data"] != data:
        raise UserError(
            f"{flag} {path} was trained on data {ckpt['data']!r}, but --data is {data!r}; "
            "pass the matching --data or a checkpoint trained on it"
        )
    if arch is not None and ckpt["arch"] != arch:
        raise UserError(
            f"{flag} {path} holds architecture {ckpt['arch']!r}, but --arch is {arch!r}; "
            f"pass --arch {ckpt['arch']} or a checkpoint of {arch!r}"
        )
    return ckpt


def _load_failure(exc: Exception) -> str:
    """Why ``torch.load`` failed, in a few words: its own message advises unsafe loading, which we never do."""
    text = str(exc)
    if "Unsupported global" in text:
        return "it holds Python objects other than tensors and plain values"
    if "weights_only" in text:
        return "not a PyTorch checkpoint: damaged, truncated or another format"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(exc).__name__}: {first[:160]}" if first else type(exc).__name__


def _check_content(ckpt: dict[str, Any], path: Path, flag: str) -> None:
    """The pieces a model is rebuilt from: ``arch_args`` with an ``input_shape``, finite tensors."""
    arch_args = ckpt["arch_args"]
    shape = arch_args.get("input_shape") if isinstance(arch_args, dict) else None
    if not isinstance(shape, (list, tuple)) or not all(isinstance(n, int) and n > 0 for n in shape):
        raise UserError(f"{flag} {path} has no valid arch_args.input_shape (found arch_args {arch_args!r}); "
                        "the file was edited or damaged; rewrite it with the mode that made it")
    for group in ("state_dict", "mask_logits"):
        tensors = ckpt.get(group) or {}
        if not isinstance(tensors, dict):
            raise UserError(f"{flag} {path}: {group} must map names to tensors, found {type(tensors).__name__}")
        for name, value in tensors.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(value.isfinite().all()):
                raise UserError(f"{flag} {path}: {group} entry {name!r} holds NaN or infinite values; the model "
                                "diverged or the file is damaged; use an earlier checkpoint or retrain")


def check_data_settings(recorded: dict[str, Any], settings: dict[str, Any], path: str | os.PathLike,
                        flag: str = "--checkpoint") -> None:
    """Refuse a checkpoint whose data flags (``recorded``, from its ``args``) differ from ``settings``
    (both ``data.data_settings``, so a flag left at its default equals the default given explicitly):
    another ``--data_seed`` would put its own training samples into val/test, another
    ``--image_size`` would not even fit the model."""
    for key, value in settings.items():
        if key in recorded and recorded[key] != value:
            def shown(v: Any) -> str:
                return "the default" if v is None else f"--{key} {v}"
            raise UserError(f"{flag} {path} was trained with {shown(recorded[key])}, but this run has "
                            f"{shown(value)}; the splits would not be the ones it was trained on; "
                            f"pass {shown(recorded[key])} (or a checkpoint trained with these data flags)")
