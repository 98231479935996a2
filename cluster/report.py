"""How well clusters recover the spurious attribute: counts, purity, NMI, and a 2-D picture.

- ``purity``: share of samples that carry the majority value (attribute or label) of their
  cluster. Its floor is ``baseline``, the share of the overall majority value (one big cluster);
  within a class of a 95%-correlated data set a purity of 0.95 is that floor, so both are reported.
- ``nmi``: scikit-learn's normalised mutual information (arithmetic normalisation): 0 for
  independent partitions, 1 for identical ones. It does not reward the majority, unlike purity.
- ``within_class``: the same numbers inside each class. PruSC's positives (same label, other
  cluster) and the conflicting samples of the IRM environments need the attribute separated
  *within* a class; clusters that merely split the classes do not help.
- ``vs_label`` and ``conflicting_fraction`` need no attribute: global clusters that follow the
  labels (NMI vs label near 1, almost no sample disagreeing with its cluster's majority label)
  come from a reference model that fitted the labels rather than the spurious shortcut.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from cluster.kmeans import majority_label
from utils.metrics import group_key

PLOT_SAMPLES = 3000  # t-SNE is slow and a scatter of 60k points is unreadable
PROJECTIONS = {"pca": "PCA", "tsne": "t-SNE"}


def agreement(assign: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Purity (with its one-cluster baseline) and NMI of a clustering against a target partition."""
    from sklearn.metrics import normalized_mutual_info_score  # on use: scikit-learn takes seconds to import

    majority_in_cluster = sum(int(torch.bincount(target[assign == k]).max()) for k in torch.unique(assign))
    return {
        "purity": majority_in_cluster / len(target),
        "baseline": int(torch.bincount(target).max()) / len(target),
        "nmi": float(normalized_mutual_info_score(target.numpy(), assign.numpy())),
        "n": len(target),
    }


def cluster_counts(assign: torch.Tensor, y: torch.Tensor, a: torch.Tensor) -> dict[str, dict[str, int]]:
    """``{cluster: {"y=..,a=..": count}}`` for every non-empty (cluster, label, attribute) cell."""
    cells = torch.stack([assign, y, a], dim=1)
    uniq, counts = torch.unique(cells, dim=0, return_counts=True)
    out: dict[str, dict[str, int]] = {}
    for (k, yv, av), n in zip(uniq.tolist(), counts.tolist()):
        out.setdefault(str(k), {})[group_key(yv, av)] = n
    return out


def summarize(assign: torch.Tensor, y: torch.Tensor, a: torch.Tensor, per_class: bool | None,
              silhouette: dict[int, float] | None = None) -> dict:
    """The quality summary saved as JSON and printed; attribute scores use samples whose attribute is known.

    ``per_class`` says how the clusters were fitted (``None``: unknown, e.g. loaded from a file).
    """
    assign, y, a = (torch.as_tensor(t).long() for t in (assign, y, a))
    majority = majority_label(assign, y)
    summary = {
        "num_clusters": int(assign.max()) + 1,
        "per_class": per_class,
        "n": len(assign),
        "cluster_label": majority.tolist(),
        "counts": cluster_counts(assign, y, a),
        "vs_label": agreement(assign, y),
        "conflicting_fraction": float((y != majority[assign]).double().mean()),
    }
    known = a >= 0
    if bool(known.any()):
        assign, y, a = assign[known], y[known], a[known]
        summary["vs_attribute"] = {
            "overall": agreement(assign, a),
            "within_class": {f"y={c}": agreement(assign[y == c], a[y == c]) for c in torch.unique(y).tolist()},
        }
    if silhouette is not None:
        summary["silhouette"] = {str(k): v for k, v in silhouette.items()}
    return summary


def format_summary(summary: dict) -> str:
    """The summary as a readable text block (cluster x group counts, then the scores)."""
    scope = {True: "fitted within each class", False: "fitted over all samples", None: "read from a file"}[
        summary["per_class"]]
    lines = [f"{summary['num_clusters']} clusters ({scope}) of {summary['n']} training samples"]
    groups = sorted({g for cells in summary["counts"].values() for g in cells})
    lines.append(f"{'cluster':<9}" + "".join(f"{g:>10}" for g in groups) + f"{'majority y':>12}")
    for k, label in enumerate(summary["cluster_label"]):
        cells = summary["counts"].get(str(k), {})
        lines.append(f"{k:<9}" + "".join(f"{cells.get(g, 0):>10}" for g in groups) + f"{label:>12}")
    lines.append(f"{'agreement':<20}{'purity':>8}{'baseline':>10}{'NMI':>8}")
    rows = [("label", summary["vs_label"])]
    if "vs_attribute" in summary:
        rows.append(("attribute", summary["vs_attribute"]["overall"]))
        rows += [(f"attribute | {c}", q) for c, q in summary["vs_attribute"]["within_class"].items()]
    lines += [f"{name:<20}{q['purity']:>8.3f}{q['baseline']:>10.3f}{q['nmi']:>8.3f}" for name, q in rows]
    if "vs_attribute" in summary:
        lines.append("attribute rows: for analysis only; no method and no --clusters_auto choice reads them")
    lines.append(f"conflicting samples (label != cluster majority): {100 * summary['conflicting_fraction']:.2f}%")
    if "silhouette" in summary:
        scores = ", ".join(f"k={k}: {s:.3f}" for k, s in summary["silhouette"].items())
        lines.append(f"silhouette (--num_clusters auto): {scores}")
    return "\n".join(lines)


def plot_clusters(features: torch.Tensor, assign: torch.Tensor, y: torch.Tensor, a: torch.Tensor,
                  path: str | os.PathLike, method: str = "pca", seed: int = 0) -> Path:
    """PNG of a 2-D projection (PCA or t-SNE) of the normalised features, coloured by cluster and by
    attribute (by label where the attribute is unknown), on a seeded subsample of ``PLOT_SAMPLES``."""
    from matplotlib.figure import Figure  # on use: matplotlib takes a second to import
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    keep = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))[:PLOT_SAMPLES]
    unit = nn.functional.normalize(features[keep].float(), dim=1).numpy()
    if method == "pca":
        xy = PCA(n_components=2, random_state=seed).fit_transform(unit)
    else:
        xy = TSNE(n_components=2, init="pca", perplexity=min(30.0, len(unit) - 1.0),
                  random_state=seed).fit_transform(unit)
    known = bool((a >= 0).all())
    fig = Figure(figsize=(11, 4.8), layout="constrained")
    for ax, values, name in zip(fig.subplots(1, 2), (assign, a if known else y),
                                ("cluster", "attribute" if known else "label")):
        values = values[keep].numpy()
        palette = 10 if values.max() < 10 else 20  # fixed range: id i always gets colour i of the palette
        points = ax.scatter(xy[:, 0], xy[:, 1], c=values, s=4, cmap=f"tab{palette}", vmin=0, vmax=palette - 1)
        ax.legend(*points.legend_elements(), title=name, loc="best", fontsize="small")
        ax.set_title(f"{PROJECTIONS[method]} of the features, coloured by {name}")
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path
