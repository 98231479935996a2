"""ISIC skin lesions with colour patches: ``y`` = malignant, ``a`` = a colour patch is present.

A labels CSV (``--metadata``, default ``<--train_root_dir>/metadata.csv``) with, by default, the
reference code's columns:

- ``isic_id`` (``--image_col``): image id; the file is ``<id>`` or ``<id>.<jpg|png|...>`` under
  ``--train_root_dir`` (default: the CSV's folder);
- ``benign_malignant`` (``--label_col``): ``benign``/``malignant`` or 0/1;
- ``patches`` (``--attr_col``): 0/1 (or false/true);
- ``split`` (``--split_col``, optional): train/val/test or 0/1/2; without it a split of
  80/10/10 seeded by ``--data_seed``.
"""
from __future__ import annotations

from data.config import DataConfig
from data.images import (BINARY_CODES, ImageFileDataset, image_splits, locate_metadata, parse_codes, read_table,
                         split_codes, table_columns)

DEFAULT_COLUMNS = {"image_col": "isic_id", "label_col": "benign_malignant", "attr_col": "patches"}
LABEL_CODES = {"benign": 0, "malignant": 1, "0": 0, "1": 1}


def build(data: DataConfig) -> dict[str, ImageFileDataset]:
    metadata, image_dir = locate_metadata(data, "isic", "metadata.csv")
    table = read_table(metadata, "--metadata")
    columns = table_columns(data, table, metadata, DEFAULT_COLUMNS)
    ids = [str(i) for i in table[columns["image_col"]]]
    y = parse_codes(table[columns["label_col"]], LABEL_CODES, metadata, columns["label_col"], "--label_col")
    a = parse_codes(table[columns["attr_col"]], BINARY_CODES, metadata, columns["attr_col"], "--attr_col")
    codes = split_codes(table, metadata, data.split_col, data.data_seed)
    return image_splits(image_dir, ids, y, a, codes, n_classes=2, n_attrs=2, data=data, metadata=metadata,
                        id_column=columns["image_col"])
