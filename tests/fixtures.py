"""Writers of tiny data sets in the exact public on-disk layouts, for the data tests."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from data.cmnist import IDX_FILES


def write_idx(path: Path, array: np.ndarray) -> Path:
    """``array`` (uint8) as an IDX file; gzipped when ``path`` ends in ``.gz``."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path


def write_mnist(folder: Path, n_train: int = 60, n_test: int = 20, size: int = 28, gz: bool = True,
                seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Random IDX train/t10k files (classes cycling 0..9) in ``folder``; returns what was written."""
    rng = np.random.default_rng(seed)
    written = {}
    for part, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        image_stem, label_stem = IDX_FILES[part]
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{image_stem}{suffix}", images)
        write_idx(folder / f"{label_stem}{suffix}", labels)
        written[part] = (images, labels)
    return written
