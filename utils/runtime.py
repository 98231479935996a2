"""Seeding, the runtime (device, bf16 autocast, memory format), data loaders and progress bars used by every loop."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import os
import platform
import random
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, TypeVar

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


BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # x86 /proc/cpuinfo flags of native bf16 arithmetic
AMP_FORCE = "force"
CPUINFO = Path("/proc/cpuinfo")  # Linux: the CPU's feature flags


@functools.lru_cache(maxsize=None)
def cpu_bf16_support() -> str | None:
    """The CPU feature that gives native bf16 arithmetic (``amx_bf16``, ``avx512_bf16``, arm64 ``bf16``),
    or None. Without one, bf16 convolutions fall back to emulated kernels that are far slower than fp32
    (docs/performance.md), so ``--amp`` is only worth it when this names a feature."""
    if CPUINFO.exists():
        for line in CPUINFO.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() in ("flags", "features"):  # x86 and arm64 spellings
                found = set(value.split())
                return next((flag for flag in (*BF16_CPU_FLAGS, "bf16") if flag in found), None)
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        return "bf16" if _sysctl_flag("hw.optional.arm.FEAT_BF16") else None
    return None


def _sysctl_flag(name: str) -> bool:
    try:
        return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5).stdout.strip() == "1"
    except (OSError, subprocess.SubprocessError):
        return False


@dataclasses.dataclass(frozen=True)
class Runtime:
    """How models run: device, bf16 autocast, memory format, how often long steps save their resume state.

    Made from the flags by one function (:func:`runtime_from_args`) and handed to every training and
    inference loop in place of a bare device, so no call site passes ``--amp`` or ``--channels_last`` by
    hand (or can drop them). A bare ``torch.device`` given to a loop means the plain fp32 runtime.
    """

    device: torch.device
    bf16: bool = False  # forward passes under bf16 autocast (losses are computed in fp32)
    channels_last: bool = False  # 4-D batches (and models placed by a loop) in channels-last memory format
    prune_channels_last: bool = False  # the same for PruSC's mask-learning step
    resume_every: int = 1  # epochs between resume-state saves (the last epoch is always saved)
    note: str = ""  # what the one runtime line says about the choices (e.g. why --amp fell back)
    num_workers: int = 0  # DataLoader worker processes (--num_workers)
    eval_batch_size: int = 512  # batch size of inference (--eval_batch_size)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context every model forward runs in: bf16 autocast, or nothing (fp32)."""
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        """A batch on the device in the runtime's memory format (:func:`to_device`)."""
        return to_device(x, self.device, self.channels_last)

    def place(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` on the device, its 4-D weights in the runtime's memory format."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return model.to(self.device, memory_format=fmt)

    def for_pruning(self) -> "Runtime":
        """The runtime of the mask-learning step (its own memory format, ``--prune_memory_format``)."""
        return dataclasses.replace(self, channels_last=self.prune_channels_last)

    def describe(self) -> str:
        """One line: device, precision and memory format, and why (printed once at the start of a run)."""
        where = self.device.type
        if where == "cpu":
            support = cpu_bf16_support()
            where = f"cpu ({torch.backends.cpu.get_cpu_capability()}, " + (
                f"bf16 instructions: {support})" if support else "no bf16 instructions)")
        precision = "bf16 autocast" if self.bf16 else "fp32"
        fmt = "channels-last" if self.channels_last else "NCHW"
        if self.prune_channels_last != self.channels_last:
            fmt += f" (pruning {'channels-last' if self.prune_channels_last else 'NCHW'})"
        return f"runtime: {where}, {precision}, {fmt}" + (f"; {self.note}" if self.note else "")


def as_runtime(runtime: Runtime | torch.device) -> Runtime:
    """``runtime`` itself, or the plain fp32 runtime of a bare device."""
    return runtime if isinstance(runtime, Runtime) else Runtime(torch.device(runtime))


def choose_bf16(device: torch.device, amp: Any) -> tuple[bool, str]:
    """Whether forwards run under bf16 autocast for ``--amp`` (False, True or ``force``) on ``device``,
    and a note for the runtime line. On a CPU without native bf16 ``--amp`` falls back to fp32 (emulated
    bf16 is slower than fp32); ``--amp force`` runs bf16 anyway (to measure it, or to test the path)."""
    if not amp:
        if device.type == "cpu" and cpu_bf16_support():
            return False, "--amp would use bf16"
        return False, ""
    if device.type == "cuda" or amp == AMP_FORCE:
        return True, ("--amp force: bf16 without native instructions (emulated, slow)"
                      if device.type == "cpu" and not cpu_bf16_support() else "")
    if device.type == "cpu":
        if cpu_bf16_support():
            return True, ""
        return False, ("--amp falls back to fp32: this CPU has no native bf16 (avx512_bf16/amx_bf16/arm bf16); "
                       "--amp force runs bf16 anyway, emulated and slow")
    return False, f"--amp falls back to fp32: no bf16 autocast on {device.type}"


def amp_flag(text: str) -> str:
    """argparse type of ``--amp``'s optional value: only ``force`` (plain ``--amp`` needs none)."""
    if text != AMP_FORCE:
        raise argparse.ArgumentTypeError(f"--amp takes no value or 'force', not {text!r}")
    return text


def add_runtime_args(parser: argparse.ArgumentParser) -> None:
    """The runtime flags of ``run.py``: ``--amp [force]``, ``--channels_last``, ``--prune_memory_format``,
    ``--resume_every``."""
    parser.add_argument("--amp", nargs="?", const=True, default=False, type=amp_flag,
                        help="bf16 autocast on CUDA, and on CPUs with native bf16 (avx512_bf16/amx_bf16/arm bf16); "
                             "elsewhere it falls back to fp32 with one line; '--amp force' runs bf16 on any CPU")
    parser.add_argument("--channels_last", action="store_true",
                        help="channels-last memory format of 4-D batches and convolution weights")
    parser.add_argument("--prune_memory_format", choices=["nchw", "channels_last"], default="nchw",
                        help="memory format of PruSC's mask-learning step, whatever --channels_last says: the masked "
                             "step measured faster in NCHW on an H200 and on the CPU (docs/performance.md)")
    parser.add_argument("--resume_every", type=int, default=1,
                        help="epochs between resume-state saves of long steps (the last one is always saved)")


def runtime_from_args(args: argparse.Namespace, device: torch.device | str | None = None) -> Runtime:
    """The :class:`Runtime` of the flags (``--device`` unless ``device`` is given, ``--amp``,
    ``--channels_last``, ``--prune_memory_format``, ``--resume_every``, ``--num_workers``,
    ``--eval_batch_size``); the one place that maps them."""
    device = resolve_device(args.device) if device is None else torch.device(device)
    bf16, note = choose_bf16(device, getattr(args, "amp", False))
    channels_last = bool(getattr(args, "channels_last", False))
    prune_cl = getattr(args, "prune_memory_format", "nchw") == "channels_last"
    every = getattr(args, "resume_every", 1)
    if every < 1:
        raise UserError(f"--resume_every {every}: give a positive number of epochs")
    return Runtime(device, bf16, channels_last, prune_cl, every, note, getattr(args, "num_workers", 0),
                   getattr(args, "eval_batch_size", 512))


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when ``enabled`` (benchmarks that time steps outside the loops)."""
    return Runtime(device, bf16=enabled).autocast()


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
