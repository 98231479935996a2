"""Seeding, device selection, data loaders and progress bars used by every loop."""
from __future__ import annotations

import contextlib
import functools
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

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


def rng_state(generator: torch.Generator | None = None) -> dict:
    """Every random state a run draws from (Python, NumPy, torch CPU and CUDA, and ``generator``), as
    tensors and plain values, so a resumed run continues the same random streams."""
    numpy_state = np.random.get_state()
    state = {"python": list(random.getstate()[1]), "numpy": torch.from_numpy(numpy_state[1].astype(np.int64)),
             "numpy_rest": [int(numpy_state[2]), int(numpy_state[3]), float(numpy_state[4])], "torch": torch.get_rng_state(),
             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []}
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: dict, generator: torch.Generator | None = None) -> None:
    """Restore what :func:`rng_state` captured (``generator`` too, when it was captured with one)."""
    random.setstate((3, tuple(state["python"]), None))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), *state["numpy_rest"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


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
    """Move a batch to ``device`` (non-blocking from pinned memory).

    A ``uint8`` batch holds 8-bit RGB photos (the photo data sets send them so: a quarter of the
    bytes of floats): it is converted to float and normalised with the ImageNet statistics here, on
    the device, with the same arithmetic as torchvision's ``ToTensor`` + ``Normalize``.
    """
    x = x.to(device, non_blocking=True)
    x = x.contiguous(memory_format=torch.channels_last if channels_last and x.dim() == 4 else torch.contiguous_format)
    if x.dtype == torch.uint8:  # reordered above while still 1 byte per value; float() keeps the layout
        mean, std = _image_statistics(x.device)
        x = x.float().div_(255).sub_(mean).div_(std)
    return x


@functools.lru_cache(maxsize=None)
def _image_statistics(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and std as (3, 1, 1) tensors on ``device``, made once (no copy per batch)."""
    def column(values: tuple[float, ...]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32).view(3, 1, 1).to(device)
    return column(IMAGENET_MEAN), column(IMAGENET_STD)


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
    """A DataLoader with the project's conventions (seeded shuffling, workers kept alive, and
    pinned memory when CUDA is present, so :func:`to_device` copies without blocking).

    Batches are fetched whole through the data set's ``__getitems__`` (one tensor slice for
    in-memory data, one read of the image cache for photos) and passed through :func:`collate_batch`.
    """
    pin = torch.cuda.is_available()
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=num_workers, generator=generator,
                          persistent_workers=num_workers > 0, collate_fn=collate_batch, pin_memory=pin)
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
        pin_memory=pin,
    )


_TASK = [""]


def progress(iterable: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """A tqdm bar on stderr that disappears when done, so logs keep only the summaries; rank 0 only.

    ``desc`` becomes the :func:`current_task` an interruption reports, until the next loop starts
    (so a stop while an epoch's state is being saved still names that epoch).
    """
    _TASK[0] = desc
    yield from tqdm(iterable, desc=desc, total=total, leave=False, file=sys.stderr, dynamic_ncols=True,
                    disable=None if is_main() else True)


def current_task() -> str:
    """The loop running now or last (a progress bar's description), or "" before the first."""
    return _TASK[0]
