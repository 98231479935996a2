"""Seeding, device selection, data loaders and progress bars used by every loop."""
from __future__ import annotations

import contextlib
import os
import random
import sys
from typing import Iterable, Iterator, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate
from tqdm import tqdm

from utils.distributed import is_main
from utils.errors import UserError

T = TypeVar("T")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch so CPU runs repeat bit-for-bit; return a torch generator."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def resolve_device(name: str) -> torch.device:
    """Map ``auto|cpu|cuda[:N]|mps`` to a device, failing clearly when it is not available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"--device {name!r} is not a device name; use auto, cpu, cuda, cuda:N or mps") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was requested but CUDA is not available; use --device auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps was requested but MPS is not available; use --device auto or cpu")
    return device


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``--amp`` is set; a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def collate_batch(batch: tuple | list) -> tuple | list:
    """Pass through a batch a data set built whole in ``__getitems__``; collate per-sample items."""
    return batch if isinstance(batch, tuple) else default_collate(batch)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    sampler: Sampler | None = None,
    num_workers: int = 0,
    drop_last: bool = False,
    batch_sampler: Sampler | None = None,
) -> DataLoader:
    """A DataLoader with the project's conventions (seeded shuffling, workers kept alive).

    Batches are fetched whole through the data set's ``__getitems__`` (one tensor slice for
    in-memory data) and passed through :func:`collate_batch`.
    """
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=num_workers, generator=generator,
                          persistent_workers=num_workers > 0, collate_fn=collate_batch)
    return DataLoader(
        dataset,
        collate_fn=collate_batch,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        generator=generator,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        drop_last=drop_last,
    )


def progress(iterable: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """A tqdm bar on stderr that disappears when done, so logs keep only the summaries; rank 0 only."""
    return iter(tqdm(iterable, desc=desc, total=total, leave=False, file=sys.stderr, dynamic_ncols=True,
                     disable=None if is_main() else True))
