"""A label-free choice of the clustering: which ERM snapshot to cluster, and how.

Every method that uses clusters stands on one premise: the minority samples get clusters of their
own. Group labels would tell which clustering does that; without them, this module uses the premise
JTT builds on: **the minority is where ERM errs, early and late**. Every model the ERM run saved
(its snapshots) classifies the validation split; each val sample gets the *number of snapshots that
misclassify it* (0..T), one judge shared by every candidate. For each candidate (snapshot x scope x
k) the k-means fit on the training split places every val sample in a (label, cluster) cell, and

    score = sum over classes y of  n_y / n  *  AMI(cell, number of erring snapshots | label y)

AMI is adjusted mutual information (0 for cells unrelated to the errors whatever their number, 1
when the cells are the error levels), so more clusters are not rewarded for chance agreement. A val
sample only joins clusters that hold at least ``MIN_CELL_SHARE`` of its label's training samples
(and ``min_cell_size`` of them): otherwise global clusters of a model that follows the labels would
put each misclassified sample in the other class's cluster and merely repeat the prediction.

The whole grid (per class k = 2, 3, 4; global k = 2, 4, 8, 16) is scored and printed, but the
choice is made among the candidates with k in ``choose_ks`` (default 2, per class or global: a
binary attribute), i.e. *which snapshot* and *which scope*: with finer k the choice took clusterings
that carve out error pockets of a model's decision boundary rather than the attribute (on Colored
Digits seed 1, per class k = 3 at within-class NMI 0.57 against 1.00; docs/clustering_choice.md).

Two guards before a choice is trusted:

- **stability**: each candidate is fitted again with another k-means seed; one whose clusters
  change (adjusted Rand index within each class below ``min_stability``) is not eligible;
- **a permutation null**: the error counts are shuffled within each class ``permutations`` times and
  the best eligible score recomputed each time; the choice is confident when the observed best beats
  that null with p <= ``alpha``. Otherwise there is *no confident choice* and the caller keeps its
  default clustering (and says so).

Attribute purity and NMI of each candidate are reported beside it when the data set has attribute
labels, for analysis only: **they are never used for the choice**.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from cluster.features import extract_features
from cluster.kmeans import ClusterFit, fit_kmeans
from cluster.report import agreement
from data import SpuriousDataset
from models.factory import Expect, load_model
from utils.distributed import run_on_main
from utils.runtime import Runtime

PER_CLASS_KS = (2, 3, 4)
GLOBAL_KS = (2, 4, 8, 16)
MIN_CELL_SHARE = 0.01  # a cluster holding under 1% of a class's training samples is no cell of that class
MIN_STABILITY = 0.5
CHOOSE_KS = (2,)  # the k a choice is made among, per class or global (the rest is scored for analysis)
PERMUTATIONS = 200
ALPHA = 0.05


@dataclass(frozen=True)
class Candidate:
    """One clustering to score: the features of ``snapshot`` (a name), per class or global, ``k`` clusters."""

    snapshot: str
    per_class: bool
    k: int

    def describe(self) -> str:
        return f"{self.snapshot}, {'per class' if self.per_class else 'global'}, k={self.k}"


@dataclass
class Scored:
    """A candidate's fit and its numbers (``attribute``: analysis only, never used for the choice)."""

    candidate: Candidate
    fit: ClusterFit
    score: float
    stability: float
    eligible: bool
    attribute: dict[str, dict[str, float]] = field(default_factory=dict)

    def record(self) -> dict:
        return {"snapshot": self.candidate.snapshot, "per_class": self.candidate.per_class, "k": self.candidate.k,
                "score": round(self.score, 5), "stability": round(self.stability, 4), "eligible": self.eligible,
                **({"attribute_within_class_not_used": self.attribute} if self.attribute else {})}


@dataclass
class Choice:
    """All scored candidates, the chosen one (None: no confident choice) and the null it beat."""

    scored: list[Scored]
    chosen: Scored | None
    best: Scored | None
    p_value: float
    null_best: float  # 95th percentile of the best eligible score over permuted errors
    permutations: int

    def record(self) -> dict:
        """What results.json and cluster_summary.json keep."""
        return {
            "criterion": "class-weighted within-class AMI between val (label, cluster) cells and the number of "
                         "ERM snapshots misclassifying each val sample; chosen among the candidates with k in "
                         f"{list(CHOOSE_KS)} (either scope, eligible) whose k-means seed stability >= "
                         f"{MIN_STABILITY}; confident if p <= {ALPHA} against within-class permutations of the errors",
            "chosen": None if self.chosen is None else self.chosen.record(),
            "confident": self.chosen is not None,
            "p_value": round(self.p_value, 4),
            "null_best_score_p95": round(self.null_best, 5),
            "candidates": [s.record() for s in self.scored],
            "attribute_columns": "attribute_within_class_not_used: purity/NMI against the true attribute, "
                                 "for analysis only; not used for the choice",
        }


