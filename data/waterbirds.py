"""Waterbirds (alias ``cub``): ``y`` = waterbird, ``a`` = water background (``place``).

``metadata.csv`` has the columns ``img_id,img_filename,y,split,place,place_filename``; image
paths are relative to the folder holding it. ``--train_root_dir`` may be that folder or a parent
holding ``waterbird_complete95_forest2water2/``. ``split`` is 0/1/2 for train/val/test.
"""
from __future__ import annotations

from data.config import DataConfig
from data.images import (BINARY_CODES, SPLIT_CODES, ImageFileDataset, find_first, image_splits,
                         parse_codes, read_table, require_columns, require_root)

DATASET_FOLDER = "waterbird_complete95_forest2water2"
FORMAT_FIX = "Waterbirds' metadata.csv has img_filename,y,split,place"


def build(data: DataConfig) -> dict[str, ImageFileDataset]:
    root = require_root(data, "waterbirds", f"metadata.csv (or {DATASET_FOLDER}/)")
    metadata = find_first([root / "metadata.csv", root / DATASET_FOLDER / "metadata.csv"], "Waterbirds' metadata.csv",
                          f"point --train_root_dir at the folder holding it or at the parent of {DATASET_FOLDER}/")
    table = read_table(metadata, "--train_root_dir")
    require_columns(table, metadata, {column: FORMAT_FIX for column in ("img_filename", "y", "split", "place")})
    filenames = [str(name) for name in table["img_filename"]]
    return image_splits(metadata.parent, filenames, parse_codes(table["y"], BINARY_CODES, metadata, "y"),
                        parse_codes(table["place"], BINARY_CODES, metadata, "place"),
                        parse_codes(table["split"], SPLIT_CODES, metadata, "split"), n_classes=2, n_attrs=2, data=data,
                        metadata=metadata)
