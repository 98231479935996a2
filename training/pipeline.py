"""The PruSC-side modes of run.py: prune, retrain, evaluate and all (ERM -> clusters -> methods).

``--mode all`` puts PruSC beside its ablations on one ERM model and one set of clusters:

- ``erm``: the reference model itself;
- ``retrain_only``: the same retraining recipe applied to the dense ERM model (no mask);
- ``prusc_no_con``: mask learned with CE + sparsity only (``lambda_con_prune = 0``), same retraining;
- ``prusc``: the full method;
- ``oracle_group_balanced``: ERM trained with batches balanced over the TRUE groups and stopped at
  its best true worst-group validation accuracy (uses group labels: a reference, not a competitor).
"""
from __future__ import annotations

import argparse
import copy
import time
from functools import partial
from pathlib import Path

import torch
from torch import nn

from data import SpuriousDataset, build_splits
from models.masking import density_report
from training.erm import train_erm
from training.experiment import checkpoint_content, evaluate_model, model_from_args, model_from_checkpoint, \
    results_payload
from training.loops import BestEpoch
from training.prune import learn_masks
from training.reference import Reference, prepare_reference
from training.retrain import retrain, retrain_data, selection_score
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.errors import UserError
from utils.results import format_comparison, format_group_table, format_split_table, prepare_out_dir, \
    write_results
from utils.runtime import resolve_device, seed_everything


def _setup(args: argparse.Namespace) -> tuple[float, Path, torch.device, dict[str, SpuriousDataset]]:
    started = time.time()
    out_dir = prepare_out_dir(args.out_dir, args.overwrite)
    device = resolve_device(args.device)
    seed_everything(args.seed)
    return started, out_dir, device, build_splits(args)


def _retrain_and_evaluate(model: nn.Module, ref: Reference, splits: dict[str, SpuriousDataset],
                          args: argparse.Namespace, device: torch.device, ckpt_path: Path) -> dict:
    """The shared second half of every method: retrain, save, evaluate, report density."""
    generator = seed_everything(args.seed)
    data = retrain_data(splits, ref.train_clusters, ref.val_clusters, args.retrain_split, args.seed)
    info = retrain(model, data, args, device, generator)
    save_checkpoint(ckpt_path, checkpoint_content(model, args, ref.arch_args, splits["train"].n_classes))
    return {"splits": evaluate_model(model, splits, args, device), "sparsity": density_report(model),
            "retrain": info, "checkpoint": str(ckpt_path)}


def prusc(ref: Reference, splits: dict[str, SpuriousDataset], args: argparse.Namespace, device: torch.device,
          out_dir: Path, name: str = "prusc") -> dict:
    """Prune a copy of the reference model, retrain it, evaluate it."""
    model = copy.deepcopy(ref.model)
    generator = seed_everything(args.seed)
    data = retrain_data(splits, ref.train_clusters, ref.val_clusters, args.retrain_split, args.seed)
    history = learn_masks(model, splits["train"], ref.train_clusters, args, device, generator,
                          save_to=out_dir / f"{name}_pruned.pt", arch_args=ref.arch_args,
                          score=partial(selection_score, data=data, args=args, device=device))
    result = _retrain_and_evaluate(model, ref, splits, args, device, out_dir / f"{name}.pt")
    result["pruning"] = history
    return result


def retrain_only(ref: Reference, splits: dict[str, SpuriousDataset], args: argparse.Namespace,
                 device: torch.device, out_dir: Path, name: str = "retrain_only") -> dict:
    """Retraining alone on a copy of the reference model: the ablation without a (new) mask."""
    return _retrain_and_evaluate(copy.deepcopy(ref.model), ref, splits, args, device, out_dir / f"{name}.pt")


def oracle_group_balanced(splits: dict[str, SpuriousDataset], args: argparse.Namespace,
                          device: torch.device) -> dict:
    """ERM with batches balanced over the true (label, attribute) groups, and the epoch with the best
    true worst-group validation accuracy: group labels for training and for early stopping."""
    train = splits["train"]
    if bool((train.a < 0).any()):
        raise UserError(f"data set {args.data!r} has no attribute labels, so the group-balanced oracle cannot run")
    generator = seed_everything(args.seed)
    model, _ = model_from_args(args, train)
    best = BestEpoch(model)

    def select(epoch: int) -> None:
        best.record(evaluate_model(model, splits, args, device, names=("val",))["val"]["worst_group_acc"], epoch + 1)

    train_erm(model, train, args, device, generator, cells=train.groups, on_epoch_end=select)
    best.restore()
    return {"splits": evaluate_model(model, splits, args, device), "uses_group_labels": True,
            "best_epoch": best.epoch}