def allowed_clusters(fit: ClusterFit, train_y: torch.Tensor, min_cell_size: int) -> torch.Tensor:
    """(n_classes, K) bool: cluster k is a cell of class y when it holds enough of y's training samples."""
    n_classes = int(train_y.max()) + 1
    counts = torch.zeros(n_classes, fit.num_clusters, dtype=torch.long)
    counts.index_put_((train_y, fit.assign), torch.ones_like(train_y), accumulate=True)
    floor = torch.clamp(MIN_CELL_SHARE * counts.sum(dim=1, keepdim=True), min=min_cell_size)
    allowed = counts >= floor
    allowed[~allowed.any(dim=1)] = True  # a class with no big cluster may use any
    return allowed


def val_cells(fit: ClusterFit, train_y: torch.Tensor, val_feats: torch.Tensor, val_y: torch.Tensor,
              min_cell_size: int) -> torch.Tensor:
    """Cluster of each val sample: the nearest centroid among the cells of its own label."""
    allowed = allowed_clusters(fit, train_y, min_cell_size)
    sims = torch.nn.functional.normalize(val_feats.float(), dim=1) @ fit.centroids.T
    return sims.masked_fill(~allowed[val_y], float("-inf")).argmax(dim=1)


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def expected_mutual_information(rows: np.ndarray, cols: np.ndarray) -> float:
    """E[MI] (nats) of two partitions with these marginal counts under random pairing: the chance
    level AMI subtracts. It depends only on the marginals, so permutation nulls reuse it."""
    from scipy.special import gammaln  # on use, as scikit-learn below: both take seconds to import

    n = int(rows.sum())
    total = 0.0
    for a in rows[rows > 0]:
        for b in cols[cols > 0]:
            nij = np.arange(max(1, a + b - n), min(a, b) + 1)
            if len(nij) == 0:
                continue
            log_p = (gammaln(a + 1) + gammaln(b + 1) + gammaln(n - a + 1) + gammaln(n - b + 1) - gammaln(n + 1)
                     - gammaln(nij + 1) - gammaln(a - nij + 1) - gammaln(b - nij + 1) - gammaln(n - a - b + nij + 1))
            total += float((nij / n * np.log(n * nij / (a * b)) * np.exp(log_p)).sum())
    return total


@dataclass
class ClassAmi:
    """AMI of one class's val cells against any error vector with fixed per-cell counts (permutations)."""

    cells: np.ndarray  # cell id 0..C-1 of each member
    n_cells: int
    levels: int  # error values are 0..levels-1 (0/1, or how many models err)
    expected: float
    norm: float

    @classmethod
    def of(cls, cells: np.ndarray, errors: np.ndarray) -> "ClassAmi":
        cells = np.unique(cells, return_inverse=True)[1]
        levels = max(2, int(errors.max()) + 1)
        sizes, err_counts = np.bincount(cells), np.bincount(errors, minlength=levels)
        expected = expected_mutual_information(err_counts, sizes)
        return cls(cells, len(sizes), levels, expected, 0.5 * (_entropy(err_counts) + _entropy(sizes)) - expected)

    def __call__(self, errors: np.ndarray) -> float:
        if self.n_cells < 2 or len(np.unique(errors)) < 2:
            return 0.0
        table = np.bincount(self.cells * self.levels + errors,
                            minlength=self.levels * self.n_cells).reshape(-1, self.levels).astype(float)
        n, joint = table.sum(), table[table > 0]
        mi = float((joint / n * np.log(joint * n / np.outer(table.sum(1), table.sum(0))[table > 0])).sum())
        return (mi - self.expected) / self.norm if self.norm > 0 else 0.0


def within_class_ami(cells: np.ndarray, errors: np.ndarray, y: np.ndarray) -> "WithinClassAmi":
    """Class-weighted AMI between cells and errors inside each class (0 where either is constant)."""
    return WithinClassAmi([(float((y == c).mean()), np.flatnonzero(y == c), ClassAmi.of(cells[y == c], errors[y == c]))
                           for c in np.unique(y)])


