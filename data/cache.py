"""Decode-once image cache for the photo data sets: one memory-mapped uint8 array per split.

Decoding and resizing JPEGs costs far more than training a step on a GPU, and every mode and
method reads the same images again. So each split is decoded once, in parallel threads, into
``<cache_dir>/<data>_<split>_<kind><size>_<key>.npy`` (``(N, H, W, 3)`` uint8, memory-mapped, so
DataLoader workers share it through the page cache) with a JSON manifest beside it.

- ``key`` hashes the image folder and the ordered file names of the split (a different metadata
  file or split gets its own cache); the manifest holds a fingerprint of every image's size and
  modification time plus the image size and transform: when one of them changes, the file is
  rebuilt in place, with a message.
- The manifest holds a CRC-32 of every row; rows are checked as they are read, and a row that
  fails is decoded again from its image (and written back) with a message, so corrupt bytes never
  reach a model. A file whose header, size or manifest does not match is rebuilt whole.
- ``--cache_max_gb`` bounds the bytes of this run's caches (and the free disk space is checked);
  a split that does not fit is decoded from its files at every batch instead, with a message.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from utils.errors import UserError
from utils.runtime import progress

CACHE_VERSION = 1
FREE_DISK_MARGIN = 1 << 30  # leave at least 1 GiB of the disk free
BUILD_CHUNK = 32


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/spurious-robustness/images`` (``~/.cache/...`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "spurious-robustness" / "images"


def note(message: str) -> None:
    print(f"image cache: {message}", file=sys.stderr, flush=True)


class ImageCache:
    """The cached pixels of one split: ``rows(indices)`` returns ``(B, H, W, 3)`` uint8, checked.

    ``decode(i)`` recomputes row ``i`` from its image (used to build, and to repair a bad row).
    ``extra`` holds per-row int32 side information (the original height and width of each image).
    """

    def __init__(self, path: Path, shape: tuple[int, ...], crc: np.ndarray, extra: np.ndarray,
                 decode: Callable[[int], tuple[np.ndarray, tuple[int, int]]]) -> None:
        self.path = path
        self.shape = shape
        self.crc = crc
        self.extra = extra
        self.decode = decode
        self._array: np.ndarray | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}  # workers map the file themselves

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        return self._array

    def rows(self, indices: Sequence[int]) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        pixels = self.array[indices]
        for k, i in enumerate(indices):
            if zlib.crc32(pixels[k]) != self.crc[i]:
                pixels[k] = self.repair(int(i))
        return pixels

    def repair(self, index: int) -> np.ndarray:
        """Decode row ``index`` again and write it back (when the file is writable)."""
        pixels, _ = self.decode(index)
        note(f"row {index} of {self.path} is corrupt (checksum mismatch); decoded it again from its image")
        row_bytes = pixels.nbytes
        offset = self.array.offset + index * row_bytes
        try:
            with open(self.path, "r+b") as file:
                file.seek(offset)
                file.write(np.ascontiguousarray(pixels).tobytes())
        except OSError:
            pass
        return pixels


class Budget:
    """Bytes still allowed for this run's caches (``--cache_max_gb``)."""

    def __init__(self, max_gb: float) -> None:
        self.max_gb = max_gb
        self.left = int(max_gb * 1e9)

    def take(self, nbytes: int, what: str) -> bool:
        if nbytes > self.left:
            note(f"{what} needs {nbytes / 1e9:.2f} GB, over what is left of --cache_max_gb {self.max_gb:g} "
                 f"({max(self.left, 0) / 1e9:.2f} GB); its images are decoded at every batch instead "
                 "(raise --cache_max_gb to cache it)")
            return False
        self.left -= nbytes
        return True


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def fingerprint(image_dir: Path, filenames: Sequence[str]) -> str:
    """Changes when any image's size or modification time changes (one ``stat`` per file)."""
    stats = []
    for name in filenames:
        st = os.stat(image_dir / name)
        stats.append((st.st_size, st.st_mtime_ns))
    return _digest(stats)


