"""Data-parallel runs under ``torchrun``: process group, rank helpers, gathers and shared failures.

``torchrun --nproc_per_node=N`` (or ``--nnodes=M ...``) starts one process per device and sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. :func:`init_from_env`
reads them and joins the process group (NCCL on CUDA, gloo on CPU). A plain ``python3 run.py``
sets none of them, and then every helper here is a no-op for a single process (rank 0 of 1), so
the training code calls them unconditionally.

Failures: a rank that raises (a bad image on its shard, a missing file on one machine) must not
leave the others waiting forever in a collective. Data loading and other rank-local work runs
inside :func:`together` / :func:`fail_together`, which exchange an error flag at that point: every
rank then stops with :class:`RankFailed`, whose message (the failing rank's own) rank 0 prints once.
Errors outside those points end the failing process; ``torchrun`` then stops the others, and the
process-group timeout is the last resort.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import warnings
from typing import Any, Callable, Iterable, Iterator, TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from utils.errors import UserError

T = TypeVar("T")
_CONTROL: dict[str, Any] = {"group": None}  # gloo group for error flags (no GPU sync under NCCL)


class RankFailed(UserError):
    """Raised on every rank when one rank failed at a shared point; carries that rank's message.
    ``on_main`` says whether it was raised on rank 0, which alone prints it (known here, because the
    process group may be gone by the time the error is printed)."""

    def __init__(self, rank: int, message: str) -> None:
        super().__init__(message)
        self.rank = rank
        self.on_main = is_main()


def launched_by_torchrun() -> bool:
    """True when the launcher asked for more than one process (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    """Rank 0: the process that prints, shows progress bars, runs k-means and writes files."""
    return rank() == 0


def init_from_env(device: torch.device, timeout_s: float = 1800.0) -> torch.device:
    """Join the process group ``torchrun`` describes; return this process's device.

    Without ``torchrun`` (or with one process) nothing happens and ``device`` is returned as is.
    On CUDA each process takes ``cuda:LOCAL_RANK`` and talks NCCL; elsewhere gloo. A collective
    that waits longer than ``timeout_s`` fails instead of hanging.
    """
    if not launched_by_torchrun() or is_distributed():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(backend=backend, timeout=timeout)
    _CONTROL["group"] = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None
    return device


def shutdown() -> None:
    """Leave the process group (a no-op for a single process)."""
    if is_distributed():
        dist.destroy_process_group()
        _CONTROL["group"] = None


def barrier() -> None:
    """Wait until every rank is here (e.g. until rank 0 has written a file the others read)."""
    if is_distributed():
        dist.barrier(group=_CONTROL["group"])


def main_print(*values: Any, **kwargs: Any) -> None:
    """``print`` on rank 0 only, so a run logs each line once."""
    if is_main():
        print(*values, **kwargs)


@contextlib.contextmanager
def quiet_unless_main() -> Iterator[None]:
    """Silence stdout and warnings on ranks other than 0, so a run logs each line once."""
    if is_main():
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _agree(error: BaseException | None, where: str, done: bool = False) -> bool:
    """Exchange each rank's state (working, done, failed); if any rank failed, raise on every rank
    (see the module docstring). Returns whether every rank is done."""
    states = torch.zeros(world_size(), dtype=torch.int32)
    states[rank()] = 2 if error is not None else int(done)
    dist.all_reduce(states, group=_CONTROL["group"])
    if bool((states == 2).any()):
        first = int(torch.nonzero(states == 2)[0])
        messages: list[str | None] = [None] * world_size()
        mine = None if error is None else (str(error) if isinstance(error, UserError)
                                           else f"{type(error).__name__}: {error}")
        dist.all_gather_object(messages, mine, group=_CONTROL["group"])
        if error is not None and not isinstance(error, UserError):
            raise error  # a bug: keep its traceback on the rank where it happened
        raise RankFailed(first, f"{messages[first]} (rank {first} of {world_size()}, {where})") from error
    return bool((states == 1).all())


def together(iterable: Iterable[T], where: str) -> Iterator[T]:
    """Iterate ``iterable`` in step with the other ranks; an exception while fetching an item on any
    rank stops all ranks (:class:`RankFailed`). A rank whose items run out first keeps answering
    until all are done (evaluation shards may differ by a batch). Wrap data loaders with it, never
    code that itself communicates (a forward/backward under DDP). Costs one tiny all-reduce per item."""
    if not is_distributed():
        yield from iterable
        return
    items, done = iter(iterable), False
    while True:
        item, error = None, None
        if not done:
            try:
                item = next(items)
            except StopIteration:
                done = True
            except Exception as exc:  # noqa: BLE001 - shared with the other ranks, then re-raised
                error = exc
        if _agree(error, where, done):
            return
        if not done:
            yield item  # type: ignore[misc]


@contextlib.contextmanager
def fail_together(where: str) -> Iterator[None]:
    """Run a block on every rank; if it raises on any rank, all ranks raise :class:`RankFailed`."""
    if not is_distributed():
        yield
        return
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - shared with the other ranks, then re-raised
        _agree(exc, where)
    else:
        _agree(None, where)


def run_on_main(action: Callable[..., T], *args: Any, where: str = "on rank 0", **kwargs: Any) -> T:
    """``action(*args, **kwargs)`` on rank 0 only (k-means, writing files); every rank gets its result.

    The other ranks wait; if rank 0 fails they stop with the same message.
    """
    if not is_distributed():
        return action(*args, **kwargs)
    result, error = None, None
    if is_main():
        try:
            result = action(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - shared with the other ranks, then re-raised
            error = exc
    _agree(error, where)
    box = [result]
    dist.broadcast_object_list(box, src=0, group=_CONTROL["group"])
    return box[0]


def shard_bounds(n: int, rank_: int | None = None, world: int | None = None) -> tuple[int, int]:
    """``[start, stop)`` of this rank's contiguous share of ``n`` items (the first ``n % world``
    ranks hold one more); ``(0, n)`` for a single process."""
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    per, extra = divmod(n, world)
    start = rank_ * per + min(rank_, extra)
    return start, start + per + (rank_ < extra)


class ShardSampler(Sampler[int]):
    """This rank's contiguous block of ``range(n)``, in order (evaluation, feature extraction)."""

    def __init__(self, n: int) -> None:
        self.start, self.stop = shard_bounds(n)

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))


