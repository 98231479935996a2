"""The training modes of run.py, each a list of registered methods run by :mod:`methods.runner`.

- ``erm``: train the reference model (``erm.pt``) and evaluate it;
- ``prune``: PruSC on a reference model and clusters (loaded or made here);
- ``retrain``: the retraining recipe on a given (masked or dense) checkpoint;
- ``evaluate``: per-group metrics of a checkpoint;
- ``all``: every method of ``--methods`` on one reference model and one set of clusters, with the
  comparison table and picture.
"""
from __future__ import annotations

import argparse
from typing import Any

from methods.base import Context, Fitted, Method
from methods.runner import finish, make_context, method_result, run_methods
from models.factory import Expect, load_model
from utils.errors import UserError


def run_erm(args: argparse.Namespace) -> dict[str, Any]:
    """``--mode erm``: train ``erm.pt`` (and the ``--cluster_epoch`` snapshot), evaluate it."""
    if args.checkpoint:
        raise UserError("--mode erm trains a new model and takes no --checkpoint; "
                        "use --mode evaluate to score an existing one")
    ctx, clock = make_context(args)
    return finish("erm", ctx, clock, run_methods(ctx, ["erm"]))


def run_prune(args: argparse.Namespace) -> dict[str, Any]:
    """``--mode prune``: reference model and clusters (loaded or made), PruSC, results.json."""
    ctx, clock = make_context(args)
    return finish("prune", ctx, clock, run_methods(ctx, ["prusc"]))


def run_retrain(args: argparse.Namespace) -> dict[str, Any]:
    """``--mode retrain``: retrain a given (masked or dense) checkpoint with its mask fixed."""
    if not args.checkpoint:
        raise UserError("--mode retrain needs --checkpoint (a .pt from --mode erm or --mode prune)")
    ctx, clock = make_context(args, allow_masked_reference=True)
    return finish("retrain", ctx, clock, run_methods(ctx, ["retrain_only"]))


class _Checkpoint(Method):
    """A checkpoint as it is: what ``--mode evaluate`` scores (not a registered method)."""

    name = "checkpoint"
    selection = "as saved"
    group_labels = "as in the run that wrote the checkpoint"

    def fit(self, ctx: Context) -> Fitted:
        args = ctx.args
        loaded = load_model(args.checkpoint, Expect(data=args.data, arch=args.arch, input_shape=ctx.train.input_shape,
                                                    n_classes=ctx.train.n_classes))
        ctx.settle(arch=loaded.checkpoint["arch"])
        return Fitted(loaded.model.to(ctx.device), info={"checkpoint": str(args.checkpoint)}, save=False)


def run_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """``--mode evaluate``: per-group metrics of ``--checkpoint`` on val and test."""
    if not args.checkpoint:
        raise UserError("--mode evaluate needs --checkpoint (a .pt written by another mode)")
    ctx, clock = make_context(args)
    method = _Checkpoint()
    return finish("evaluate", ctx, clock, {method.name: method_result(method, method.fit(ctx), ctx)})


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """``--mode all``: every method of ``--methods`` side by side, with ``report.png``."""
    ctx, clock = make_context(args)
    return finish("all", ctx, clock, run_methods(ctx, args.methods), report=True)
