"""Batches balanced over cells (e.g. (label, cluster) pairs) so that every batch holds positives
and negatives for the cluster-contrastive loss, and minority cells are not drowned out."""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

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


def training_loader(dataset: Dataset, batch_size: int, generator: torch.Generator, num_workers: int = 0,
                    cells: torch.Tensor | None = None) -> DataLoader:
    """Shuffled batches, or batches balanced over ``cells`` when given."""
    if cells is None:
        return make_loader(dataset, batch_size, shuffle=True, generator=generator, num_workers=num_workers)
    return make_loader(dataset, batch_size, num_workers=num_workers,
                       batch_sampler=BalancedBatchSampler(cells, batch_size, generator=generator))