def open_cache(cache_dir: Path, label: str, image_dir: Path, filenames: Sequence[str], kind: str,
               row_shape: tuple[int, int, int], decode: Callable[[int], tuple[np.ndarray, tuple[int, int]]],
               budget: Budget, threads: int) -> ImageCache | None:
    """The cache of one split, built (or rebuilt) when needed; ``None`` when it does not fit the budget.

    ``label`` names the data set and split, ``kind`` the stored transform (e.g. ``crop224``);
    ``decode(i)`` gives row ``i`` and the original (height, width) of its image.
    """
    shape = (len(filenames), *row_shape)
    nbytes = int(np.prod(shape))
    if not budget.take(nbytes, f"{label} ({len(filenames)} images)"):
        return None
    key = _digest(str(Path(image_dir).resolve()), list(filenames))
    path = Path(cache_dir) / f"{label}_{kind}_{key}.npy"
    manifest_path = path.with_suffix(".json")
    expected = {"version": CACHE_VERSION, "kind": kind, "shape": list(shape),
                "fingerprint": fingerprint(Path(image_dir), filenames)}
    manifest = _read_manifest(path, manifest_path, expected)
    if manifest is None:
        _check_disk(Path(cache_dir), nbytes, path)
        manifest = _build(path, manifest_path, expected, decode, threads)
    return ImageCache(path, shape, np.asarray(manifest["crc"], dtype=np.int64),
                      np.asarray(manifest["original_hw"], dtype=np.int32), decode)


def _read_manifest(path: Path, manifest_path: Path, expected: dict) -> dict | None:
    """The manifest when the cache file is complete and current; ``None`` (after saying why) otherwise."""
    if not manifest_path.exists():
        if path.exists():
            note(f"{path} has no manifest (an interrupted build?); rebuilding it")
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
        stale = [k for k, v in expected.items() if manifest.get(k) != v]
        if stale:
            note(f"{path} was built for other {' / '.join(stale)} (images changed, or another size); rebuilding it")
            return None
        array = np.load(path, mmap_mode="r")
        if list(array.shape) != expected["shape"] or array.dtype != np.uint8:
            raise ValueError(f"holds {array.dtype} {array.shape}")
        if os.path.getsize(path) != array.offset + array.nbytes:
            raise ValueError("its length does not match its header")
        if len(manifest["crc"]) != expected["shape"][0] or len(manifest["original_hw"]) != expected["shape"][0]:
            raise ValueError("its manifest lists another number of rows")
    except (OSError, ValueError, KeyError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
        note(f"{path} is corrupt ({exc}); rebuilding it")
        return None
    return manifest


def _check_disk(cache_dir: Path, nbytes: int, path: Path) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(cache_dir).free
    if nbytes > free - FREE_DISK_MARGIN:
        raise UserError(f"the image cache {path} needs {nbytes / 1e9:.2f} GB but {cache_dir} has "
                        f"{free / 1e9:.2f} GB free; choose another folder with --cache_dir, lower "
                        "--cache_max_gb, or pass --no_cache")


def _build(path: Path, manifest_path: Path, expected: dict,
           decode: Callable[[int], tuple[np.ndarray, tuple[int, int]]], threads: int) -> dict:
    """Decode every image into a temporary file with ``threads`` threads, then move it into place."""
    n = expected["shape"][0]
    started = time.perf_counter()
    manifest_path.unlink(missing_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=tuple(expected["shape"]))
    crc = np.zeros(n, dtype=np.int64)
    original_hw = np.zeros((n, 2), dtype=np.int64)

    def fill(start: int) -> int:
        stop = min(start + BUILD_CHUNK, n)
        for i in range(start, stop):
            pixels, hw = decode(i)
            array[i] = pixels
            crc[i] = zlib.crc32(np.ascontiguousarray(pixels))
            original_hw[i] = hw
        return stop - start

    try:
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            done = pool.map(fill, range(0, n, BUILD_CHUNK))
            for _ in progress(done, desc=f"caching {path.stem}", total=-(-n // BUILD_CHUNK)):
                pass
        array.flush()
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    manifest = {**expected, "crc": crc.tolist(), "original_hw": original_hw.tolist()}
    manifest_tmp = manifest_path.with_name(f"{manifest_path.name}.{os.getpid()}.tmp")
    manifest_tmp.write_text(json.dumps(manifest))
    os.replace(manifest_tmp, manifest_path)
    note(f"built {path} ({n} images, {np.prod(expected['shape']) / 1e9:.2f} GB) in "
         f"{time.perf_counter() - started:.1f} s")
    return manifest
