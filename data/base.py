"""The dataset contract every data set follows (ARCHITECTURE.md, "Contracts").

Each split yields ``(x, y, a, index)``: image tensor, class label, spurious attribute (-1 where
unknown) and the position of the sample in its split. ``y`` and ``a`` are also exposed as whole
tensors so samplers, clustering and metrics never decode an image.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset


class SpuriousDataset(Dataset):
    """Base class of one split. Subclasses implement :meth:`load_image`."""

    def __init__(
        self,
        y: torch.Tensor,
        a: torch.Tensor,
        n_classes: int,
        n_attrs: int,
        split: str,
        filenames: Sequence[str] | None = None,
    ) -> None:
        self.y = torch.as_tensor(y, dtype=torch.long)
        self.a = torch.as_tensor(a, dtype=torch.long)
        if self.y.shape != self.a.shape or self.y.dim() != 1:
            raise ValueError(f"y and a must be 1-D and equally long, got {tuple(self.y.shape)} and {tuple(self.a.shape)}")
        if filenames is not None and len(filenames) != len(self.y):
            raise ValueError(f"{len(filenames)} file names for {len(self.y)} samples")
        self.n_classes = int(n_classes)
        self.n_attrs = int(n_attrs)
        self.split = split
        self.filenames = list(filenames) if filenames is not None else None

    def __len__(self) -> int:
        return len(self.y)

    def load_image(self, index: int) -> torch.Tensor:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, int]:
        return self.load_image(index), int(self.y[index]), int(self.a[index]), index

    def load_images(self, indices: torch.Tensor) -> torch.Tensor:
        """Images of ``indices`` stacked into one batch; in-memory data sets slice instead."""
        return torch.stack([self.load_image(int(i)) for i in indices])

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """A whole batch at once (the DataLoader passes it through ``utils.runtime.collate_batch``)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.load_images(idx), self.y[idx], self.a[idx], idx

    @property
    def groups(self) -> torch.Tensor:
        """Group id ``g = y * n_attrs + a`` (-1 where the attribute is unknown)."""
        return torch.where(self.a >= 0, self.y * self.n_attrs + self.a, torch.full_like(self.y, -1))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one image tensor, read from the first sample."""
        return tuple(self.load_image(0).shape)

    def subset(self, indices: torch.Tensor) -> "SubsetView":
        """A view on some samples, re-indexed 0..len-1 (e.g. the two halves of a split)."""
        return SubsetView(self, torch.as_tensor(indices).long())


class SubsetView(SpuriousDataset):
    """Samples ``indices`` of ``parent`` as a split of their own; ``index`` is the new position."""

    def __init__(self, parent: SpuriousDataset, indices: torch.Tensor) -> None:
        names = [parent.filenames[i] for i in indices.tolist()] if parent.filenames is not None else None
        super().__init__(parent.y[indices], parent.a[indices], parent.n_classes, parent.n_attrs, parent.split, names)
        self.parent = parent
        self.indices = indices

    def load_image(self, index: int) -> torch.Tensor:
        return self.parent.load_image(int(self.indices[index]))

    def load_images(self, indices: torch.Tensor) -> torch.Tensor:
        return self.parent.load_images(self.indices[indices])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.parent.input_shape


class TensorSpuriousDataset(SpuriousDataset):
    """A split whose images are held in memory as one tensor (digits, ColoredMNIST)."""

    def __init__(self, images: torch.Tensor, y: torch.Tensor, a: torch.Tensor, n_classes: int, n_attrs: int,
                 split: str, env: torch.Tensor | None = None, transform: Callable | None = None) -> None:
        super().__init__(y, a, n_classes, n_attrs, split)
        if len(images) != len(self.y):
            raise ValueError(f"{len(images)} images for {len(self.y)} labels")
        self.images = images
        self.env = env
        self.transform = transform

    def load_image(self, index: int) -> torch.Tensor:
        x = self.images[index]
        return self.transform(x) if self.transform is not None else x

    def load_images(self, indices: torch.Tensor) -> torch.Tensor:
        if self.transform is not None:
            return super().load_images(indices)
        return self.images[indices]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])
