"""Cluster the representation space of a trained model: the flags, the fit and ``--mode cluster``.

``run.py --mode cluster`` and the script ``cluster/clustering.py`` both run :func:`run`, which
writes ``clusters.csv`` (ARCHITECTURE.md, "Contracts") and ``cluster_summary.{json,txt}`` (cluster x label x
attribute counts; purity and NMI against the attribute, overall and within each class), and with
``--plot [pca|tsne]`` ``clusters.png``. With ``--clusters FILE`` it checks an existing clusters
file against the data set and reports its quality instead of fitting.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from cluster.choose import SnapshotChoice, choose_from_checkpoints, format_choice, snapshot_files
from cluster.features import extract_features
from cluster.io import load_clusters, write_clusters
from cluster.kmeans import ClusterFit, fit_kmeans, majority_label, select_k
from cluster.report import format_summary, plot_clusters, summarize
from data import SpuriousDataset, build_splits
from models.factory import Expect, load_model
from utils.checkpoint import plain_args
from utils.cli import int_at_least, number_or_words
from utils.distributed import run_on_main
from utils.errors import UserError
from utils.options import add_options, from_args, option
from utils.results import atomic_write_text
from utils.run_dir import CLUSTER_ARGS_NAME, RunKind, prepare_out_dir
from utils.runtime import Runtime, runtime_from_args, seed_everything

CLUSTERS_NAME = "clusters.csv"
SUMMARY_NAME = "cluster_summary"
DEFAULT_NUM_CLUSTERS = 2
DEFAULT_MAX_CLUSTERS = 6
RUN_KIND = RunKind(finished=CLUSTERS_NAME, args_name=CLUSTER_ARGS_NAME, replace_folder=False)  # shares ERM folders
CHECK_KIND = RunKind(finished=f"{SUMMARY_NAME}.json", args_name=CLUSTER_ARGS_NAME, replace_folder=False)


def run_kind(clusters: str | None) -> RunKind:
    """A clustering run is finished by its clusters.csv; a check of a given ``--clusters`` file writes none,
    so its summary marks it finished."""
    return CHECK_KIND if clusters else RUN_KIND


at_least_two = int_at_least(2)  # k-means with one cluster says nothing


num_clusters_type = number_or_words(at_least_two, "auto")  # the upper bound, the sample count, is checked at fit time


@dataclass(frozen=True)
class ClusterConfig:
    """The clustering settings (:func:`add_cluster_args` says why the defaults are what they are)."""

    num_clusters: int | str = option(DEFAULT_NUM_CLUSTERS, "k of k-means (per class with --per_class), or auto: best "
                                                           "silhouette in 2..--max_clusters", type=num_clusters_type)
    max_clusters: int = option(DEFAULT_MAX_CLUSTERS, "largest k tried by --num_clusters auto", type=at_least_two)
    per_class: bool | None = option(None, "cluster each class separately (ids stay unique); default: per class when "
                                          "a run computes its own clusters (--mode prune/retrain/all), over all "
                                          "samples otherwise",
                                    action=argparse.BooleanOptionalAction)
    clusters_auto: bool = option(False, "choose the ERM snapshot to cluster and --per_class (k=2) without group "
                                        "labels: the one whose clusters best predict how many snapshots misclassify "
                                        "each val sample (cluster/choose.py); with ERM trained here, snapshots after "
                                        "epoch 1, E/4 and E/2 are saved as candidates", action="store_true")
    plot: str | None = option(None, "--mode cluster: save clusters.png, a 2-D PCA (default) or t-SNE picture",
                              nargs="?", const="pca", choices=["pca", "tsne"])


def add_cluster_args(parser: argparse.ArgumentParser) -> None:
    """Clustering flags (:class:`ClusterConfig`), shared by run.py (``--mode cluster``, ``prune``, ``all``) and
    cluster/clustering.py.

    The defaults suit a binary spurious attribute such as the colour of Colored Digits and
    ColoredMNIST: 2 clusters over all samples, one per colour, so that each cluster's majority
    label defines the conflicting samples of the IRM environments and same-label samples of the
    other cluster are PruSC's positives. ``--per_class`` (k clusters inside each class) keeps
    positives in every class even when the reference model's clusters follow the labels; it is
    what PruSC uses when it computes clusters itself and the flag is not given (on Colored Digits
    the ERM features cluster by label globally, leaving PruSC almost no positives).
    """
    group = parser.add_argument_group("clustering")
    add_options(group, ClusterConfig)
    group.add_argument("--output_dir", dest="out_dir", default=argparse.SUPPRESS, help="alias of --out_dir")


def cluster_features(features: torch.Tensor, train_set: SpuriousDataset, settings: ClusterConfig,
                     seed: int) -> tuple[ClusterFit, dict]:
    """k-means on ``features`` (k chosen by silhouette for ``auto``) and its quality summary; under
    ``torchrun`` rank 0 fits and every rank gets its result."""
    return run_on_main(_cluster_features, features, train_set, settings, seed, where="while clustering")


def _cluster_features(features: torch.Tensor, train_set: SpuriousDataset, settings: ClusterConfig,
                      seed: int) -> tuple[ClusterFit, dict]:
    per_class = bool(settings.per_class)  # None (flag not given) means over all samples here
    labels = train_set.y if per_class else None
    k, silhouette = settings.num_clusters, None
    if k == "auto":
        k, silhouette = select_k(features, range(2, settings.max_clusters + 1), seed, labels)
    fit = fit_kmeans(features, k, seed, labels)
    if fit.cluster_label is None:
        fit = replace(fit, cluster_label=majority_label(fit.assign, train_set.y))
    return fit, summarize(fit.assign, train_set.y, train_set.a, per_class, silhouette)


def prepare_output(out_dir: str, overwrite: bool) -> Path:
    """The output folder (prepared by rank 0 under ``torchrun``); a finished clustering there is kept
    unless ``--overwrite``.

    Only ``clusters.csv`` counts as finished: clustering may share a folder with its ERM run.
    """
    return prepare_out_dir(out_dir, overwrite, finished=CLUSTERS_NAME)


def default_description(checkpoint: str | None, settings: ClusterConfig) -> str:
    """The clustering ``--mode cluster`` makes of ``checkpoint`` without ``--clusters_auto``, in words."""
    scope = "per class" if settings.per_class else "global"
    return f"{Path(checkpoint or '').stem}, {scope}, k={settings.num_clusters}"


def choose(files: dict[str, str], splits: dict[str, SpuriousDataset], expect: Expect, runtime: Runtime,
           num_clusters: int | str, min_cell_size: int, seed: int, default: str) -> SnapshotChoice:
    """``--clusters_auto``: the label-free choice among the snapshot ``files`` (:func:`cluster.choose.snapshot_files`
    of ``--checkpoint``), printed beside the ``default`` clustering it replaces."""
    made = choose_from_checkpoints(files, splits, expect, runtime, num_clusters, min_cell_size, seed)
    print(format_choice(made.choice, default))
    return made


def chosen_flags(made: SnapshotChoice) -> dict[str, Any]:
    """The flag values a confident ``--clusters_auto`` choice settles (none without one): the scope, k and the
    snapshot clustered, recorded in ``cluster_summary.json``'s ``args``."""
    chosen = made.choice.chosen
    if chosen is None:
        return {}
    return {"per_class": chosen.candidate.per_class, "num_clusters": chosen.candidate.k,
            "cluster_checkpoint": made.files[chosen.candidate.snapshot]}


