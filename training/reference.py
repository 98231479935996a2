"""The reference (ERM) model and its representation clusters that PruSC and retraining start from.

Either loaded (``--checkpoint``, ``--clusters``) or produced on the spot, as the public reference
did: ERM is trained when no checkpoint is given, clusters are computed when no file is given.
Validation samples get the cluster of the nearest training-cluster centroid in the reference
model's feature space; this is what model selection without group labels uses.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cluster.choose import choose_from_checkpoints, format_choice, snapshot_files
from cluster.fit import ClusterConfig, cluster_features
from cluster.features import cluster_centroids, extract_features
from cluster.io import load_clusters, write_clusters
from cluster.kmeans import assign_nearest, majority_label
from cluster.report import format_summary, summarize
from data import SpuriousDataset
from training.erm import train_and_save_erm
from models.factory import Expect, load_model
from utils.options import from_args
from utils.run_dir import StepState
from utils.runtime import rng_state, runtime_from_args, set_rng_state


@dataclass
class ReferenceModel:
    """The ERM model methods start from, and the checkpoint whose features are clustered."""

    model: nn.Module
    arch_args: dict[str, Any]
    checkpoint: str
    cluster_checkpoint: str
    snapshots: dict[str, str]  # candidate checkpoints of --clusters_auto, by name


@dataclass
class Clusters:
    """Representation clusters of the training split and the nearest-centroid clusters of val."""

    train: torch.Tensor
    val: torch.Tensor
    file: str
    train_features: torch.Tensor  # L2-normalised features of the clustering model, training-split order
    choice: dict | None = None  # what --clusters_auto scored and chose (results.json's clusters_choice)


def load_or_train_reference(args: argparse.Namespace, train_set: SpuriousDataset, device: torch.device,
                            generator: torch.Generator, out_dir: Path, allow_masked: bool = False,
                            resume: StepState | None = None) -> ReferenceModel:
    """The reference model and the checkpoint whose features are clustered.

    ``--checkpoint`` if given (its arch is adopted), else fresh ERM. The clustering model is
    ``--cluster_checkpoint`` if given, else the ERM snapshot of ``--cluster_epoch`` when ERM is
    trained here, else the reference model itself.
    """
    if args.checkpoint:
        loaded = load_model(args.checkpoint, Expect(data=args.data, arch=args.arch, input_shape=train_set.input_shape,
                                                    n_classes=train_set.n_classes, dense=not allow_masked))
        model, ckpt = loaded.model, loaded.checkpoint
        args.arch = ckpt["arch"]
        arch_args, ckpt_path, snapshot = dict(ckpt["arch_args"]), str(args.checkpoint), None
    else:
        print(f"no --checkpoint given: training the ERM reference model ({args.epochs} epochs)")
        erm = train_and_save_erm(args, train_set, device, generator, out_dir, resume)
        model, arch_args, ckpt_path, snapshot = erm.model, erm.arch_args, str(erm.checkpoint), erm.snapshot
    cluster_ckpt = args.cluster_checkpoint or (str(snapshot) if snapshot else ckpt_path)
    snapshots = snapshot_files(ckpt_path, args.cluster_checkpoint)
    return ReferenceModel(model.to(device), arch_args, ckpt_path, cluster_ckpt, snapshots)


def reference_clusters(args: argparse.Namespace, splits: dict[str, SpuriousDataset], reference: ReferenceModel,
                       device: torch.device, out_dir: Path, resume: StepState | None = None) -> Clusters:
    """Training clusters (``--clusters`` or k-means on the clustering model's features, written to
    ``<out_dir>/clusters.csv``) and nearest-centroid val clusters. With ``resume`` they are saved
    once made, and a run continued in the same folder reuses them."""
    saved = resume.load() if resume is not None else None
    if saved is not None:
        print(f"reusing the clusters of the interrupted run ({resume.path})")  # type: ignore[union-attr]
        args.per_class, args.num_clusters = saved["per_class"], saved.get("num_clusters", args.num_clusters)
        reference.cluster_checkpoint = saved.get("cluster_checkpoint", reference.cluster_checkpoint)
        set_rng_state(saved["rng"])
        return Clusters(saved["train"], saved["val"], saved["file"], saved["features"], saved.get("choice"))
    clusters = make_clusters(args, splits, reference, device, out_dir)
    if resume is not None:
        resume.save({"train": clusters.train, "val": clusters.val, "file": clusters.file,
                     "features": clusters.train_features, "per_class": args.per_class,
                     "num_clusters": args.num_clusters, "cluster_checkpoint": reference.cluster_checkpoint,
                     "choice": clusters.choice, "rng": rng_state()})
    return clusters


def make_clusters(args: argparse.Namespace, splits: dict[str, SpuriousDataset], reference: ReferenceModel,
                  device: torch.device, out_dir: Path) -> Clusters:
    """The clusters of :func:`reference_clusters`, computed (with ``--clusters_auto``, the label-free choice)."""
    train, val = splits["train"], splits["val"]
    if args.per_class is None and not args.clusters:
        args.per_class = True  # PruSC's positives need two clusters inside each class
    choice = None
    if args.clusters_auto and not args.clusters:
        chosen, choice = choose_clusters(args, splits, reference, device, out_dir)
        if chosen is not None:
            return chosen
    if reference.cluster_checkpoint == reference.checkpoint:
        cluster_model = reference.model
    else:
        expect = Expect(data=args.data, arch=args.arch, input_shape=train.input_shape, n_classes=train.n_classes,
                        flag="--cluster_checkpoint")
        cluster_model = load_model(reference.cluster_checkpoint, expect).model.to(device)
    runtime = runtime_from_args(args, device)
    feats = extract_features(cluster_model, train, runtime, args.eval_batch_size, num_workers=args.num_workers)
    if args.clusters:
        assign = load_clusters(args.clusters, train)
        clusters_file = str(args.clusters)
    else:
        fit, summary = cluster_features(feats, train, from_args(ClusterConfig, args), args.seed)
        print(format_summary(summary))
        assign = fit.assign
        clusters_file = str(write_clusters(out_dir / "clusters.csv", train, assign))
    val_feats = extract_features(cluster_model, val, runtime, args.eval_batch_size, num_workers=args.num_workers)
    return Clusters(assign, nearest_clusters(feats, assign, train.y, val_feats, val.y), clusters_file, feats, choice)


def choose_clusters(args: argparse.Namespace, splits: dict[str, SpuriousDataset], reference: ReferenceModel,
                    device: torch.device, out_dir: Path) -> tuple[Clusters | None, dict]:
    """``--clusters_auto``: score the snapshots, scopes and k without group labels (:mod:`cluster.choose`),
    print them, and return the chosen clusters (``args`` and ``reference`` updated to the choice) with
    the record of the choice; None instead of clusters when there is no confident choice (the caller
    then makes the default clusters)."""
    default = (f"{Path(reference.cluster_checkpoint).stem}, {'per class' if args.per_class else 'global'}, "
               f"k={args.num_clusters}")
    made = choose_from_checkpoints(reference.snapshots, splits, Expect(data=args.data, arch=args.arch),
                                   runtime_from_args(args, device), args.num_clusters, args.min_cell_size, args.seed)
    print(format_choice(made.choice, default))
    record = {**made.choice.record(), "default": default}
    if made.choice.chosen is None:
        return None, record
    chosen = made.choice.chosen
    args.per_class, args.num_clusters = chosen.candidate.per_class, chosen.candidate.k
    reference.cluster_checkpoint = made.files[chosen.candidate.snapshot]
    train, val = splits["train"], splits["val"]
    feats = nn.functional.normalize(made.train_features[chosen.candidate.snapshot].float(), dim=1)
    print(format_summary(summarize(chosen.fit.assign, train.y, train.a, args.per_class)))
    clusters_file = str(write_clusters(out_dir / "clusters.csv", train, chosen.fit.assign))
    val_feats = made.val_features[chosen.candidate.snapshot]
    val_assign = nearest_clusters(feats, chosen.fit.assign, train.y, val_feats, val.y)
    return Clusters(chosen.fit.assign, val_assign, clusters_file, feats, record), record


def nearest_clusters(train_feats: torch.Tensor, train_assign: torch.Tensor, train_y: torch.Tensor,
                     feats: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Training cluster of the nearest centroid for each new sample.

    When every training cluster holds a single label (per-class clustering) a sample only
    considers the clusters of its own label, as the per-class fit itself did.
    """
    centroids = cluster_centroids(train_feats, train_assign)
    cluster_label = majority_label(train_assign, train_y)
    label_pure = bool((cluster_label[train_assign] == train_y).all())
    if label_pure:
        return assign_nearest(feats, centroids, y, cluster_label)
    return assign_nearest(feats, centroids)
