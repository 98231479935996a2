"""Two IRM training environments from representation clusters: the construction and the environment files.

IRM can only tell an invariant feature from a spurious one when the spurious feature relates to
the label differently in different environments. ERM clusters follow the spurious attribute, so a
sample whose label differs from the majority label of its cluster is probably one where the
attribute disagrees with the label; collecting those samples gives an environment whose
label-attribute agreement is far from the rest of the data.

Exact construction (every random draw uses ``--seed``):

1. ``conflicting[i] = label[i] != majority label of cluster[i]`` (a tie goes to the smaller label).
2. The training split is shuffled; the first ``round(balanced_fraction * N)`` samples are the
   *balanced* environment: a uniform random sample, so its label-attribute statistics are those
   of the whole split.
3. Of the other samples, the *minority* environment takes every conflicting one plus randomly
   chosen non-conflicting ones, as many as make conflicting samples ``minority_share`` of it (all
   of them when there are too few). The non-conflicting samples left over are used by neither.

Output: ``OUT/minority/`` and ``OUT/balanced/``, each with ``indices.csv`` (one row per member:
``index,label,cluster_assign,conflicting``, index = position in the training split) and
``environment.json`` (data set name and the data flags that rebuild it, training-split size and
input shape, the construction's settings, size, share of conflicting samples and, where the
attribute is known, the label-attribute agreement ``P(a == y)``).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import torch

from cluster.io import load_clusters
from cluster.kmeans import majority_label
from data import SpuriousDataset, add_data_args
from utils.errors import UserError
from utils.results import atomic_write_text
from utils.run_dir import is_orphan

ROLES = ("minority", "balanced")
SUMMARY_NAME = "environment.json"
INDICES_NAME = "indices.csv"
PATH_FLAG_SUFFIXES = ("_dir", "_path", "_file", "metadata")
WEAK_CONTRAST = 0.1


def conflicting_mask(labels: torch.Tensor, clusters: torch.Tensor) -> torch.Tensor:
    """True where a sample's label differs from the majority label of its cluster."""
    return labels != majority_label(clusters, labels)[clusters]


def split_environments(conflicting: torch.Tensor, balanced_fraction: float, minority_share: float,
                       seed: int) -> dict[str, torch.Tensor]:
    """Sorted training indices of the ``minority`` and ``balanced`` environments (construction above)."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(conflicting), generator=gen)
    n_balanced = round(balanced_fraction * len(order))
    if n_balanced == 0:
        raise UserError(f"--balanced_fraction {balanced_fraction} of {len(order)} samples leaves the balanced "
                        "environment empty; raise --balanced_fraction")
    rest = order[n_balanced:]
    rest_conflicting = rest[conflicting[rest]]
    if len(rest_conflicting) == 0:
        raise UserError(
            f"no conflicting sample is left for the minority environment ({int(conflicting.sum())} conflicting "
            f"in all, --balanced_fraction {balanced_fraction}); lower --balanced_fraction, or re-cluster with "
            "more clusters (--num_clusters) or from an earlier reference checkpoint")
    rest_aligned = rest[~conflicting[rest]]
    n_aligned = round(len(rest_conflicting) * (1 - minority_share) / minority_share)
    minority = torch.cat([rest_conflicting, rest_aligned[:n_aligned]])
    return {"minority": minority.sort().values, "balanced": order[:n_balanced].sort().values}


def label_attr_agreement(y: torch.Tensor, a: torch.Tensor) -> float | None:
    """``P(a == y)``: the strength of the label-attribute correlation; None when ``a`` is unknown."""
    if len(y) == 0 or bool((a < 0).any()):
        return None
    return float((a == y).double().mean())


def data_flag_defaults() -> dict[str, Any]:
    """Every data flag (``add_data_args``) with its default value."""
    parser = argparse.ArgumentParser(add_help=False)
    add_data_args(parser)
    return vars(parser.parse_args([]))


def data_flags(values: Mapping[str, Any]) -> dict[str, Any]:
    """The data flags among a run's flag ``values``, with path flags made absolute so irm.py may run from another
    folder."""
    flags = {}
    for key in data_flag_defaults():
        value = values[key]
        if isinstance(value, str) and key.endswith(PATH_FLAG_SUFFIXES):
            value = str(Path(value).resolve())
        flags[key] = value
    return flags


def rebuild_data_args(flags: dict[str, Any]) -> argparse.Namespace:
    """A namespace that ``build_splits`` accepts: current defaults overridden by the recorded flags."""
    return argparse.Namespace(**{**data_flag_defaults(), **flags})


def mark_conflicting(train: SpuriousDataset, clusters_path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster ids (validated against ``train``) and the conflicting mask; fail when nothing conflicts."""
    clusters = load_clusters(clusters_path, train)
    conflicting = conflicting_mask(train.y, clusters)
    if not bool(conflicting.any()):
        raise UserError(
            f"no conflicting samples in {clusters_path}: every sample's label equals the majority label of its "
            f"{int(clusters.max()) + 1} cluster(s), so no minority environment can be built; re-cluster with more "
            "clusters (--num_clusters) or from an earlier reference checkpoint that has not memorised the labels")
    return clusters, conflicting


