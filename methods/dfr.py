"""DFR, Deep Feature Reweighting (Kirichenko, Izmailov, Wilson; ICLR 2023), the validation-data version.

The ERM feature extractor is kept frozen; only the last layer is refit, on features of the
validation split with the true groups balanced: each fit draws the same number of samples from
every (label, attribute) group (the size of the smallest group) and fits an L1-regularised
logistic regression on standardised features. The inverse regularisation strength ``C`` is chosen
from ``--dfr_c_grid`` by the true worst-group accuracy on a held-out half of val; the final layer
averages ``--dfr_num_retrains`` fits on the other half with that ``C``. It uses validation group
labels (for the balanced fit and for ``C``), so it is labelled as such; retrain-only is its
annotation-free counterpart. Defaults are the paper's grid and 20 retrains.
"""
from __future__ import annotations

import argparse
import copy
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from cluster.features import extract_features
from methods.base import Context, Fitted, Method
from methods.registry import register
from training.selection import Selector, WorstGroup, stratified_halves
from utils.cli import positive_int
from utils.errors import UserError
from utils.options import option

HELD_OUT_NOTE = "held-out half of val (the other half was used for the last-layer fit; this half chose C)"


def c_grid(text: str) -> tuple[float, ...]:
    """argparse type: comma-separated positive numbers."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: every C must be > 0")
    return tuple(values)



@dataclass(frozen=True)
class DfrConfig:
    """DFR's own settings (the paper's defaults)."""

    dfr_c_grid: tuple[float, ...] = option(c_grid("1,0.7,0.3,0.1,0.07,0.03,0.01"),
                                           "DFR: inverse L1 strengths tried (the paper's grid)", type=c_grid)
    dfr_num_retrains: int = option(20, "DFR: balanced fits averaged into the final layer (paper: 20)",
                                   type=positive_int)

def balanced_fit(feats: np.ndarray, y: np.ndarray, groups: np.ndarray, c: float, rng: np.random.Generator,
                 n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Weights (K, D) and bias (K,) of an L1 logistic regression on a group-balanced subsample."""
    from sklearn.exceptions import ConvergenceWarning  # on use: scikit-learn takes seconds to import
    from sklearn.linear_model import LogisticRegression

    smallest = min(int((groups == g).sum()) for g in np.unique(groups))
    keep = np.concatenate([rng.choice(np.flatnonzero(groups == g), smallest, replace=False) for g in np.unique(groups)])
    with warnings.catch_warnings():  # convergence, and scikit-learn >= 1.8's deprecation of penalty="l1"
        for category in (ConvergenceWarning, FutureWarning, UserWarning):
            warnings.simplefilter("ignore", category)
        clf = LogisticRegression(penalty="l1", C=c, solver="liblinear" if n_classes == 2 else "saga",
                                 max_iter=1000).fit(feats[keep], y[keep])
    coef, bias = clf.coef_, clf.intercept_
    if n_classes == 2:  # one score w.x + b for class 1: split it symmetrically over the two logits
        coef, bias = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-bias / 2, bias / 2])
    return coef, bias


def averaged_fit(feats: np.ndarray, y: np.ndarray, groups: np.ndarray, c: float, repeats: int, seed: int,
                 n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The mean weights and bias of ``repeats`` balanced fits (different subsamples)."""
    rng = np.random.default_rng(seed)
    fits = [balanced_fit(feats, y, groups, c, rng, n_classes) for _ in range(repeats)]
    return np.mean([w for w, _ in fits], axis=0), np.mean([b for _, b in fits], axis=0)


@register
class DFR(Method):
    """Refit the reference model's last layer on group-balanced validation features."""

    name = "dfr"
    uses_group_labels = True
    group_labels = "validation (balanced last-layer fit and the choice of C)"
    selection = "C with the best {score} on a held-out half of val"
    needs_attributes = True
    config = DfrConfig

    def selector(self, requested: Selector) -> Selector:
        return WorstGroup()

    def fit(self, ctx: Context) -> Fitted:
        args, val, dfr = ctx.args, ctx.splits["val"], ctx.part(DfrConfig)
        model = copy.deepcopy(ctx.reference.model)
        feats = extract_features(model, val, ctx.runtime, args.eval_batch_size,
                                 normalize=False, num_workers=args.num_workers).numpy()
        fit_idx, select_idx = (i.numpy() for i in stratified_halves(val.groups, args.seed))
        mean, std = feats[fit_idx].mean(0), feats[fit_idx].std(0) + 1e-8
        z = (feats - mean) / std
        y, groups = val.y.numpy(), val.groups.numpy()
        if len(np.unique(groups[fit_idx])) < 2:
            raise UserError("DFR needs at least two (label, attribute) groups in the validation split")
        selector, held_out = self.selector(ctx.requested_selector), val.subset(torch.as_tensor(select_idx))
        scores = {}
        for c in dfr.dfr_c_grid:
            w, b = averaged_fit(z[fit_idx], y[fit_idx], groups[fit_idx], c, 1, args.seed, val.n_classes)
            scores[c] = selector.score(torch.as_tensor(z[select_idx] @ w.T + b).argmax(1), held_out, None)
        best_c = max(scores, key=lambda c: (scores[c], -c))
        w, b = averaged_fit(z[fit_idx], y[fit_idx], groups[fit_idx], best_c, dfr.dfr_num_retrains, args.seed,
                            val.n_classes)
        head = model.head
        with torch.no_grad():  # fold the standardisation into the layer: w.(x - mean)/std + b
            head.weight.copy_(torch.as_tensor(w / std, dtype=head.weight.dtype))
            head.bias.copy_(torch.as_tensor(b - (w / std) @ mean, dtype=head.bias.dtype))
        return Fitted(model, val=held_out, val_note=HELD_OUT_NOTE,
                      info={"c": best_c, "c_scores": {str(c): s for c, s in scores.items()}})
