"""Writers of tiny data sets in the exact public on-disk layouts, for the data tests."""
from __future__ import annotations

import gzip
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

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


CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()
SPLITS = ("train", "val", "test")


@dataclass
class Sample:
    """One written image: its file name (relative to the image folder), label, attribute and split."""
    filename: str
    y: int
    a: int
    split: str


def grid(per_group: dict[str, int] | None = None) -> list[tuple[int, int, str]]:
    """(y, a, split) for every sample: ``per_group[split]`` samples of each of the four groups."""
    per_group = per_group or {"train": 3, "val": 2, "test": 2}
    return [(y, a, split) for split in SPLITS for y in (0, 1) for a in (0, 1) for _ in range(per_group[split])]


def expected_groups(samples: list[Sample], split: str) -> dict[str, int]:
    """The per-group counts results.json should report for ``split``."""
    return dict(Counter(f"y={s.y},a={s.a}" for s in samples if s.split == split))


def write_image(path: Path, seed: int) -> None:
    """A random 8x8 RGB image; JPEG or PNG by the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_celeba(root: Path, layout: str) -> list[Sample]:
    """CelebA with ``y`` = Blond_Hair and ``a`` = Male; ``layout`` is ``kaggle`` or ``original``."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    samples, rows = [], []
    for i, (y, a, split) in enumerate(grid(), start=1):
        name = f"{i:06d}.jpg"
        values = rng.choice([-1, 1], size=len(CELEBA_ATTRIBUTES))
        values[CELEBA_ATTRIBUTES.index("Blond_Hair")] = 2 * y - 1
        values[CELEBA_ATTRIBUTES.index("Male")] = 2 * a - 1
        samples.append(Sample(name, y, a, split))
        rows.append((name, values, SPLITS.index(split)))
    if layout == "kaggle":
        image_dir = root / "img_align_celeba" / "img_align_celeba"
        attr = pd.DataFrame([[n, *v] for n, v, _ in rows], columns=["image_id", *CELEBA_ATTRIBUTES])
        attr.to_csv(root / "list_attr_celeba.csv", index=False)
        pd.DataFrame([(n, p) for n, _, p in rows], columns=["image_id", "partition"]).to_csv(
            root / "list_eval_partition.csv", index=False)
    else:
        image_dir = root / "img_align_celeba"
        lines = [str(len(rows)), " ".join(CELEBA_ATTRIBUTES) + " "]
        lines += [f"{n} " + " ".join(f"{v:2d}" for v in values) for n, values, _ in rows]
        (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
        (root / "list_eval_partition.txt").write_text("".join(f"{n} {p}\n" for n, _, p in rows))
    for i, sample in enumerate(samples):
        write_image(image_dir / sample.filename, i)
    return samples


def write_waterbirds(folder: Path) -> list[Sample]:
    """``metadata.csv`` and images in species sub-folders, as in ``waterbird_complete95_forest2water2``."""
    folder.mkdir(parents=True, exist_ok=True)
    samples, rows = [], []
    for i, (y, a, split) in enumerate(grid()):
        name = f"{1 + y:03d}.Species_{y}/bird_{i:04d}.jpg"
        samples.append(Sample(name, y, a, split))
        rows.append((i + 1, name, y, SPLITS.index(split), a, f"place/{a}/{i}.jpg"))
        write_image(folder / name, i)
    pd.DataFrame(rows, columns=["img_id", "img_filename", "y", "split", "place", "place_filename"]).to_csv(
        folder / "metadata.csv", index=False)
    return samples


def write_isic(folder: Path, with_split: bool, text_labels: bool) -> list[Sample]:
    """ISIC-style labels CSV (default columns) and PNG images named ``<isic_id>.png``."""
    folder.mkdir(parents=True, exist_ok=True)
    samples, rows = [], []
    for i, (y, a, split) in enumerate(grid()):
        isic_id = f"ISIC_{i:07d}"
        label = ("benign", "malignant")[y] if text_labels else y
        samples.append(Sample(f"{isic_id}.png", y, a, split))
        rows.append({"isic_id": isic_id, "benign_malignant": label, "patches": a, "split": split})
        write_image(folder / f"{isic_id}.png", i)
    table = pd.DataFrame(rows)
    (table if with_split else table.drop(columns="split")).to_csv(folder / "metadata.csv", index=False)
    return samples


def write_custom_csv(folder: Path, n_classes: int = 3) -> list[Sample]:
    """``labels.csv`` with columns path,target,bg,fold (fold 0/1/2) and images under ``images/``."""
    folder.mkdir(parents=True, exist_ok=True)
    samples, rows = [], []
    for i, (y, a, split) in enumerate(grid()):
        y = (y + i) % n_classes
        name = f"images/img{i}.jpg"
        samples.append(Sample(name, y, a, split))
        rows.append((name, y, a, SPLITS.index(split)))
        write_image(folder / name, i)
    pd.DataFrame(rows, columns=["path", "target", "bg", "fold"]).to_csv(folder / "labels.csv", index=False)
    return samples