@dataclass
class WithinClassAmi:
    """The score of one candidate as a function of the error vector (observed or permuted)."""

    parts: list[tuple[float, np.ndarray, ClassAmi]]

    def __call__(self, errors: np.ndarray) -> float:
        return float(sum(w * ami(errors[members]) for w, members, ami in self.parts))


def seed_stability(fit: ClusterFit, other: ClusterFit, y: torch.Tensor) -> float:
    """Class-weighted adjusted Rand index of two fits of the same candidate inside each class."""
    from sklearn.metrics import adjusted_rand_score  # on use: scikit-learn takes seconds to import

    total = 0.0
    for cls in torch.unique(y).tolist():
        member = y == cls
        total += float(member.sum()) / len(y) * adjusted_rand_score(fit.assign[member].numpy(),
                                                                    other.assign[member].numpy())
    return total


def fit_candidate(feats: torch.Tensor, y: torch.Tensor, cand: Candidate, seed: int) -> ClusterFit:
    return fit_kmeans(feats, cand.k, seed, y if cand.per_class else None)


def choose_clustering(train_feats: dict[str, torch.Tensor], val_feats: dict[str, torch.Tensor],
                      train_y: torch.Tensor, val_y: torch.Tensor,
                      val_errors: torch.Tensor | dict[str, torch.Tensor], seed: int,
                      per_class_ks: Sequence[int] = PER_CLASS_KS, global_ks: Sequence[int] = GLOBAL_KS,
                      choose_ks: Sequence[int] = CHOOSE_KS,
                      train_a: torch.Tensor | None = None, min_cell_size: int = 5,
                      permutations: int = PERMUTATIONS, alpha: float = ALPHA,
                      min_stability: float = MIN_STABILITY) -> Choice:
    """Score every (snapshot, scope, k) candidate and choose one, or none (see the module docstring).

    ``train_feats``/``val_feats``: features of each snapshot (same names) on the training and val
    splits; ``val_errors``: 1 where a model misclassifies the val sample, per snapshot (the snapshot's own
    model; they are summed into the judge) or one vector. ``choose_ks``: the k (either scope) among which
    the choice is made. Deterministic for a ``seed``. ``train_a`` (attribute labels) only adds the analysis columns.
    """
    train_y, val_y = torch.as_tensor(train_y).long(), torch.as_tensor(val_y).long()
    smallest_class = int(torch.bincount(train_y).min())
    candidates = [Candidate(name, per_class, k) for name in train_feats
                  for per_class, ks in ((True, per_class_ks), (False, global_ks))
                  for k in ks if k < (smallest_class if per_class else len(train_y))]
    if isinstance(val_errors, dict):
        judge = sum(torch.as_tensor(e).long() for e in val_errors.values()).numpy()
    else:
        judge = torch.as_tensor(val_errors).long().numpy()
    y_np = val_y.numpy()
    scored, score_of = [], []
    for cand in candidates:
        fit = fit_candidate(train_feats[cand.snapshot], train_y, cand, seed)
        stability = seed_stability(fit, fit_candidate(train_feats[cand.snapshot], train_y, cand, seed + 1), train_y)
        cells = val_cells(fit, train_y, val_feats[cand.snapshot], val_y, min_cell_size).numpy()
        attribute = {} if train_a is None or not bool((train_a >= 0).all()) else {
            f"y={c}": {key: round(v, 4) for key, v in agreement(fit.assign[train_y == c], train_a[train_y == c]).items()
                       if key in ("nmi", "purity", "baseline")} for c in torch.unique(train_y).tolist()}
        score_of.append(within_class_ami(cells, judge, y_np))
        eligible = stability >= min_stability and cand.k in choose_ks
        scored.append(Scored(cand, fit, score_of[-1](judge), stability, eligible, attribute))
    eligible = [i for i, s in enumerate(scored) if s.eligible]
    if not eligible:
        return Choice(scored, None, None, 1.0, float("nan"), permutations)
    best = max(eligible, key=lambda i: round(scored[i].score, 9))  # first of equals (fixed order, per class first)
    rng = np.random.default_rng(seed)
    null = np.empty(permutations)
    for r in range(permutations):
        shuffled = judge.copy()
        for cls in np.unique(y_np):
            member = np.flatnonzero(y_np == cls)
            shuffled[member] = rng.permutation(judge[member])
        null[r] = max(score_of[i](shuffled) for i in eligible)
    p_value = float((1 + (null >= scored[best].score).sum()) / (1 + permutations))
    confident = p_value <= alpha and scored[best].score > 0
    return Choice(scored, scored[best] if confident else None, scored[best], p_value,
                  float(np.quantile(null, 0.95)), permutations)


