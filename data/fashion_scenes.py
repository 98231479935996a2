"""Fashion scenes: real Fashion-MNIST items pasted on procedural "water" or "land" backgrounds.

A Waterbirds-like benchmark that can be made offline. The label is a binary grouping of the ten
Fashion-MNIST classes (:data:`LABEL_OF`); the background family is the spurious attribute
(``place``: 1 = water, 0 = land). In train the background agrees with the label (water with
``y = 1``, like waterbirds on water) with probability ``spurious_ratio``; in val and test each
class is split evenly over the two backgrounds. The output is the Waterbirds on-disk layout
(``metadata.csv`` + JPEG files), read by ``--data waterbirds``.

Every image is drawn from its own random stream ``(seed, split, index)``, so the result does not
depend on the number of worker processes.
"""
from __future__ import annotations

import colorsys
import multiprocessing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from data.cmnist import load_idx_pair
from utils.errors import UserError

FASHION_CLASSES = ("T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle_boot")
# y = 1: worn below the waist or carried (trouser, footwear, bag); y = 0: tops, dresses and coats.
LABEL_OF = np.array([0, 1, 0, 0, 0, 1, 0, 1, 1, 1])
FAMILIES = ("land", "water")  # index = place code
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
# Eval transforms resize to size * 256 / 224 and centre-crop ``size``: keep items inside that crop.
CROP_MARGIN = (1 - 224 / 256) / 2


@dataclass(frozen=True)
class SceneStyle:
    """How strongly the item stands out from its background (the calibration knobs)."""

    # Calibrated at 64x64 (docs/results/scenes.md, "Calibration"): the fainter first style (scale 0.45-0.7, opacity
    # 0.55-0.9) left the items almost unlearnt in a few epochs, so ERM was a pure background classifier.
    item_scale: tuple[float, float] = (0.55, 0.8)  # item side as a share of the image side
    item_opacity: tuple[float, float] = (0.8, 1.0)  # alpha of the item's brightest pixels
    jpeg_quality: int = 90


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a ``cells`` x ``cells`` random grid upsampled bicubically to ``size``."""
    grid = Image.fromarray(rng.random((cells, cells), dtype=np.float32), mode="F")
    return np.clip(np.asarray(grid.resize((size, size), Image.BICUBIC)), 0.0, 1.0)


def _octaves(rng: np.random.Generator, size: int, base: int, n: int = 3) -> np.ndarray:
    """Sum of ``n`` value-noise octaves (grid ``base``, ``2 base``, ...), rescaled to [0, 1]."""
    total = sum(0.5 ** k * _smooth_noise(rng, size, base * 2 ** k) for k in range(n))
    return (total - total.min()) / max(float(total.max() - total.min()), 1e-6)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


def _blend(t: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    return low + t[..., None] * (high - low)


def water(rng: np.random.Generator, size: int) -> np.ndarray:
    """Wavy blue-grey water: two wave trains bent by smooth noise, random hue, scale and glints."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    warp = _octaves(rng, size, int(rng.integers(2, 5)), 2) - 0.5
    waves = 0.0
    for weight in (1.0, 0.5):
        angle = rng.normal(0.0, 0.25)
        freq = rng.uniform(4.0, 14.0)
        phase = xs * np.sin(angle) + ys * np.cos(angle) + rng.uniform(0.6, 1.6) * warp / freq * 4
        waves = waves + weight * np.sin(2 * np.pi * freq * phase + rng.uniform(0, 2 * np.pi))
    t = (waves / 1.5 + 1) / 2
    hue = rng.uniform(0.5, 0.64)
    deep = _hsv(hue, rng.uniform(0.3, 0.65), rng.uniform(0.22, 0.42))
    light = _hsv(hue + rng.uniform(-0.03, 0.03), rng.uniform(0.1, 0.35), rng.uniform(0.55, 0.8))
    image = _blend(t ** rng.uniform(0.8, 1.6), deep, light)
    glint = np.clip((t - 0.93) / 0.07, 0, 1) * rng.uniform(0.0, 0.6)
    return image + glint[..., None] * (1 - image)