def build_environments(train: SpuriousDataset, clusters_path: str | Path, balanced_fraction: float,
                       minority_share: float, seed: int) -> dict[str, pd.DataFrame]:
    """Member table (``index,label,cluster_assign,conflicting``) of each environment."""
    clusters, conflicting = mark_conflicting(train, clusters_path)
    members = split_environments(conflicting, balanced_fraction, minority_share, seed)
    return {role: pd.DataFrame({"index": idx.numpy(), "label": train.y[idx].numpy(),
                                "cluster_assign": clusters[idx].numpy(), "conflicting": conflicting[idx].int().numpy()})
            for role, idx in members.items()}


def summarize(role: str, table: pd.DataFrame, train: SpuriousDataset, source: dict[str, Any]) -> dict[str, Any]:
    """The ``environment.json`` content of one environment."""
    idx = torch.tensor(table["index"].to_numpy())
    return {
        "role": role,
        **source,
        "size": len(table),
        "n_conflicting": int(table["conflicting"].sum()),
        "conflicting_share": float(table["conflicting"].mean()),
        "label_attr_agreement": label_attr_agreement(train.y[idx], train.a[idx]),
    }


def check_output_folder(out_dir: str | Path) -> None:
    """Environments go into a folder of their own: refuse, before any work, a folder holding anything but the
    environment folders of an earlier run (a run's results, a user's files, a data set)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output_dir {out} is a file, not a directory; pass a directory path")
    if not out.is_dir():
        return

    def written_here(path: Path) -> bool:  # a role folder holding only this tool's files, or a temporary one
        return is_orphan(path) or (path.is_dir() and path.name in ROLES and all(
            q.name in (INDICES_NAME, SUMMARY_NAME) or is_orphan(q) for q in path.iterdir()))

    foreign = [p for p in sorted(out.iterdir()) if not written_here(p)]
    if foreign:
        raise UserError(f"--output_dir {out} holds {foreign[0]}, which environments.py did not write; nothing was "
                        "changed; environments go into a folder of their own: choose a new or empty --output_dir")


def write_environments(out_dir: str | Path, tables: dict[str, pd.DataFrame], summaries: dict[str, dict],
                       overwrite: bool) -> dict[str, Path]:
    """Write ``OUT/<role>/{indices.csv,environment.json}``; refuse to replace existing ones unless ``overwrite``."""
    out = Path(out_dir)
    check_output_folder(out)
    existing = [str(out / role / SUMMARY_NAME) for role in ROLES if (out / role / SUMMARY_NAME).exists()]
    if existing and not overwrite:
        raise UserError(f"--output_dir {out} already holds environments ({existing[0]}); "
                        "choose another --output_dir or pass --overwrite")
    paths = {}
    for role in ROLES:
        folder = out / role
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / INDICES_NAME, tables[role].to_csv(index=False))
        atomic_write_text(folder / SUMMARY_NAME, json.dumps(summaries[role], indent=2) + "\n")
        paths[role] = folder
    return paths


@dataclass
class Environment:
    """One environment read back from disk: its summary and member indices (training-split positions)."""

    path: Path
    summary: dict[str, Any]
    indices: torch.Tensor
    labels: torch.Tensor


def load_environment(path: str | Path, flag: str) -> Environment:
    """Read an environment directory, or its ``environment.json``/``indices.csv``; ``flag`` names it in errors."""
    path = Path(path)
    folder = path.parent if path.is_file() else path
    summary_path, indices_path = folder / SUMMARY_NAME, folder / INDICES_NAME
    if not path.exists():
        raise UserError(f"{flag} {path} does not exist; pass a folder written by invariant_learning/environments.py")
    if not summary_path.is_file() or not indices_path.is_file():
        raise UserError(f"{flag} {path} is not an environment: it needs {SUMMARY_NAME} and {INDICES_NAME} "
                        "(write them with invariant_learning/environments.py)")
    try:
        summary = json.loads(summary_path.read_text())
        table = pd.read_csv(indices_path)
    except (ValueError, pd.errors.ParserError) as exc:
        raise UserError(f"{flag}: {folder} holds an unreadable environment file ({exc})") from exc
    missing = [k for k in ("data", "data_flags", "n_train", "input_shape") if k not in summary]
    if missing:
        raise UserError(f"{flag}: {summary_path} lacks {missing}; rewrite it with invariant_learning/environments.py")
    if not {"index", "label"} <= set(table.columns):
        raise UserError(f"{flag}: {indices_path} needs columns index,label, found {list(table.columns)}")
    if len(table) == 0:
        raise UserError(f"{flag}: {indices_path} is an empty environment; rebuild the environments with more "
                        "clusters (--num_clusters) or from an earlier reference checkpoint")
    for column in ("index", "label"):
        if not pd.api.types.is_integer_dtype(table[column]):
            raise UserError(f"{flag}: column {column!r} of {indices_path} must hold integers (found "
                            f"{table[column].dtype}); rewrite it with invariant_learning/environments.py")
    repeated = table["index"][table["index"].duplicated()]
    if len(repeated):
        raise UserError(f"{flag}: {indices_path} lists index {int(repeated.iloc[0])} more than once "
                        f"({len(repeated)} repeated row(s)); each sample belongs to an environment once")
    return Environment(folder, summary, torch.tensor(table["index"].to_numpy()).long(),
                       torch.tensor(table["label"].to_numpy()).long())


SOURCE_KEYS = ("data", "data_flags", "n_train", "input_shape", "clusters", "construction")


def check_pair(minority: Environment, balanced: Environment) -> None:
    """Both environments must come from one environments.py run, each in its own role, and share no sample."""
    for env, flag, role in ((minority, "--minority_env", "minority"), (balanced, "--balance_env", "balanced")):
        if env.summary.get("role", role) != role:
            raise UserError(f"{flag} {env.path} is the {env.summary['role']!r} environment (its {SUMMARY_NAME} says "
                            f"so); pass the {role}/ folder of the environments.py run to {flag}")
    differ = [k for k in SOURCE_KEYS if minority.summary.get(k) != balanced.summary.get(k)]
    if differ:
        raise UserError(f"--minority_env {minority.path} and --balance_env {balanced.path} were written for different "
                        f"data or clusters (they differ in {', '.join(differ)}); pass the minority/ and balanced/ "
                        "folders of one environments.py run")
    shared = len(set(minority.indices.tolist()) & set(balanced.indices.tolist()))
    if shared:
        raise UserError(f"--minority_env {minority.path} and --balance_env {balanced.path} share {shared} sample(s); "
                        "pass the two different folders (minority/ and balanced/) of one environments.py run")


def check_against(env: Environment, train: SpuriousDataset, flag: str) -> None:
    """The environment's indices, labels and recorded shapes must fit the rebuilt training split."""
    summary = env.summary
    if summary["n_train"] != len(train) or list(summary["input_shape"]) != list(train.input_shape):
        raise UserError(f"{flag} {env.path} was built for a training split of {summary['n_train']} samples of shape "
                        f"{tuple(summary['input_shape'])}, but its data now has {len(train)} of shape "
                        f"{tuple(train.input_shape)}; rebuild the clusters and environments for this data")
    if int(env.indices.min()) < 0 or int(env.indices.max()) >= len(train):
        raise UserError(f"{flag}: {env.path / INDICES_NAME} has indices outside 0..{len(train) - 1}")
    wrong = int((train.y[env.indices] != env.labels).sum())
    if wrong:
        raise UserError(f"{flag}: column 'label' of {env.path / INDICES_NAME} disagrees with the data set for {wrong} "
                        "sample(s); the data files changed since the environments were built, rebuild them")


def describe(summary: dict[str, Any]) -> str:
    """One line: size, conflicting share and label-attribute agreement of an environment."""
    agreement = summary["label_attr_agreement"]
    shown = "unknown (no attribute)" if agreement is None else f"{100 * agreement:.1f}%"
    return (f"{summary['role']:<9} environment: {summary['size']:>6} samples, "
            f"{100 * summary['conflicting_share']:5.1f}% conflicting, label-attribute agreement {shown}")


def share(text: str) -> float:
    """argparse type: a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{value} must lie strictly between 0 and 1")
    return value


def add_construction_args(group: argparse._ArgumentGroup) -> None:
    """The environment construction's flags, shared by run.py and invariant_learning/environments.py."""
    group.add_argument("--balanced_fraction", type=share, default=0.5,
                       help="share of the training split drawn at random into the balanced environment")
    group.add_argument("--minority_share", type=share, default=0.5,
                       help="target share of conflicting samples in the minority environment")