def format_choice(choice: Choice, default: str) -> str:
    """The candidates as a table, then the choice (or that there is none and ``default`` is kept)."""
    lines = ["label-free clustering choice (cluster/choose.py): score = within-class AMI of val cells with the "
             "number of ERM snapshots misclassifying each val sample; chosen among the eligible candidates",
             f"{'candidate':<34}{'score':>8}{'stability':>11}  attribute NMI within class (analysis only, not used)"]
    for s in choice.scored:
        nmi = " ".join(f"{c}:{q['nmi']:.3f}" for c, q in s.attribute.items()) or "-"
        reason = "unstable" if s.stability < MIN_STABILITY else "analysis only"
        flag = "" if s.eligible else f"  (not eligible: {reason})"
        lines.append(f"{s.candidate.describe():<34}{s.score:>8.4f}{s.stability:>11.3f}  {nmi}{flag}")
    if choice.chosen is not None:
        lines.append(f"chosen: {choice.chosen.candidate.describe()} (score {choice.chosen.score:.4f}, "
                     f"p = {choice.p_value:.3f} against {choice.permutations} within-class permutations of the errors)")
    else:
        best = "none eligible" if choice.best is None else \
            f"best {choice.best.candidate.describe()} at {choice.best.score:.4f}, p = {choice.p_value:.3f}"
        lines.append(f"no confident choice ({best}): keeping the default clustering, {default}")
    return "\n".join(lines)


@dataclass
class SnapshotChoice:
    """A :class:`Choice` made on checkpoint files, with the features it computed (unnormalised)."""

    choice: Choice
    files: dict[str, str]  # snapshot name -> checkpoint file
    train_features: dict[str, torch.Tensor]
    val_features: dict[str, torch.Tensor]


def snapshot_files(checkpoint: str, *extra: str | None) -> dict[str, str]:
    """The candidate snapshots of a reference checkpoint: itself, the ``erm_epoch<E>.pt`` files its ERM run
    saved beside it (``--cluster_epoch``, ``--clusters_auto``), and any ``extra`` file; named by file stem."""
    paths = [Path(checkpoint)]
    paths += sorted(Path(checkpoint).parent.glob("erm_epoch*.pt"), key=lambda p: int(p.stem[9:] or 0))
    paths += [Path(p) for p in extra if p]
    files: dict[str, str] = {}
    for path in paths:
        files.setdefault(path.stem if path.parent == Path(checkpoint).parent else str(path), str(path))
    return files


def choose_from_checkpoints(files: dict[str, str], splits: dict[str, SpuriousDataset], expect: Expect,
                            runtime: Runtime, num_clusters: int | None, min_cell_size: int,
                            seed: int) -> SnapshotChoice:
    """:func:`choose_clustering` over the snapshot ``files`` (each checked against ``expect``, the run's data set
    and architecture, and the splits' input shape and classes), judged by how many of the snapshots' models
    misclassify each val sample; an integer ``num_clusters`` (``--num_clusters``) joins the k sets (and those
    chosen among); ``min_cell_size`` and ``seed`` as in :func:`choose_clustering`."""
    train, val = splits["train"], splits["val"]
    extra = (num_clusters,) if isinstance(num_clusters, int) else ()
    device = runtime.device
    expect = replace(expect, input_shape=train.input_shape, n_classes=train.n_classes)

    def features(model: nn.Module, dataset: SpuriousDataset) -> torch.Tensor:
        return extract_features(model, dataset, runtime, runtime.eval_batch_size, normalize=False,
                                num_workers=runtime.num_workers)

    train_feats, val_feats, errors = {}, {}, {}
    for name, path in files.items():
        model = load_model(path, expect).model.to(device)
        train_feats[name], val_feats[name] = features(model, train), features(model, val)
        with torch.no_grad():
            errors[name] = (model.head(val_feats[name].to(device)).argmax(1).cpu() != val.y).long()
    choice = run_on_main(choose_clustering, train_feats, val_feats, train.y, val.y, errors, seed,
                         sorted({*PER_CLASS_KS, *extra}), sorted({*GLOBAL_KS, *extra}), sorted({*CHOOSE_KS, *extra}),
                         train.a, min_cell_size, where="while choosing the clustering")
    return SnapshotChoice(choice, files, train_feats, val_feats)
