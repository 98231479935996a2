"""What every mode shares: evaluate a model on the splits, package the results."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from data import SpuriousDataset
from training.loops import predict
from utils.metrics import compute_metrics, group_counts
from utils.run_dir import RunClock
from utils.runtime import Runtime


def evaluate_model(model: nn.Module, splits: dict[str, SpuriousDataset], runtime: Runtime | torch.device,
                   names: tuple[str, ...] = ("val", "test")) -> dict[str, dict]:
    """Per-group metrics on each named split, weighted-average weights from the training groups."""
    train = splits["train"]
    train_counts = group_counts(train.y, train.a)
    out = {}
    for name in names:
        ds = splits[name]
        logits = predict(model, ds, runtime, desc=f"evaluate {name}")
        out[name] = compute_metrics(logits.argmax(1), ds.y, ds.a, train_counts)
    return out


def results_payload(mode: str, args: dict[str, Any], clock: RunClock, splits_metrics: dict[str, dict],
                    **extra: Any) -> dict[str, Any]:
    """The results.json dict: the top-level keys every mode shares (ARCHITECTURE.md, "Results"), then ``extra``;
    ``args`` are the run's arguments as recorded (:func:`utils.checkpoint.plain_args`); ``time_s`` is the
    run's ``clock`` (earlier processes of a continued run included)."""
    return {
        "mode": mode,
        "data": args["data"],
        "arch": args["arch"],
        "seed": args["seed"],
        "args": args,
        "time_s": round(clock.now(), 3),
        "splits": splits_metrics,
        **extra,
    }
