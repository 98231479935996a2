"""Cost of PruSC's mask learning against ERM, and of the vectorised loss against a per-anchor loop.

    python3 benchmarks/bench_prune.py [--arch mlp] [--threads 2] [run.py data flags, e.g. --data cmnist ...]

Prints, on the training split of the chosen data set (default: Colored Digits):

1. seconds per epoch of ERM and of mask learning (same model, data, batch size) and their ratio
   (the budget: at most 2x);
2. seconds per batch of the contrastive term computed PruSC's way (one forward pass, one
   similarity matrix) and the way the public reference did it (one forward pass per anchor,
   re-implemented here only for the comparison), and the slow-down factor.
"""
from __future__ import annotations

import copy
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import run  # noqa: E402
from data import build_splits  # noqa: E402
from models.masking import attach_masks, set_mask_mode  # noqa: E402
from training.contrastive import cluster_contrastive_loss  # noqa: E402
from models.factory import ModelConfig, model_from_args  # noqa: E402
from training.loops import make_optimizer, train_classifier  # noqa: E402
from training.prune import PruneConfig, learn_masks  # noqa: E402
from utils.options import from_args  # noqa: E402
from utils.runtime import make_loader, seed_everything  # noqa: E402

PRUNE_BUDGET = 2.0


def per_anchor_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, c: torch.Tensor, tau: float) -> torch.Tensor:
    """The reference's shape of computation: a fresh forward pass of the batch for every anchor."""
    terms = []
    for i in range(len(x)):
        z = nn.functional.normalize(model.features(x), dim=1)
        pos = (y == y[i]) & (c != c[i])
        cand = pos | (c == c[i])
        pos[i] = cand[i] = False
        if not bool(pos.any()):
            continue
        sim = z[i] @ z.T / tau
        terms.append(-(sim[pos] - torch.logsumexp(sim[cand], dim=0)).mean())
    return torch.stack(terms).mean()


def timed(fn, repeats: int = 1) -> float:
    """Best of ``repeats`` wall-clock timings after one warm-up call (less noise on a busy machine)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def prune_epoch_seconds(model: nn.Module, train, clusters: torch.Tensor, prune: PruneConfig, batch_size: int,
                        device: torch.device) -> float:
    """Seconds per mask-learning epoch: (time of 4 epochs - time of 1) / 3 cancels the one-off set-up."""
    def epochs(n: int) -> float:
        pruned = copy.deepcopy(model)
        settings = dataclasses.replace(prune, pruning_ep=n)
        return timed(lambda: learn_masks(copy.deepcopy(pruned), train, clusters, settings, batch_size, device,
                                         seed_everything(0)), repeats=3)
    return (epochs(4) - epochs(1)) / 3


def main() -> None:
    threads = 2
    argv = sys.argv[1:]
    if "--threads" in argv:
        at = argv.index("--threads")
        threads = int(argv[at + 1])
        argv = argv[:at] + argv[at + 2:]
    torch.set_num_threads(threads)
    args = run.parse_args(["--device", "cpu", *argv])
    train = build_splits(args)["train"]
    clusters = train.y * 2 + (torch.arange(len(train)) % 2)  # any two clusters per class: cost only
    device = torch.device("cpu")
    model, _ = model_from_args(from_args(ModelConfig, args), train)

    erm_model = copy.deepcopy(model)
    loader = make_loader(train, args.batch_size, shuffle=True, generator=seed_everything(0))
    optimizer = make_optimizer(erm_model.parameters(), args.optimizer, args.lr)
    erm_s = timed(lambda: train_classifier(erm_model, loader, optimizer, device, 1, "ERM"), repeats=3)
    prune_s = prune_epoch_seconds(model, train, clusters, from_args(PruneConfig, args), args.batch_size, device)
    print(f"data {args.data} ({len(train)} training samples), arch {args.arch}, batch {args.batch_size}, "
          f"{threads} thread(s)")
    print(f"ERM epoch:     {erm_s:7.3f} s")
    print(f"pruning epoch: {prune_s:7.3f} s   ratio {prune_s / erm_s:.2f}x (budget {PRUNE_BUDGET:.1f}x)")

    masked = copy.deepcopy(model)
    attach_masks(masked)
    set_mask_mode(masked, "sample")
    x, y, _a, idx = next(iter(loader))
    c = clusters[idx]
    fast = timed(lambda: cluster_contrastive_loss(nn.functional.normalize(masked.features(x), dim=1), y, c,
                                                  args.temperature).backward(), repeats=5)
    slow = timed(lambda: per_anchor_loss(masked, x, y, c, args.temperature).backward(), repeats=2)
    print(f"contrastive term, one batch of {len(x)}: vectorised {1000 * fast:.2f} ms, "
          f"per-anchor loop {1000 * slow:.2f} ms  -> {slow / fast:.0f}x slower")


if __name__ == "__main__":
    main()
