"""Training batches: shuffled, or balanced over cells (e.g. (label, cluster) pairs) so that every
batch holds positives and negatives for the cluster-contrastive loss and minority cells are not
drowned out; under ``torchrun`` each rank draws its share of the same global batches."""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler

from utils.distributed import rank, world_size
from utils.errors import UserError
from utils.runtime import make_loader


class BalancedBatchSampler(Sampler[list[int]]):
    """Yield ``num_batches`` batches with (nearly) equal counts from each cell.

    Each batch takes ``batch_size // n_cells`` samples per cell, plus one more from randomly chosen
    cells for the remainder. Within a cell samples are drawn from a reshuffled cycle, so every
    sample is visited before any repeats; small cells are therefore oversampled.
    """

    def __init__(self, cells: torch.Tensor, batch_size: int, num_batches: int | None = None,
                 generator: torch.Generator | None = None) -> None:
        cells = torch.as_tensor(cells).long()
        self.members = [torch.nonzero(cells == v).flatten() for v in torch.unique(cells)]
        if batch_size < len(self.members):
            raise UserError(f"--batch_size {batch_size} is smaller than the number of cells each batch must "
                            f"balance ({len(self.members)}: label, cluster or group combinations); raise "
                            f"--batch_size to at least {len(self.members)} or use fewer clusters (--num_clusters)")
        self.batch_size = batch_size
        self.num_batches = num_batches if num_batches is not None else max(1, -(-len(cells) // batch_size))
        self.generator = generator

    def __len__(self) -> int:
        return self.num_batches

    def _cycle(self, members: torch.Tensor) -> Iterator[int]:
        while True:
            yield from members[torch.randperm(len(members), generator=self.generator)].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        streams = [self._cycle(m) for m in self.members]
        per_cell, extra = divmod(self.batch_size, len(streams))
        for _ in range(self.num_batches):
            counts = [per_cell] * len(streams)
            for j in torch.randperm(len(streams), generator=self.generator)[:extra].tolist():
                counts[j] += 1
            yield [next(stream) for stream, k in zip(streams, counts) for _ in range(k)]


class ShardedBatches(Sampler[list[int]]):
    """This rank's share of each global batch drawn by ``batches``.

    Every rank draws the same global batches (same sampler, same seed) and keeps the ``rank``-th of
    ``world`` contiguous chunks (the first ``len % world`` chunks one sample larger), so the
    shares concatenated in rank order are exactly the batch one process would draw. A global batch
    with fewer samples than ranks (the end of an epoch) is skipped, so no rank gets an empty share.
    """

    def __init__(self, batches: Sampler[list[int]], rank_: int, world: int) -> None:
        if not 0 <= rank_ < world:
            raise ValueError(f"rank {rank_} is outside a world of {world} processes")
        self.batches, self.rank, self.world = batches, rank_, world

    def __len__(self) -> int:
        n = len(self.batches)  # type: ignore[arg-type]
        if isinstance(self.batches, BatchSampler) and not self.batches.drop_last:
            tail = len(self.batches.sampler) % self.batches.batch_size  # type: ignore[arg-type]
            n -= 0 < tail < self.world
        return n

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            if len(batch) >= self.world:
                yield [int(i) for i in torch.tensor_split(torch.as_tensor(batch), self.world)[self.rank]]


def training_loader(dataset: Dataset, batch_size: int, generator: torch.Generator, num_workers: int = 0,
                    cells: torch.Tensor | None = None) -> DataLoader:
    """Shuffled batches (never ending with a batch of one sample), or batches balanced over ``cells`` when given.

    ``batch_size`` is the global batch: under ``torchrun`` each rank loads its share of it (see
    :class:`ShardedBatches`), the same batches a single process draws for the same seed.
    """
    if cells is None:
        # the DataLoader draws its worker seed from ``generator`` before the permutation, as with shuffle=True;
        # a last batch of one sample is dropped: BatchNorm cannot train on it (1x1 feature maps) and its step is noise
        lone_last = len(dataset) % batch_size == 1 and len(dataset) > batch_size  # type: ignore[arg-type]
        batches: Sampler[list[int]] = BatchSampler(RandomSampler(dataset, generator=generator), batch_size, lone_last)
        loader_generator: torch.Generator | None = generator
    else:
        batches, loader_generator = BalancedBatchSampler(cells, batch_size, generator=generator), None
    if world_size() > 1:
        if batch_size < world_size():
            raise UserError(f"--batch_size {batch_size} is the global batch and must be at least the number of "
                            f"processes ({world_size()}); raise it or start fewer processes")
        batches = ShardedBatches(batches, rank(), world_size())
    return make_loader(dataset, batch_size, generator=loader_generator, num_workers=num_workers,
                       batch_sampler=batches)
