"""CelebA in its two public layouts; ``y`` = ``--target`` attribute, ``a`` = ``--confounder`` attribute.

``--train_root_dir`` holds either

- the Kaggle layout (also group_DRO's): ``list_attr_celeba.csv`` (``image_id`` then 40 attribute
  columns), ``list_eval_partition.csv`` (``image_id,partition``) and images in
  ``img_align_celeba/img_align_celeba/``; or
- the original release: ``list_attr_celeba.txt`` (a count line, a line of the 40 attribute names,
  then ``<file> <40 values>`` per image), ``list_eval_partition.txt`` (``<file> <0|1|2>``) and
  images in ``img_align_celeba/``. The release's ``Anno/``, ``Eval/`` and ``Img/`` folders are
  searched too.

Attributes are -1/1; 1 means present. Partitions 0/1/2 are train/val/test.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from data.config import DataConfig
from data.images import (ImageFileDataset, SPLIT_CODES, find_first, image_splits, parse_codes,
                         read_table, require_columns, require_root)
from utils.errors import UserError
from utils.options import option

ATTRIBUTE_VALUES = {"-1": 0, "1": 1}
FORMAT_FIX = "is this CelebA's file?"


@dataclass(frozen=True)
class CelebAConfig:
    """celebA's own flags (``DataConfig.own``)."""

    target: str = option("Blond_Hair", "celebA: attribute used as the label y")
    confounder: str = option("Male", "celebA: attribute used as the spurious attribute a")


def annotation_file(root: Path, stem: str, folder: str) -> Path:
    """``<stem>.csv`` or ``<stem>.txt`` in the root or in the original release's ``folder``."""
    candidates = [base / f"{stem}{ext}" for base in (root, root / folder) for ext in (".csv", ".txt")]
    return find_first(candidates, f"CelebA's {stem}", "point --train_root_dir at the CelebA folder")


def read_attributes(path: Path) -> pd.DataFrame:
    """The attribute table indexed by image file name, from the Kaggle CSV or the original text file."""
    if path.suffix == ".csv":
        table = read_table(path, "--train_root_dir")
        require_columns(table, path, {"image_id": FORMAT_FIX})
        return table.set_index("image_id")
    with open(path) as fh:
        count, names = fh.readline().strip(), fh.readline().split()
    if not count.isdigit() or not names:
        raise UserError(f"{path} does not start with a count line and a line of attribute names; {FORMAT_FIX}")
    table = read_table(path, "--train_root_dir", sep=r"\s+", skiprows=2, header=None, names=["image_id", *names])
    if len(table) != int(count):
        raise UserError(f"{path} announces {count} images on its first line but lists {len(table)}; "
                        "the file is truncated or edited")
    return table.set_index("image_id")


def read_partition(path: Path) -> pd.Series:
    """The partition (0/1/2) of each image file name."""
    if path.suffix == ".csv":
        table = read_table(path, "--train_root_dir")
        require_columns(table, path, {"image_id": FORMAT_FIX, "partition": FORMAT_FIX})
    else:
        table = read_table(path, "--train_root_dir", sep=r"\s+", header=None, names=["image_id", "partition"])
    return table.set_index("image_id")["partition"]


def attribute_column(table: pd.DataFrame, path: Path, name: str, flag: str) -> np.ndarray:
    """0/1 from the -1/1 column ``name``; an unknown name lists the valid ones."""
    if name not in table.columns:
        raise UserError(f"{flag} {name!r} is not a CelebA attribute of {path}; valid names: "
                        f"{', '.join(map(str, table.columns))}")
    return parse_codes(table[name], ATTRIBUTE_VALUES, path, name)


def build(data: DataConfig) -> dict[str, ImageFileDataset]:
    own: CelebAConfig = data.own
    root = require_root(data, "celebA", "list_attr_celeba.csv/.txt, list_eval_partition.csv/.txt, img_align_celeba/")
    attr_path = annotation_file(root, "list_attr_celeba", "Anno")
    part_path = annotation_file(root, "list_eval_partition", "Eval")
    attributes = read_attributes(attr_path)
    y = attribute_column(attributes, attr_path, own.target, "--target")
    a = attribute_column(attributes, attr_path, own.confounder, "--confounder")
    partition = read_partition(part_path).reindex(attributes.index)
    if partition.isna().any():
        raise UserError(f"image {partition.index[partition.isna()][0]!r} of {attr_path} has no row in {part_path}; "
                        "use the two files of the same CelebA release")
    codes = parse_codes(partition, SPLIT_CODES, part_path, "partition")
    image_dir = find_first([root / "img_align_celeba" / "img_align_celeba", root / "img_align_celeba",
                            root / "Img" / "img_align_celeba"], "CelebA's image folder img_align_celeba",
                           "point --train_root_dir at the CelebA folder")
    filenames = [str(name) for name in attributes.index]
    return image_splits(image_dir, filenames, y, a, codes, n_classes=2, n_attrs=2, data=data, metadata=attr_path)
