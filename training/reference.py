"""The reference (ERM) model and its representation clusters that PruSC and retraining start from.

Either loaded (``--checkpoint``, ``--clusters``) or produced on the spot, as the public reference
did: ERM is trained when no checkpoint is given, clusters are computed when no file is given.
Validation samples get the cluster of the nearest training-cluster centroid in the reference
model's feature space; this is what model selection without group labels uses.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
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
from training.erm import TrainConfig, train_and_save_erm
from models.factory import Expect, ModelConfig, load_model
from utils.run_dir import StepState
from utils.runtime import Runtime, rng_state, set_rng_state


@dataclass(frozen=True)
class ReferenceSource:
    """Where the reference model and its clusters come from: run.py's own flags, and the data set they
    must have been made for."""

    data: str
    checkpoint: str | None = None  # --checkpoint: the reference model (None: ERM trained here)
    cluster_checkpoint: str | None = None  # --cluster_checkpoint: the model whose features are clustered
    cluster_epoch: int | None = None  # --cluster_epoch (settled by run.resolve): the ERM snapshot clustered
    clusters: str | None = None  # --clusters: a clusters file instead of k-means


@dataclass(frozen=True)
class ReferenceModel:
    """The ERM model methods start from, and the checkpoint whose features are clustered."""

    model: nn.Module
    arch: str  # settled here: --checkpoint's, else the one trained (the caller records it as --arch)
    arch_args: dict[str, Any]
    checkpoint: str
    cluster_checkpoint: str  # the default; a --clusters_auto choice is the Clusters' own
    snapshots: dict[str, str]  # candidate checkpoints of --clusters_auto, by name
    train_loss: tuple[float, ...] | None = None  # mean loss of each ERM epoch when trained here (not --checkpoint)


@dataclass(frozen=True)
class Clusters:
    """Representation clusters of the training split and the nearest-centroid clusters of val, and the
    clustering they settled (the caller records ``settings.per_class`` and ``settings.num_clusters`` as the
    run's flags)."""

    train: torch.Tensor
    val: torch.Tensor
    file: str
    train_features: torch.Tensor  # L2-normalised features of the clustering model, training-split order
    settings: ClusterConfig  # as used: --per_class settled (True when computed here), the --clusters_auto choice
    cluster_checkpoint: str  # the checkpoint whose features were clustered
    choice: dict | None = None  # what --clusters_auto scored and chose (results.json's clusters_choice)


def load_or_train_reference(source: ReferenceSource, settings: ModelConfig, train: TrainConfig, clusters_auto: bool,
                            runtime: Runtime, train_set: SpuriousDataset, generator: torch.Generator, out_dir: Path,
                            recorded: dict[str, Any], allow_masked: bool = False,
                            resume: StepState | None = None) -> ReferenceModel:
    """The reference model and the checkpoint whose features are clustered.

    ``--checkpoint`` if given (its arch is adopted), else fresh ERM (``clusters_auto`` saves its candidate
    snapshots; ``recorded``: the run's arguments its checkpoints record). The clustering model is
    ``--cluster_checkpoint`` if given, else the ERM snapshot of ``--cluster_epoch`` when ERM is
    trained here, else the reference model itself.
    """
    if source.checkpoint:
        loaded = load_model(source.checkpoint, Expect(data=source.data, arch=settings.arch,
                                                      input_shape=train_set.input_shape,
                                                      n_classes=train_set.n_classes, dense=not allow_masked))
        model, ckpt = loaded.model, loaded.checkpoint
        arch, arch_args, ckpt_path, snapshot = ckpt["arch"], dict(ckpt["arch_args"]), str(source.checkpoint), None
        losses = None
    else:
        print(f"no --checkpoint given: training the ERM reference model ({train.epochs} epochs)")
        erm = train_and_save_erm(settings, train, runtime, train_set, generator, out_dir, source.cluster_epoch,
                                 clusters_auto, recorded, resume)
        model, arch, arch_args, losses = erm.model, settings.arch, erm.arch_args, tuple(erm.losses)
        ckpt_path, snapshot = str(erm.checkpoint), erm.snapshot
    cluster_ckpt = source.cluster_checkpoint or (str(snapshot) if snapshot else ckpt_path)
    snapshots = snapshot_files(ckpt_path, source.cluster_checkpoint)
    return ReferenceModel(model.to(runtime.device), arch, arch_args, ckpt_path, cluster_ckpt, snapshots, losses)


def reference_clusters(source: ReferenceSource, settings: ClusterConfig, min_cell_size: int, seed: int,
                       splits: dict[str, SpuriousDataset], reference: ReferenceModel, runtime: Runtime, out_dir: Path,
                       resume: StepState | None = None) -> Clusters:
    """Training clusters (``--clusters`` or k-means on the clustering model's features, written to
    ``<out_dir>/clusters.csv``) and nearest-centroid val clusters. With ``resume`` they are saved
    once made, and a run continued in the same folder reuses them (with the settings they were made with)."""
    saved = resume.load() if resume is not None else None
    if saved is not None:
        print(f"reusing the clusters of the interrupted run ({resume.path})")  # type: ignore[union-attr]
        made_with = replace(settings, per_class=saved["per_class"],
                            num_clusters=saved.get("num_clusters", settings.num_clusters))
        set_rng_state(saved["rng"])
        return Clusters(saved["train"], saved["val"], saved["file"], saved["features"], made_with,
                        saved.get("cluster_checkpoint", reference.cluster_checkpoint), saved.get("choice"))
    clusters = make_clusters(source, settings, min_cell_size, seed, splits, reference, runtime, out_dir)
    if resume is not None:
        resume.save({"train": clusters.train, "val": clusters.val, "file": clusters.file,
                     "features": clusters.train_features, "per_class": clusters.settings.per_class,
                     "num_clusters": clusters.settings.num_clusters, "cluster_checkpoint": clusters.cluster_checkpoint,
                     "choice": clusters.choice, "rng": rng_state()})
    return clusters


def make_clusters(source: ReferenceSource, settings: ClusterConfig, min_cell_size: int, seed: int,
                  splits: dict[str, SpuriousDataset], reference: ReferenceModel, runtime: Runtime,
                  out_dir: Path) -> Clusters:
    """The clusters of :func:`reference_clusters`, computed (with ``--clusters_auto``, the label-free choice)."""
    train, val = splits["train"], splits["val"]
    if settings.per_class is None and not source.clusters:
        settings = replace(settings, per_class=True)  # PruSC's positives need two clusters inside each class
    choice = None
    if settings.clusters_auto and not source.clusters:
        chosen, choice = choose_clusters(source.data, settings, min_cell_size, seed, splits, reference, runtime,
                                         out_dir)
        if chosen is not None:
            return chosen
    if reference.cluster_checkpoint == reference.checkpoint:
        cluster_model = reference.model
    else:
        expect = Expect(data=source.data, arch=reference.arch, input_shape=train.input_shape,
                        n_classes=train.n_classes, flag="--cluster_checkpoint")
        cluster_model = load_model(reference.cluster_checkpoint, expect).model.to(runtime.device)
    feats = extract_features(cluster_model, train, runtime, runtime.eval_batch_size, num_workers=runtime.num_workers)
    if source.clusters:
        assign = load_clusters(source.clusters, train)
        clusters_file = str(source.clusters)
    else:
        fit, summary = cluster_features(feats, train, settings, seed)
        print(format_summary(summary))
        assign = fit.assign
        clusters_file = str(write_clusters(out_dir / "clusters.csv", train, assign))
    val_feats = extract_features(cluster_model, val, runtime, runtime.eval_batch_size, num_workers=runtime.num_workers)
    return Clusters(assign, nearest_clusters(feats, assign, train.y, val_feats, val.y), clusters_file, feats,
                    settings, reference.cluster_checkpoint, choice)


def choose_clusters(data: str, settings: ClusterConfig, min_cell_size: int, seed: int,
                    splits: dict[str, SpuriousDataset], reference: ReferenceModel, runtime: Runtime,
                    out_dir: Path) -> tuple[Clusters | None, dict]:
    """``--clusters_auto``: score the snapshots, scopes and k without group labels (:mod:`cluster.choose`),
    print them, and return the chosen clusters (their ``settings`` and ``cluster_checkpoint`` those of the
    choice) with the record of the choice; None instead of clusters when there is no confident choice (the
    caller then makes the default clusters)."""
    default = (f"{Path(reference.cluster_checkpoint).stem}, {'per class' if settings.per_class else 'global'}, "
               f"k={settings.num_clusters}")
    made = choose_from_checkpoints(reference.snapshots, splits, Expect(data=data, arch=reference.arch),
                                   runtime, settings.num_clusters, min_cell_size, seed)
    print(format_choice(made.choice, default))
    record = {**made.choice.record(), "default": default}
    if made.choice.chosen is None:
        return None, record
    chosen = made.choice.chosen
    settings = replace(settings, per_class=chosen.candidate.per_class, num_clusters=chosen.candidate.k)
    train, val = splits["train"], splits["val"]
    feats = nn.functional.normalize(made.train_features[chosen.candidate.snapshot].float(), dim=1)
    print(format_summary(summarize(chosen.fit.assign, train.y, train.a, settings.per_class)))
    clusters_file = str(write_clusters(out_dir / "clusters.csv", train, chosen.fit.assign))
    val_feats = made.val_features[chosen.candidate.snapshot]
    val_assign = nearest_clusters(feats, chosen.fit.assign, train.y, val_feats, val.y)
    return Clusters(chosen.fit.assign, val_assign, clusters_file, feats, settings,
                    made.files[chosen.candidate.snapshot], record), record


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
