"""Model selection: every rule that picks the reported model, in one place.

A :class:`Selector` scores predictions on selection samples (higher is better), says in words how
(the method's ``selection`` entry in results.json) and whether it uses group labels:

- :class:`WorstCell` (``--selection worst_cluster``): accuracy of each (label, cluster) cell, minimum
  over cells of at least ``--min_cell_size`` samples (over all cells when none is that large).
  The cells of val samples come from the nearest training-cluster centroid
  (:func:`training.reference.nearest_clusters`), so no group label is used;
- :class:`WorstGroup` (``--selection oracle``, and the group-label baselines): the true worst-group
  accuracy, labelled ORACLE.

Two policies decide which candidate a score keeps: :class:`BestEpoch` (the best-scoring epoch, the
earliest on ties) and :func:`sparsest_within` (the sparsest mask scoring within a tolerance of the
best, PruSC's pruning). Selection samples that must not be fitted on are a :func:`stratified_halves`
of val.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from data import SpuriousDataset
from training.loops import predict
from utils.cli import positive_int
from utils.metrics import compute_metrics
from utils.options import option
from utils.runtime import Runtime

ORACLE_GROUP_LABELS = "model selection (--selection oracle)"


def cells_of(y: torch.Tensor, clusters: torch.Tensor) -> torch.Tensor:
    """One id per (label, cluster) pair."""
    return y * (int(clusters.max()) + 1) + clusters


def stratified_halves(cells: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted positions of two halves of a split, each cell split in half (the first half gets the odd one)."""
    gen = torch.Generator().manual_seed(seed)
    first, second = [], []
    for cell in torch.unique(cells):
        members = torch.nonzero(cells == cell).flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        half = (len(members) + 1) // 2
        first.append(members[:half])
        second.append(members[half:])
    return torch.cat(first).sort().values, torch.cat(second).sort().values


def worst_cell_accuracy(preds: torch.Tensor, y: torch.Tensor, cells: torch.Tensor, min_size: int = 1) -> float:
    """Minimum accuracy over cells holding at least ``min_size`` samples (all cells if none do)."""
    accs, fallback = [], []
    for cell in torch.unique(cells):
        member = cells == cell
        acc = float((preds[member] == y[member]).float().mean())
        fallback.append(acc)
        if int(member.sum()) >= min_size:
            accs.append(acc)
    return min(accs or fallback)


@dataclass(frozen=True)
class SelectionConfig:
    """How the annotation-free methods choose their model (:func:`requested_selector`)."""

    selection: str = option("worst_cluster", "model selection on val of the annotation-free methods (retraining, "
                                             "JTT); oracle uses group labels and is labelled so",
                            choices=["worst_cluster", "oracle"])
    min_cell_size: int = option(5, "smallest (label, cluster) cell counted by worst-cluster selection",
                                type=positive_int)


class Selector:
    """A score of a model on selection samples, with the words and group-label facts results.json shows."""

    name: ClassVar[str]  # the --selection word
    uses_group_labels: ClassVar[bool]
    needs_cells: ClassVar[bool]  # scores (label, cluster) cells, so the clusters must exist

    @property
    def words(self) -> str:
        """What is scored, in words: fills ``{score}`` in a method's ``selection`` sentence."""
        raise NotImplementedError

    def score(self, preds: torch.Tensor, data: SpuriousDataset, cells: torch.Tensor | None) -> float:
        """The score of ``preds`` (one class per sample of ``data``); ``cells`` are the samples' cells."""
        raise NotImplementedError

    def score_model(self, model: nn.Module, data: SpuriousDataset, cells: torch.Tensor | None,
                    runtime: Runtime | torch.device) -> float:
        """The score of ``model``'s predictions on ``data``."""
        return self.score(predict(model, data, runtime, desc="selection").argmax(1), data, cells)


class WorstCell(Selector):
    """Worst (label, cluster) cell accuracy: no group labels."""

    name = "worst_cluster"
    uses_group_labels = False
    needs_cells = True

    def __init__(self, min_cell_size: int = 1) -> None:
        self.min_cell_size = min_cell_size

    @property
    def words(self) -> str:
        return f"worst-cluster accuracy (cells of >= {self.min_cell_size} samples; no group labels)"

    def score(self, preds: torch.Tensor, data: SpuriousDataset, cells: torch.Tensor | None) -> float:
        if cells is None:
            raise ValueError("worst-cluster selection needs the (label, cluster) cell of every sample")
        return worst_cell_accuracy(preds, data.y, cells, self.min_cell_size)


class WorstGroup(Selector):
    """True worst-group accuracy: an oracle, it reads the attribute labels."""

    name = "oracle"
    uses_group_labels = True
    needs_cells = False

    @property
    def words(self) -> str:
        return "true worst-group accuracy (ORACLE: uses group labels)"

    def score(self, preds: torch.Tensor, data: SpuriousDataset, cells: torch.Tensor | None) -> float:
        return compute_metrics(preds, data.y, data.a)["worst_group_acc"]


def requested_selector(selection: str, min_cell_size: int) -> Selector:
    """The selector that ``--selection`` (and ``--min_cell_size``) ask for."""
    if selection == WorstGroup.name:
        return WorstGroup()
    return WorstCell(min_cell_size)


def selection_facts(sentence: str, selector: Selector | None, uses_group_labels: bool,
                    group_labels: str) -> dict[str, Any]:
    """A method's ``selection``, ``uses_group_labels`` and ``group_labels`` entries: ``sentence`` with the
    selector's words in ``{score}``; a selector that reads group labels marks a method that otherwise does not."""
    if selector is None:
        return {"uses_group_labels": uses_group_labels, "group_labels": group_labels, "selection": sentence}
    oracle_only = selector.uses_group_labels and not uses_group_labels
    return {"uses_group_labels": uses_group_labels or selector.uses_group_labels,
            "group_labels": ORACLE_GROUP_LABELS if oracle_only else group_labels,
            "selection": sentence.format(score=selector.words)}


class BestEpoch:
    """Keeps the model state with the best score recorded (the earliest on ties)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.scores: list[float] = []
        self.epoch = 0
        self.state: dict | None = None

    def record(self, score: float, epoch: int) -> None:
        if not self.scores or score > max(self.scores):
            self.epoch, self.state = epoch, copy.deepcopy(self.model.state_dict())
        self.scores.append(score)

    def restore(self) -> None:
        """Load the best state back into the model."""
        assert self.state is not None, "no score recorded"
        self.model.load_state_dict(self.state)

    def state_dict(self) -> dict[str, Any]:
        return {"scores": list(self.scores), "epoch": self.epoch, "state": self.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scores, self.epoch, self.state = list(state["scores"]), state["epoch"], state["state"]


def sparsest_within(checks: list[dict], tolerance: float) -> int:
    """Index of the sparsest check (``density``) whose ``score`` is within ``tolerance`` of the best score
    (the later one on equal density)."""
    best = max(c["score"] for c in checks)
    good = [i for i, c in enumerate(checks) if c["score"] >= best - tolerance]
    return min(good, key=lambda i: (checks[i]["density"], -i))