def _run_method(args: argparse.Namespace, mode: str, label: str, method, allow_masked: bool = False) -> dict:
    """Set up, prepare the reference, run ``method(ref, splits, args, device, out_dir)``, write results."""
    started, out_dir, device, splits = _setup(args)
    ref = prepare_reference(args, splits, device, seed_everything(args.seed), out_dir, allow_masked=allow_masked)
    result = method(ref, splits, args, device, out_dir)
    payload = results_payload(mode, args, started, result.pop("splits"), **result,
                              reference_checkpoint=ref.checkpoint, clusters=ref.clusters_file,
                              cluster_checkpoint=ref.cluster_checkpoint)
    _finish(out_dir, payload, label)
    return payload


def run_prune(args: argparse.Namespace) -> dict:
    """``--mode prune``: reference model and clusters (loaded or made), PruSC, results.json."""
    return _run_method(args, "prune", "PruSC", prusc)


def run_retrain(args: argparse.Namespace) -> dict:
    """``--mode retrain``: retrain a given (masked or dense) checkpoint with the fixed mask."""
    if not args.checkpoint:
        raise UserError("--mode retrain needs --checkpoint (a .pt from --mode erm or --mode prune)")
    return _run_method(args, "retrain", "retrained", partial(retrain_only, name="retrained"), allow_masked=True)


def run_evaluate(args: argparse.Namespace) -> dict:
    """``--mode evaluate``: per-group metrics of a checkpoint on val and test."""
    if not args.checkpoint:
        raise UserError("--mode evaluate needs --checkpoint (a .pt written by another mode)")
    started, out_dir, device, splits = _setup(args)
    ckpt = load_checkpoint(args.checkpoint, data=args.data, arch=args.arch)
    args.arch = ckpt["arch"]
    model = model_from_checkpoint(ckpt).to(device)
    extra = {"sparsity": density_report(model)} if ckpt.get("mask_logits") else {}
    payload = results_payload("evaluate", args, started, evaluate_model(model, splits, args, device),
                              checkpoint=str(args.checkpoint), **extra)
    _finish(out_dir, payload, "evaluated")
    return payload


def run_all(args: argparse.Namespace) -> dict:
    """``--mode all``: ERM -> clusters -> retrain-only, PruSC without L_con, PruSC, group oracle."""
    started, out_dir, device, splits = _setup(args)
    ref = prepare_reference(args, splits, device, seed_everything(args.seed), out_dir)
    methods = {"erm": {"splits": evaluate_model(ref.model, splits, args, device)}}
    methods["retrain_only"] = retrain_only(ref, splits, args, device, out_dir)
    no_con = argparse.Namespace(**{**vars(args), "lambda_con_prune": 0.0})
    methods["prusc_no_con"] = prusc(ref, splits, no_con, device, out_dir, name="prusc_no_con")
    methods["prusc"] = prusc(ref, splits, args, device, out_dir)
    if args.oracle and bool((splits["train"].a >= 0).all()):
        methods["oracle_group_balanced"] = oracle_group_balanced(splits, args, device)
    payload = results_payload("all", args, started, methods["prusc"]["splits"],
                              sparsity=methods["prusc"]["sparsity"], methods=methods,
                              reference_checkpoint=ref.checkpoint, clusters=ref.clusters_file,
                              cluster_checkpoint=ref.cluster_checkpoint)
    path = write_results(out_dir, payload)
    print(format_comparison(methods, title=f"{args.data}, seed {args.seed}: test accuracy (%)"))
    print(f"results: {path}")
    return payload


def _finish(out_dir: Path, payload: dict, name: str) -> None:
    path = write_results(out_dir, payload)
    print(format_split_table({name: payload["splits"]}, title=f"{payload['mode']} on {payload['data']}"))
    print(format_group_table(payload["splits"]["test"], "test"))
    if "sparsity" in payload:
        print(f"density (kept weights): {100 * payload['sparsity']['overall']:.2f}%")
    print(f"results: {path}")