def _comm_device(x: torch.Tensor) -> torch.device:
    """Where a tensor must live for the default backend (NCCL needs CUDA tensors)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return x.device


def _all_gather_rows(x: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``x`` (same trailing shape and dtype, any number of rows), in rank order."""
    device = _comm_device(x)
    local = x.detach().to(device).contiguous()
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([len(local)], device=device))
    rows = [int(s) for s in sizes]
    padded = torch.zeros((max(rows), *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in rows]
    dist.all_gather(parts, padded)
    return [part[:k].to(x.device) for part, k in zip(parts, rows)]


def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Rows of every rank concatenated in rank order (no gradient); ``x`` itself for one process."""
    if not is_distributed():
        return x
    return torch.cat(_all_gather_rows(x))


class _GatherWithGrad(torch.autograd.Function):
    """Forward: rows of every rank, concatenated. Backward: every rank's loss used this rank's
    rows, so their gradient is the sum over ranks of the incoming gradient, sliced to the rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        parts = _all_gather_rows(x)
        start = sum(len(p) for p in parts[: rank()])
        ctx.rows = (start, start + len(x))
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        device = _comm_device(grad)
        total = grad.detach().to(device).contiguous().clone()
        dist.all_reduce(total)
        start, stop = ctx.rows
        return total[start:stop].to(grad.device)


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Rows of every rank concatenated in rank order, differentiable with respect to this rank's rows.

    Under DDP (which averages gradients over ranks) a loss computed on the gathered tensor on every
    rank then gives exactly the gradient of that loss on one process with the whole batch.
    """
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over ranks (a copy, no gradient), e.g. epoch loss totals for logging."""
    if not is_distributed():
        return x.detach().clone()
    total = x.detach().to(_comm_device(x)).clone()
    dist.all_reduce(total)
    return total.to(x.device)


def global_mean(values: torch.Tensor) -> torch.Tensor:
    """Per-sample losses of this rank's share -> a loss whose DDP gradient is that of the mean over
    the global batch, even when shares differ in size (DDP divides the summed gradients by the
    number of ranks, so each rank contributes ``sum * world / global count``)."""
    if not is_distributed():
        return values.mean()
    count = all_reduce_sum(torch.tensor(float(values.numel()), device=values.device))
    return values.sum() * world_size() / count


def gather_in_order(indices: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    """Rows computed for dataset positions ``indices`` on every rank -> one (n, ...) CPU tensor in
    dataset order, on every rank. Fails if some position was computed by no rank."""
    indices, rows = indices.long().cpu(), rows.detach().cpu()
    if is_distributed():
        indices, rows = all_gather_cat(indices), all_gather_cat(rows)
    filled = torch.zeros(n, dtype=torch.bool)
    filled[indices] = True
    if not bool(filled.all()):
        raise RuntimeError(f"{int((~filled).sum())} of {n} samples were computed by no rank")
    out = torch.empty((n, *rows.shape[1:]), dtype=rows.dtype)
    out[indices] = rows
    return out
