"""Photo data sets read from image files, and the checks every loader of them shares.

A loader reads its metadata with :func:`read_table`, checks it with the helpers below and hands
file names, labels, attributes and split codes to :func:`image_splits`. Each helper turns a
user mistake into a one-line :class:`UserError` that names the file, the column and the flag that
fixes it. Images become ``(3, H, W)`` uint8 tensors (normalised on the device by
``utils.runtime.to_device``): read from the split's decode-once cache (``data/cache.py``) or, with
``--no_cache`` or beyond ``--cache_max_gb``, decoded at every batch in the DataLoader workers
(``--num_workers``).
"""
from __future__ import annotations

import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from data.registry import SPLITS, canonical_name
from data.base import SpuriousDataset
from data.config import DataConfig
from data.cache import Budget, ImageCache, default_cache_dir, open_cache
from data.transforms import Pixels, augment_batch, eval_pixels, resize_side, split_pixels, square_pixels
from utils.errors import UserError
from utils.runtime import progress

SPLIT_CODES = {"train": 0, "0": 0, "val": 1, "valid": 1, "validation": 1, "1": 1, "test": 2, "2": 2}
BINARY_CODES = {"0": 0, "1": 1, "false": 0, "true": 1}
DEFAULT_SPLIT_COLUMN = "split"
SEEDED_SPLIT_FRACTIONS = (0.8, 0.1)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
LOSSY_MODES = {**{mode: "16/32-bit grey scaled to 8 bits" for mode in WIDE_GREY_MODES},
               "F": "float grey clipped to 0..255", "RGBA": "with alpha dropped", "LA": "with alpha dropped",
               "PA": "with alpha dropped", "CMYK": "CMYK converted approximately"}


class ImageFileDataset(SpuriousDataset):
    """One split of image files under ``image_dir``; ``filenames`` are relative to it.

    Items are ``(3, H, W)`` uint8 tensors made by ``pixels`` (a :class:`Pixels` transform), or read
    from ``cache`` after :meth:`use_cache`.
    """

    def __init__(self, image_dir: Path, filenames: Sequence[str], y: np.ndarray, a: np.ndarray, n_classes: int,
                 n_attrs: int, split: str, pixels: Pixels) -> None:
        super().__init__(torch.as_tensor(y), torch.as_tensor(a), n_classes, n_attrs, split, filenames)
        self.image_dir = Path(image_dir)
        self.pixels = pixels
        self.stored: Pixels | None = None
        self.cache: ImageCache | None = None
        self.augment_size: int | None = None

    def open_image(self, index: int) -> Image.Image:
        path = self.image_dir / self.filenames[index]
        try:
            with Image.open(path) as image:
                return to_rgb(image)
        except OSError as exc:  # PIL's UnidentifiedImageError included
            raise UserError(f"cannot decode image {path} ({exc}); replace it or drop its row from the metadata"
                            ) from exc

    def decode_stored(self, index: int) -> tuple[np.ndarray, tuple[int, int]]:
        """The cached row of image ``index`` and the image's original (height, width)."""
        image = self.open_image(index)
        return self.stored(image), (image.height, image.width)

    def use_cache(self, cache_dir: Path, label: str, size: int, augment: bool, budget: Budget,
                  threads: int) -> None:
        """Read images from a decode-once cache: the evaluation crop itself, or, for augmented
        training, the whole image squeezed to a square that :func:`augment_batch` crops from."""
        side = resize_side(size) if augment else size
        self.stored = square_pixels(size) if augment else eval_pixels(size)
        self.cache = open_cache(cache_dir, label, self.image_dir, self.filenames,
                                f"{'square' if augment else 'crop'}{side}", (side, side, 3), self.decode_stored,
                                budget, threads)
        self.augment_size = size if augment and self.cache is not None else None

    def load_images(self, indices: torch.Tensor) -> torch.Tensor:
        if self.cache is None:
            batch = np.stack([self.pixels(self.open_image(int(i))) for i in indices])
        else:
            batch = self.cache.rows(indices)
            if self.augment_size is not None:
                batch = augment_batch(batch, self.cache.extra[np.asarray(indices)], self.augment_size)
        return torch.from_numpy(batch).permute(0, 3, 1, 2)

    def load_image(self, index: int) -> torch.Tensor:
        return self.load_images(torch.tensor([index]))[0]


