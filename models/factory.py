"""Models from flags or from a checkpoint, and the checkpoint content of a model.

A checkpoint stores ``arch`` and ``arch_args`` (the constructor's keyword arguments plus the input
shape), so a model is rebuilt without the flags that made it; pretrained-weight options are not
stored, since ``state_dict`` carries the weights.

:func:`load_model` is the one way a checkpoint becomes a model: every check (the file, its content,
the data set, architecture, data flags, input shape and classes it was made for, dense or pruned)
is stated in an :class:`Expect` and fails as one line naming the flag and the fix.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from torch import nn

from data import data_settings
from data.base import SpuriousDataset
from models import ARCHS, build_model
from models.masking import load_mask_logits, set_mask_mode, split_state
from utils.checkpoint import check_data_settings, load_checkpoint, plain_args
from utils.cli import positive_int
from utils.errors import UserError
from utils.options import option


@dataclass(frozen=True)
class ModelConfig:
    """The backbone a run builds (``--arch`` is settled by ``run.resolve`` or adopted from ``--checkpoint``)."""

    arch: str | None = option(None, "backbone (default: the one in --checkpoint, else mlp for digits/cmnist and "
                                    "resnet18 for photo data sets)", choices=sorted(ARCHS))
    hidden_dim: int = option(256, "MLP width", type=positive_int)
    cnn_width: int = option(32, "small CNN base width", type=positive_int)
    imagenet: bool = option(False, "start ResNets from torchvision's ImageNet weights", action="store_true")
    pretrained_path: str | None = option(None, "local torchvision-format ResNet weights (offline)")


def arch_args_from_cli(settings: ModelConfig) -> dict[str, Any]:
    """Constructor keyword arguments of ``settings.arch`` taken from the flags."""
    if settings.arch == "mlp":
        return {"hidden_dim": settings.hidden_dim}
    if settings.arch == "cnn":
        return {"width": settings.cnn_width}
    return {"imagenet": bool(settings.imagenet), "pretrained_path": settings.pretrained_path}


def model_from_args(settings: ModelConfig, train_set: SpuriousDataset) -> tuple[nn.Module, dict[str, Any]]:
    """A fresh model for ``settings.arch`` (the model flags), plus the arguments that rebuild it from a
    checkpoint.

    Pretrained-weight options are not stored: the checkpoint's ``state_dict`` carries the weights.
    """
    arch_args = arch_args_from_cli(settings)
    model = build_model(settings.arch, train_set.input_shape, train_set.n_classes, **arch_args)
    rebuild = {k: v for k, v in arch_args.items() if k not in ("imagenet", "pretrained_path")}
    rebuild["input_shape"] = list(train_set.input_shape)
    return model, rebuild


def model_from_checkpoint(ckpt: dict[str, Any], source: str = "checkpoint") -> nn.Module:
    """Rebuild the model stored in a checkpoint, with its fixed masks when it has ``mask_logits``;
    ``source`` names the file in errors."""
    arch_args = dict(ckpt["arch_args"])
    input_shape = tuple(arch_args.pop("input_shape"))
    model = build_model(ckpt["arch"], input_shape, int(ckpt["n_classes"]), **arch_args)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise UserError(f"{source} weights do not fit architecture {ckpt['arch']!r} with {ckpt['arch_args']} "
                        f"({str(exc).splitlines()[0]}); the file is damaged or was edited") from exc
    if ckpt.get("mask_logits"):
        load_mask_logits(model, ckpt["mask_logits"])
        set_mask_mode(model, "fixed")
    return model


@dataclass(frozen=True)
class Expect:
    """What a checkpoint must have been made for; a check whose field is None (or False) is skipped."""

    data: str | None = None  # the registered data set name (aliases resolved)
    arch: str | None = None
    data_settings: dict[str, Any] | None = None  # the run's data flags (``data.data_settings``)
    input_shape: tuple[int, ...] | None = None  # of the data the model will see
    n_classes: int | None = None
    dense: bool = False  # refuse a pruned checkpoint (one with mask logits)
    flag: str = "--checkpoint"  # the option that gave the path, named in errors


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint, and the checkpoint dict (``arch``, ``arch_args``, ``args``...)."""

    model: nn.Module
    checkpoint: dict[str, Any]


def checked_checkpoint(path: str | os.PathLike, expect: Expect) -> dict[str, Any]:
    """The checkpoint at ``path`` after every check of ``expect`` that needs no model (run.py checks its
    inputs with this before any work; :func:`load_model` then rebuilds the model)."""
    flag = expect.flag
    ckpt = load_checkpoint(path, data=expect.data, arch=expect.arch, flag=flag)
    if expect.data_settings is not None:
        recorded = data_settings(ckpt.get("args") or {})  # its defaults resolved
        check_data_settings(recorded, expect.data_settings, path, flag)
    shape = tuple(ckpt["arch_args"]["input_shape"])
    wrong_shape = expect.input_shape is not None and shape != tuple(expect.input_shape)
    if wrong_shape or (expect.n_classes is not None and int(ckpt["n_classes"]) != expect.n_classes):
        data = f"--data {expect.data}" if expect.data else "the data"
        raise UserError(f"{flag} {path} expects inputs {shape} and {ckpt['n_classes']} classes, but {data} gives "
                        f"{tuple(expect.input_shape or shape)} and {expect.n_classes or ckpt['n_classes']}; pass the "
                        "data flags it was trained with (see its args) or a matching checkpoint")
    if expect.dense and ckpt.get("mask_logits"):
        raise UserError(f"{flag} {path} is already pruned (it holds mask logits); "
                        "PruSC starts from a dense ERM checkpoint written by --mode erm")
    return ckpt


def load_model(path: str | os.PathLike, expect: Expect = Expect()) -> LoadedModel:
    """The model stored at ``path`` (with its fixed masks when pruned), after the checks of ``expect``."""
    ckpt = checked_checkpoint(path, expect)
    return LoadedModel(model_from_checkpoint(ckpt, f"{expect.flag} {path}"), ckpt)


def checkpoint_content(model: nn.Module, recorded: dict[str, Any], arch_args: dict[str, Any],
                       n_classes: int, **extra: Any) -> dict[str, Any]:
    """The checkpoint dict for ``model``; a masked model also stores ``mask_logits``. ``recorded`` is the
    run's arguments as it records them (the resolved flags with what the run settled since, e.g. the
    clusters' ``per_class``): its ``arch`` and ``data`` are the checkpoint's, the whole is its ``args``."""
    state, logits = split_state(model)
    if logits:
        extra["mask_logits"] = logits
    args = plain_args(recorded)
    return {
        "state_dict": state,
        "arch": args["arch"],
        "arch_args": arch_args,
        "data": args["data"],
        "n_classes": int(n_classes),
        "args": args,
        **extra,
    }
