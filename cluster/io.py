"""The clusters.csv contract (ARCHITECTURE.md, "Contracts"): write it, and load it with strict checks.

One row per training sample: ``index,label,cluster_assign`` (the public reference's names), plus
``image_id`` when samples have file names and ``attr`` when the spurious attribute is known
(for analysis only: no method reads it).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd
import torch

from data.base import SpuriousDataset
from utils.errors import UserError
from utils.results import atomic_write_text

REQUIRED_COLUMNS = ("index", "label", "cluster_assign")


def write_clusters(path: str | os.PathLike, dataset: SpuriousDataset, assign: torch.Tensor) -> Path:
    """Write ``assign`` (cluster id of each sample, dataset order) as clusters.csv, atomically."""
    assign = torch.as_tensor(assign).long()
    if len(assign) != len(dataset):
        raise ValueError(f"{len(assign)} cluster ids for {len(dataset)} samples")
    frame = pd.DataFrame({"index": range(len(dataset)), "label": dataset.y.numpy(), "cluster_assign": assign.numpy()})
    if dataset.filenames is not None:
        frame["image_id"] = dataset.filenames
    if bool((dataset.a >= 0).any()):
        frame["attr"] = dataset.a.numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, frame.to_csv(index=False))
    return path


def load_clusters(path: str | os.PathLike, dataset: SpuriousDataset) -> torch.Tensor:
    """Cluster id of every sample of ``dataset`` (dataset order), after checking the file matches it.

    Checks: the file exists and parses; the required columns are there; one row per sample;
    ``index`` covers 0..N-1 exactly once; ``label`` agrees with the data set; cluster ids are
    non-negative integers. Each failure names the file, the column and what differs. Ids are
    renumbered 0..K-1 in their order (3,000,000 becomes a small id).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--clusters {path} does not exist; write it with cluster/clustering.py or run.py --mode cluster")
    try:
        frame = pd.read_csv(path)
    except Exception as exc:
        reason = " ".join(str(exc).split())  # pandas' own text may end in a line break
        raise UserError(f"--clusters {path} is not a readable CSV ({type(exc).__name__}: {reason})") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(f"{path} lacks column(s) {missing}; a clusters file needs {list(REQUIRED_COLUMNS)}, "
                        f"found {list(frame.columns)}")
    if frame.empty:
        raise UserError(f"{path} has a header but no rows; write it with cluster/clustering.py or "
                        "run.py --mode cluster")
    for col in REQUIRED_COLUMNS:
        if not pd.api.types.is_integer_dtype(frame[col]):
            empty = frame.index[frame[col].isna()]
            where = f"an empty cell on line {int(empty[0]) + 2}" if len(empty) else f"{frame[col].dtype} values"
            raise UserError(f"{path}: column {col!r} must hold integers (found {where})")
    n = len(dataset)
    if len(frame) != n:
        raise UserError(f"{path} has {len(frame)} rows but the {dataset.split} split has {n} samples; "
                        "was it written for another data set, split or --data_seed?")
    index = frame["index"].to_numpy()
    if index.min() < 0 or index.max() >= n or len(set(index.tolist())) != n:
        dupes = int(len(index) - len(set(index.tolist())))
        raise UserError(f"{path}: column 'index' must list 0..{n - 1} once each "
                        f"(found range {index.min()}..{index.max()}, {dupes} duplicate(s))")
    frame = frame.sort_values("index")
    labels = torch.tensor(frame["label"].to_numpy()).long()
    wrong = torch.nonzero(labels != dataset.y).flatten()
    if len(wrong):
        shown = ", ".join(f"index {int(i)} (csv {int(labels[i])}, data {int(dataset.y[i])})" for i in wrong[:5])
        raise UserError(f"{path}: column 'label' disagrees with the data set at {len(wrong)} row(s): {shown}; "
                        "the file was written for other data (or another --data_seed / --label_noise)")
    assign = torch.tensor(frame["cluster_assign"].to_numpy()).long()
    if int(assign.min()) < 0:
        raise UserError(f"{path}: column 'cluster_assign' has negative ids; cluster ids must be 0, 1, 2, ...")
    return torch.unique(assign, return_inverse=True)[1]  # ids 0..K-1: arrays are sized by the largest id


def warn_single_cluster_classes(path: str | os.PathLike) -> None:
    """PruSC's positives are same-class samples of another cluster: warn about a class that lies in one
    cluster (it has none). Reads only the file; an unreadable one is left to :func:`load_clusters`."""
    try:
        frame = pd.read_csv(path, usecols=["label", "cluster_assign"])
    except Exception:  # reported with its fix when the run loads it
        return
    per_class = frame.groupby("label")["cluster_assign"].nunique()
    lonely = per_class.index[per_class < 2].tolist()
    if not lonely:
        return
    effect = ("in every class, so the contrastive loss of PruSC stays 0" if len(lonely) == len(per_class)
              else "so the contrastive loss of PruSC has no positives in them")
    print(f"warning: {path}: class(es) {lonely} lie in a single cluster, {effect}; "
          "cluster per class (--per_class) or with more clusters", file=sys.stderr)