def to_rgb(image: Image.Image) -> Image.Image:
    """The image in RGB; 16/32-bit grey is scaled to 8 bits (PIL's own conversion clips it, to white)."""
    if image.mode in WIDE_GREY_MODES:
        grey = np.clip(np.round(np.asarray(image, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8)
        image = Image.fromarray(grey, "L")
    return image.convert("RGB")


def _image_mode(path: Path, decode: bool = False) -> tuple[str | None, str | None]:
    """(mode, None) when the image's header (with ``decode``, all of it) reads, else (None, why)."""
    try:
        with Image.open(path) as image:
            if decode:
                image.load()
            return image.mode, None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError or its own types on bad files
        return None, f"{type(exc).__name__}: {exc}"


def check_images_open(splits: Mapping[str, ImageFileDataset], metadata: Path | str, decode: bool = False) -> None:
    """Read the header (with ``decode``, the whole image) of every image of every split, in parallel,
    before any training.

    A file that does not open is an error naming it; modes that lose information on the way to
    8-bit RGB (16-bit grey, alpha, CMYK, float) are warned about once (by the header pass).
    """
    items = [(split, ds.image_dir / name) for split, ds in splits.items() for name in ds.filenames]
    with ThreadPoolExecutor(max_workers=min(32, 4 * (os.cpu_count() or 1))) as pool:
        found = list(progress(pool.map(_image_mode, [path for _, path in items], [decode] * len(items)),
                              desc="decode images" if decode else "check images", total=len(items)))
    broken = [(split, path, why) for (split, path), (_, why) in zip(items, found) if why is not None]
    if broken:
        split, path, why = broken[0]
        raise UserError(f"image {path} ({split} split) cannot be opened ({why}); replace it or drop its row from "
                        f"{metadata} ({len(broken)} of {len(items)} images unreadable; --skip_image_check skips "
                        "this check)")
    lossy = Counter(mode for mode, _ in found if mode in LOSSY_MODES)
    if lossy and not decode:
        what = ", ".join(f"{n} {LOSSY_MODES[mode]} (mode {mode})" for mode, n in lossy.items())
        print(f"warning: {sum(lossy.values())} of {len(items)} images lose information when converted to 8-bit "
              f"RGB: {what}", file=sys.stderr)


def require_root(data: DataConfig, data_name: str, holds: str) -> Path:
    """``--train_root_dir`` as an existing folder."""
    if data.train_root_dir is None:
        raise UserError(f"--data {data_name} needs --train_root_dir <folder holding {holds}>")
    root = Path(data.train_root_dir).expanduser()
    if not root.is_dir():
        raise UserError(f"--train_root_dir {root} does not exist or is not a folder; pass the folder holding {holds}")
    return root


def locate_metadata(data: DataConfig, data_name: str, default_name: str | None = None) -> tuple[Path, Path]:
    """(metadata CSV, image folder). The CSV is ``--metadata``, else ``<--train_root_dir>/<default_name>``;
    images are looked up under ``--train_root_dir``, else in the CSV's folder."""
    if data.metadata is None:
        if default_name is None:
            raise UserError(f"--data {data_name} needs --metadata <CSV file> (and --train_root_dir <image folder>)")
        root = require_root(data, data_name, f"{default_name} and the images")
        return root / default_name, root
    metadata = Path(data.metadata).expanduser()
    image_dir = metadata.parent if data.train_root_dir is None else require_root(data, data_name, "the images")
    return metadata, image_dir


def find_first(candidates: Sequence[Path], what: str, fix: str) -> Path:
    """The first existing path among ``candidates``; otherwise an error listing every place tried."""
    for path in candidates:
        if path.exists():
            return path
    raise UserError(f"{what} not found: looked for {', '.join(str(p) for p in candidates)}; {fix}")


def read_table(path: Path, flag: str, **read_csv_args) -> pd.DataFrame:
    """``pandas.read_csv`` of a metadata file; a missing or unparsable file names ``flag``."""
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise UserError(f"metadata file {path} {what}; check {flag}")
    try:
        table = pd.read_csv(path, **read_csv_args)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"cannot read {path} as a table ({type(exc).__name__}: {exc}); check {flag}") from exc
    if table.empty:
        raise UserError(f"metadata file {path} has a header but no rows; check {flag}")
    return table


def require_columns(table: pd.DataFrame, path: Path, fixes: Mapping[str, str]) -> None:
    """Each key of ``fixes`` must be a column of ``table``; the value says how to fix its absence."""
    for column, fix in fixes.items():
        if column not in table.columns:
            have = ", ".join(map(str, table.columns[:50]))
            raise UserError(f"{path} has no column {column!r} (it has: {have}); {fix}")


def table_columns(data: DataConfig, table: pd.DataFrame, path: Path,
                  defaults: Mapping[str, str | None]) -> dict[str, str | None]:
    """The column named by each ``--<key>`` flag (``--image_col`` ...) or else the data set's default,
    checked to exist; ``None`` where neither names one."""
    columns = {}
    for key, default in defaults.items():
        column = getattr(data, key) or default
        if column is not None:
            require_columns(table, path, {column: f"name the right column with --{key}"})
        columns[key] = column
    return columns


def _as_text(value: object) -> str:
    """A cell as lower-case text, with integral floats read as integers (pandas turns 1 into 1.0 next to NaN)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip().lower()


def parse_codes(values: pd.Series, codes: Mapping[str, int], path: Path, column: str,
                flag: str | None = None) -> np.ndarray:
    """Map every cell to its code (compared as lower-case text); unexpected values are named, and
    ``flag`` (the option naming the column) is suggested when the column was chosen by one."""
    text = values.map(_as_text)
    bad = values[~text.isin(list(codes))]
    if len(bad):
        shown = sorted({shown_cell(value) for value in bad})
        raise UserError(f"{path} column {column!r} holds unexpected value(s) {', '.join(shown[:5])} on "
                        f"{row_names(bad.index)}; expected {sorted(set(codes))}"
                        + (f" (or name another column with {flag})" if flag else ""))
    return text.map(codes).to_numpy(dtype=np.int64)


def row_names(index: pd.Index) -> str:
    """Where table rows are: their file lines when the table is numbered by row, else their first names
    (a CelebA table is indexed by image file)."""
    if pd.api.types.is_integer_dtype(index):
        return csv_lines(index)
    more = f" and {len(index) - 5} more" if len(index) > 5 else ""
    return f"row{'s' if len(index) > 1 else ''} {', '.join(repr(str(name)) for name in index[:5])}{more}"


def csv_lines(index: pd.Index) -> str:
    """The file lines of table rows (the header is line 1), at most five named."""
    lines = [str(int(i) + 2) for i in index[:5]]
    more = f" and {len(index) - 5} more" if len(index) > 5 else ""
    return f"line{'s' if len(index) > 1 else ''} {', '.join(lines)}{more}"


def shown_cell(value: object) -> str:
    """A cell as a user wrote it: ``an empty cell`` for NaN, else its text quoted."""
    return "an empty cell" if pd.isna(value) else repr(_as_text(value) if isinstance(value, float) else str(value))


def parse_class_ids(values: pd.Series, path: Path, column: str, flag: str) -> np.ndarray:
    """Cells that must be class ids 0, 1, 2, ... (integers, possibly written as 1.0), each id up to the
    largest present: a gap (labels 0, 1, 7) is a typo that would silently add empty classes."""
    numbers = pd.to_numeric(values, errors="coerce")
    bad = values[numbers.isna() | (numbers < 0) | (numbers % 1 != 0)]
    if len(bad):
        raise UserError(f"{path} column {column!r} holds {shown_cell(bad.iloc[0])} on {csv_lines(bad.index)}; "
                        f"expected class ids 0, 1, 2, ... (or name another column with {flag})")
    ids = numbers.to_numpy(dtype=np.int64)
    present = np.unique(ids)
    if len(present) and present[-1] != len(present) - 1:
        gap = next(i for i, value in enumerate(present) if value != i)  # the smallest id that never appears
        above = values.index[ids > gap]
        raise UserError(f"{path} column {column!r} holds ids {present.tolist()[:10]} but never {gap}, so the ids "
                        f"above it look like typos ({csv_lines(above)}); fix those rows or renumber the ids "
                        "0, 1, 2, ... without gaps")
    return ids


def split_codes(table: pd.DataFrame, path: Path, column: str | None, seed: int) -> np.ndarray:
    """0/1/2 (train/val/test) per row: from ``column`` (``--split_col``) when given, else from a
    ``split`` column when present, else a split of 80/10/10 seeded by ``--data_seed``."""
    if column is None:
        if DEFAULT_SPLIT_COLUMN not in table.columns:
            return seeded_split(len(table), seed)
        column = DEFAULT_SPLIT_COLUMN
    require_columns(table, path, {column: "name the split column with --split_col"})
    return parse_codes(table[column], SPLIT_CODES, path, column, "--split_col")


def seeded_split(n: int, seed: int) -> np.ndarray:
    """Split codes for ``n`` rows: a seeded permutation cut 80/10/10."""
    order = np.random.default_rng(seed).permutation(n)
    n_train, n_val = (round(n * f) for f in SEEDED_SPLIT_FRACTIONS)
    codes = np.full(n, 2, dtype=np.int64)
    codes[order[:n_train]] = 0
    codes[order[n_train:n_train + n_val]] = 1
    return codes


def check_images_exist(image_dir: Path, filenames: Sequence[str], metadata: Path,
                       flag: str = "--train_root_dir") -> None:
    """Every listed file must exist; each folder is listed once, so 200k files take about a second."""
    listings: dict[Path, set[str]] = {}
    missing = []
    for name in filenames:
        path = image_dir / name
        if path.parent not in listings:
            listings[path.parent] = set(os.listdir(path.parent)) if path.parent.is_dir() else set()
        if path.name not in listings[path.parent]:
            missing.append(name)
    if missing:
        raise UserError(f"image {missing[0]!r} listed in {metadata} is missing from {image_dir} "
                        f"({len(missing)} of {len(filenames)} missing); check {flag}")


def resolve_image_ids(image_dir: Path, ids: Sequence[str], metadata: Path, column: str,
                      flag: str = "--train_root_dir") -> list[str]:
    """The file of each id in ``image_dir``: the id itself or the id plus an image extension."""
    by_id: dict[str, str] = {}
    for name in sorted(os.listdir(image_dir)):
        stem, suffix = os.path.splitext(name)
        if suffix.lower() in IMAGE_SUFFIXES:
            by_id[name] = name
            by_id.setdefault(stem, name)
    found = [by_id.get(str(i)) for i in ids]
    missing = [str(i) for i, name in zip(ids, found) if name is None]
    if missing:
        raise UserError(f"no image for {column} {missing[0]!r} of {metadata} in {image_dir} (looked for the id "
                        f"with and without an image extension; {len(missing)} of {len(ids)} missing); "
                        f"check {flag}")
    return found


def image_splits(image_dir: Path, filenames: Sequence[str], y: np.ndarray, a: np.ndarray, codes: np.ndarray,
                 n_classes: int, n_attrs: int, data: DataConfig, metadata: Path,
                 id_column: str | None = None) -> dict[str, ImageFileDataset]:
    """Train/val/test datasets from per-row arrays and split codes, transformed per ``--image_size``/``--augment``.

    Every image must exist: ``filenames`` are paths relative to the image folder, or, with
    ``id_column``, ids found with or without an image extension; unless ``--skip_image_check``,
    every image must open too (:func:`check_images_open`). The validation images are read
    from ``--val_root_dir`` when it is given, the others from ``image_dir``.
    """
    transforms = split_pixels(data.image_size, data.augment)
    splits = {}
    for code, split in enumerate(SPLITS):
        keep = np.flatnonzero(codes == code)
        names = [filenames[i] for i in keep]
        folder, flag = image_dir, "--train_root_dir"
        if split == "val" and data.val_root_dir:
            folder, flag = Path(data.val_root_dir).expanduser(), "--val_root_dir"
            if not folder.is_dir():
                raise UserError(f"--val_root_dir {folder} does not exist or is not a folder")
        if id_column is not None:
            names = resolve_image_ids(folder, names, metadata, id_column, flag)
        else:
            check_images_exist(folder, names, metadata, flag)
        splits[split] = ImageFileDataset(folder, names, y[keep], a[keep], n_classes, n_attrs, split, transforms[split])
    if not data.skip_image_check:
        check_images_open(splits, metadata)
    return splits


def cache_splits(splits: dict[str, ImageFileDataset], data: DataConfig) -> None:
    """Read every split from its image cache in ``--cache_dir`` (built on first use), train first,
    within ``--cache_max_gb``."""
    cache_dir = Path(data.cache_dir).expanduser() if data.cache_dir else default_cache_dir()
    budget = Budget(data.cache_max_gb)
    threads = min(32, os.cpu_count() or 1)
    for split, dataset in splits.items():
        if not isinstance(dataset, ImageFileDataset):
            continue
        augment = split == "train" and data.augment
        dataset.use_cache(cache_dir, f"{canonical_name(data.data)}_{split}", data.image_size, augment, budget,
                          threads)