def run(args: argparse.Namespace) -> dict:
    """``--mode cluster``: fit (or, with ``--clusters``, check) the clusters, save and print the summary."""
    started = time.time()
    if not args.checkpoint and not args.clusters:
        raise UserError("--mode cluster needs --checkpoint (the erm.pt of --mode erm), "
                        "or --clusters FILE to report on an existing clusters file")
    if not args.checkpoint and args.plot:
        raise UserError("--plot needs --checkpoint: the picture projects the model's features")
    if args.clusters_auto and (args.clusters or not args.checkpoint):
        raise UserError("--clusters_auto chooses among the snapshots of --checkpoint (its erm_epoch<E>.pt files "
                        "are candidates too); pass --checkpoint and no --clusters")
    out_dir = prepare_output(args.out_dir, args.overwrite or bool(args.clusters))  # by rank 0 under torchrun
    seed_everything(args.seed)
    splits = build_splits(args)
    train = splits["train"]
    features, made = None, None
    if args.checkpoint:
        model = load_model(args.checkpoint, Expect(data=args.data, arch=args.arch, input_shape=train.input_shape,
                                                   n_classes=train.n_classes)).model
        features = extract_features(model, train, runtime_from_args(args), args.eval_batch_size,
                                    num_workers=args.num_workers)
    default = default_description(args.checkpoint, from_args(ClusterConfig, args))
    if args.clusters_auto:
        made = choose(snapshot_files(args.checkpoint, args.cluster_checkpoint), splits,
                      Expect(data=args.data, arch=args.arch), runtime_from_args(args), args.num_clusters,
                      args.min_cell_size, args.seed, default)
    chosen = None if made is None else made.choice.chosen
    settled = {} if made is None else chosen_flags(made)
    if chosen is not None:
        features = made.train_features[chosen.candidate.snapshot]  # type: ignore[union-attr]
        assign = chosen.fit.assign
        summary = summarize(assign, train.y, train.a, chosen.candidate.per_class)
        summary["clusters_file"] = str(write_clusters(out_dir / CLUSTERS_NAME, train, assign))
    elif args.clusters:
        assign = load_clusters(args.clusters, train)
        summary = summarize(assign, train.y, train.a, per_class=None)
    else:
        fit, summary = cluster_features(features, train, from_args(ClusterConfig, args), args.seed)
        assign = fit.assign
        summary["clusters_file"] = str(write_clusters(out_dir / CLUSTERS_NAME, train, assign))
    if args.plot:
        summary["plot"] = str(run_on_main(plot_clusters, features, assign, train.y, train.a,
                                          out_dir / "clusters.png", args.plot, args.seed, where="while plotting"))
    if made is not None:
        summary["clusters_choice"] = {**made.choice.record(), "default": default}
    text = format_summary(summary)
    payload = {"mode": "cluster", "data": args.data, "checkpoint": args.checkpoint, "clusters": args.clusters,
               "args": plain_args({**vars(args), **settled}), "time_s": round(time.time() - started, 3), **summary}
    atomic_write_text(out_dir / f"{SUMMARY_NAME}.json", json.dumps(payload, indent=2) + "\n")
    atomic_write_text(out_dir / f"{SUMMARY_NAME}.txt", text + "\n")
    print(text)
    print(f"summary:  {out_dir / SUMMARY_NAME}.json")
    return payload