def land(rng: np.random.Generator, size: int) -> np.ndarray:
    """Blotchy green-brown land: thresholded multi-octave noise between two earthy colours, plus grain."""
    blotch = _octaves(rng, size, int(rng.integers(3, 7)))
    t = 1 / (1 + np.exp(-(blotch - rng.uniform(0.35, 0.65)) * rng.uniform(8, 20)))
    green = _hsv(rng.uniform(0.18, 0.36), rng.uniform(0.35, 0.7), rng.uniform(0.22, 0.5))
    brown = _hsv(rng.uniform(0.05, 0.12), rng.uniform(0.35, 0.7), rng.uniform(0.28, 0.55))
    grain = 1 + rng.uniform(0.1, 0.3) * (_smooth_noise(rng, size, max(size // 2, 2)) - 0.5)
    return _blend(t, brown, green) * grain[..., None]


BACKGROUNDS = (land, water)  # index = place code


def render_scene(item: np.ndarray, place: int, rng: np.random.Generator, size: int, style: SceneStyle) -> np.ndarray:
    """A ``size`` x ``size`` RGB uint8 scene: background of family ``place`` with ``item`` (28x28) pasted on."""
    return paste_item(BACKGROUNDS[place](rng, size), item, rng, size, style)


def paste_item(image: np.ndarray, item: np.ndarray, rng: np.random.Generator, size: int,
               style: SceneStyle) -> np.ndarray:
    """``item`` (28x28) pasted on the float RGB ``image`` (tinted, scaled, placed at random); as uint8."""
    side = max(int(round(rng.uniform(*style.item_scale) * size)), 2)
    glyph = Image.fromarray(item[:, ::-1] if rng.random() < 0.5 else item).resize((side, side), Image.BILINEAR)
    alpha = np.asarray(glyph, dtype=np.float32) / 255.0
    tone = _hsv(rng.random(), rng.uniform(0.0, 0.35), rng.uniform(0.6, 1.0))
    shading = 0.6 + 0.4 * alpha  # the item's own texture, kept as light and shade
    margin = int(CROP_MARGIN * size)
    top, left = (int(rng.integers(margin, max(size - margin - side, margin) + 1)) for _ in range(2))
    top, left = min(top, size - side), min(left, size - side)
    patch = image[top:top + side, left:left + side]
    a = (alpha * rng.uniform(*style.item_opacity))[..., None]
    image[top:top + side, left:left + side] = patch * (1 - a) + (tone * shading[..., None]) * a
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def split_groups(n: int, ratio: float | None) -> dict[tuple[int, int], int]:
    """Sample counts per (y, place): classes halved; place agrees with y at ``ratio`` (None: balanced)."""
    counts = {}
    for y, n_y in ((0, n - n // 2), (1, n // 2)):
        agree = n_y - n_y // 2 if ratio is None else int(round(ratio * n_y))
        counts[(y, y)] = agree
        counts[(y, 1 - y)] = n_y - agree
    return counts


def plan(labels: dict[str, np.ndarray], sizes: dict[str, int], ratio: float, seed: int) -> pd.DataFrame:
    """One row per scene: split, source part/index of the item, Fashion class, y and place.

    Train and val draw disjoint items from the Fashion-MNIST training file, test from its test file.
    """
    rng = np.random.default_rng([seed, 7])
    pools = {part: {y: list(rng.permutation(np.flatnonzero(LABEL_OF[labels[part]] == y))) for y in (0, 1)}
             for part in labels}
    rows = []
    for split, n in sizes.items():
        part = "test" if split == "test" else "train"
        cells = [(y, place) for (y, place), k in split_groups(n, ratio if split == "train" else None).items()
                 for _ in range(k)]
        for y, place in (cells[i] for i in rng.permutation(len(cells))):
            if not pools[part][y]:
                raise UserError(f"Fashion-MNIST {part} file has too few class-{y} items for the requested "
                                f"sizes; lower --n_{split}")
            source = int(pools[part][y].pop())
            rows.append((split, part, source, int(labels[part][source]), y, place))
    table = pd.DataFrame(rows, columns=["split_name", "part", "source", "fashion_class", "y", "place"])
    table["index_in_split"] = table.groupby("split_name").cumcount()
    return table


def _file_name(row: pd.Series) -> str:
    k = int(row.fashion_class)
    return f"{k:03d}.{FASHION_CLASSES[k]}/{row.split_name}_{int(row.index_in_split):05d}.jpg"


def _render_job(job: tuple) -> None:
    path, item, place, stream, size, style = job
    scene = render_scene(item, place, np.random.default_rng(stream), size, style)
    Image.fromarray(scene).save(path, format="JPEG", quality=style.jpeg_quality)


def make_scenes(out: Path, fashion_dir: Path, sizes: dict[str, int], ratio: float, seed: int, size: int,
                style: SceneStyle = SceneStyle(), workers: int = 1) -> pd.DataFrame:
    """Write the scenes and ``metadata.csv`` under ``out``; return the metadata table."""
    data = {part: load_idx_pair(fashion_dir, "fashion", part, "--fashion_dir") for part in ("train", "test")}
    table = plan({part: d[1] for part, d in data.items()}, sizes, ratio, seed)
    table["img_filename"] = [_file_name(row) for row in table.itertuples()]
    for k in table.fashion_class.unique():
        (out / f"{k:03d}.{FASHION_CLASSES[k]}").mkdir(parents=True, exist_ok=True)
    jobs = [(str(out / row.img_filename), data[row.part][0][row.source], int(row.place),
             [seed, SPLIT_CODES[row.split_name], int(row.index_in_split)], size, style)
            for row in table.itertuples()]
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for _ in pool.imap_unordered(_render_job, jobs, chunksize=64):
                pass
    else:
        for job in jobs:
            _render_job(job)
    metadata = pd.DataFrame({
        "img_id": np.arange(1, len(table) + 1),
        "img_filename": table.img_filename,
        "y": table.y,
        "split": table.split_name.map(SPLIT_CODES),
        "place": table.place,
        "place_filename": [f"/procedural/{FAMILIES[p]}/{s}_{i:05d}" for p, s, i in
                           zip(table.place, table.split_name, table.index_in_split)],
    })
    metadata.to_csv(out / "metadata.csv", index=False)
    return metadata
