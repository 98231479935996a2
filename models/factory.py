"""Models from flags or from a checkpoint, and the checkpoint content of a model.

A checkpoint stores ``arch`` and ``arch_args`` (the constructor's keyword arguments plus the input
shape), so a model is rebuilt without the flags that made it; pretrained-weight options are not
stored, since ``state_dict`` carries the weights.
"""
from __future__ import annotations

import argparse
from typing import Any

from torch import nn

from data.base import SpuriousDataset
from models import build_model
from models.masking import load_mask_logits, set_mask_mode, split_state
from utils.checkpoint import plain_args
from utils.errors import UserError


def arch_args_from_cli(args: argparse.Namespace) -> dict[str, Any]:
    """Constructor keyword arguments of ``args.arch`` taken from the flags."""
    if args.arch == "mlp":
        return {"hidden_dim": args.hidden_dim}
    if args.arch == "cnn":
        return {"width": args.cnn_width}
    return {"imagenet": bool(args.imagenet), "pretrained_path": args.pretrained_path}


def model_from_args(args: argparse.Namespace, train_set: SpuriousDataset) -> tuple[nn.Module, dict[str, Any]]:
    """A fresh model for ``args.arch``, plus the arguments that rebuild it from a checkpoint.

    Pretrained-weight options are not stored: the checkpoint's ``state_dict`` carries the weights.
    """
    arch_args = arch_args_from_cli(args)
    model = build_model(args.arch, train_set.input_shape, train_set.n_classes, **arch_args)
    rebuild = {k: v for k, v in arch_args.items() if k not in ("imagenet", "pretrained_path")}
    rebuild["input_shape"] = list(train_set.input_shape)
    return model, rebuild


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the model stored in a checkpoint, with its fixed masks when it has ``mask_logits``."""
    arch_args = dict(ckpt["arch_args"])
    input_shape = tuple(arch_args.pop("input_shape"))
    model = build_model(ckpt["arch"], input_shape, int(ckpt["n_classes"]), **arch_args)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise UserError(f"checkpoint weights do not fit architecture {ckpt['arch']!r} with {ckpt['arch_args']} "
                        f"({str(exc).splitlines()[0]}); the file is damaged or was edited") from exc
    if ckpt.get("mask_logits"):
        load_mask_logits(model, ckpt["mask_logits"])
        set_mask_mode(model, "fixed")
    return model


def checkpoint_content(model: nn.Module, args: argparse.Namespace, arch_args: dict[str, Any],
                       n_classes: int, **extra: Any) -> dict[str, Any]:
    """The checkpoint dict for ``model``; a masked model also stores ``mask_logits``."""
    state, logits = split_state(model)
    if logits:
        extra["mask_logits"] = logits
    return {
        "state_dict": state,
        "arch": args.arch,
        "arch_args": arch_args,
        "data": args.data,
        "n_classes": int(n_classes),
        "args": plain_args(args),
        **extra,
    }
