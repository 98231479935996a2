"""``--data csv``: any metadata CSV plus an image folder.

``--metadata`` names the CSV; image paths (``--image_col``, default ``image``) are relative to
``--train_root_dir`` (default: the CSV's folder). ``--label_col`` (default ``label``) holds class
ids 0, 1, ...; ``--attr_col`` (optional) holds attribute ids 0, 1, ... (-1 for every sample
without it); ``--split_col`` (default ``split`` when present) holds train/val/test or 0/1/2,
else a split of 80/10/10 seeded by ``--data_seed``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from data.config import DataConfig
from data.images import (ImageFileDataset, csv_lines, image_splits, locate_metadata, parse_class_ids,
                         read_table, split_codes, table_columns)
from data.registry import SPLITS
from utils.errors import UserError

DEFAULT_COLUMNS = {"image_col": "image", "label_col": "label", "attr_col": None}


def build(data: DataConfig) -> dict[str, ImageFileDataset]:
    metadata, image_dir = locate_metadata(data, "csv")
    table = read_table(metadata, "--metadata")
    columns = table_columns(data, table, metadata, DEFAULT_COLUMNS)
    filenames = [str(name) for name in table[columns["image_col"]]]
    y = parse_class_ids(table[columns["label_col"]], metadata, columns["label_col"], "--label_col")
    if len(np.unique(y)) < 2:
        raise UserError(f"{metadata} column {columns['label_col']!r} holds a single class; a classifier needs two "
                        "or more (check --label_col)")
    if columns["attr_col"] is None:
        a, n_attrs = np.full(len(y), -1), 1
    else:
        a = parse_class_ids(table[columns["attr_col"]], metadata, columns["attr_col"], "--attr_col")
        n_attrs = int(a.max()) + 1
    codes = split_codes(table, metadata, data.split_col, data.data_seed)
    check_repeated_images(filenames, codes, metadata)
    return image_splits(image_dir, filenames, y, a, codes, n_classes=int(y.max()) + 1, n_attrs=n_attrs, data=data,
                        metadata=metadata)


def check_repeated_images(filenames: list[str], codes: np.ndarray, metadata: Path) -> None:
    """An image listed in two splits would be trained on and scored on: refused. One listed twice in a
    split counts twice, which may be meant (oversampling): said in a note."""
    table = pd.DataFrame({"image": filenames, "split": codes})
    repeated = table[table["image"].duplicated(keep=False)]
    if repeated.empty:
        return
    for image, rows in repeated.groupby("image", sort=False):
        if rows["split"].nunique() > 1:
            splits = " and ".join(f"{SPLITS[int(code)]} ({csv_lines(part.index)})"
                                  for code, part in rows.groupby("split"))
            raise UserError(f"{metadata}: image {image!r} is listed in {splits}; an image in two splits is "
                            "trained on and scored on, so keep one of its rows")
    first = repeated["image"].iloc[0]
    print(f"note: {metadata} lists {repeated['image'].nunique()} image(s) more than once within a split (first: "
          f"{first!r}, {csv_lines(repeated.index[repeated['image'] == first])}); each row counts as a sample",
          file=sys.stderr)
