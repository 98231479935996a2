"""Fashion scenes generator: Waterbirds layout read unchanged, requested group counts, determinism."""
from pathlib import Path

import pandas as pd
import pytest

from conftest import read_results
from data.cmnist import find_idx
from data.fashion_scenes import CROP_MARGIN, LABEL_OF, SceneStyle, make_scenes, split_groups
from utils.errors import UserError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
SIZES = {"train": 40, "val": 12, "test": 12}


def _fashion_present() -> bool:
    try:
        find_idx(FASHION_DIR, "fashion", "t10k-images-idx3-ubyte")
    except UserError:
        return False
    return True


needs_fashion = pytest.mark.skipif(not _fashion_present(), reason=f"Fashion-MNIST IDX files absent from {FASHION_DIR}")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scenes")
    make_scenes(out, FASHION_DIR, SIZES, ratio=0.9, seed=3, size=16)
    return out


def test_split_groups_follow_ratio():
    assert split_groups(100, 0.9) == {(0, 0): 45, (0, 1): 5, (1, 1): 45, (1, 0): 5}
    assert split_groups(21, None) == {(0, 0): 6, (0, 1): 5, (1, 1): 5, (1, 0): 5}


def test_default_style_is_the_calibrated_one_and_fits_the_crop():
    style = SceneStyle()
    assert style.item_scale == (0.55, 0.8) and style.item_opacity == (0.8, 1.0)  # docs/results/scenes.md, "Calibration"
    # the largest item still fits inside the evaluation centre crop
    assert style.item_scale[1] <= 1 - 2 * CROP_MARGIN


def test_script_defaults_follow_the_style():
    from scripts.make_fashion_scenes import build_parser

    args = build_parser().parse_args(["out"])
    assert tuple(args.item_scale) == SceneStyle().item_scale
    assert tuple(args.item_opacity) == SceneStyle().item_opacity


def test_label_grouping_is_five_against_five():
    assert sorted(LABEL_OF.tolist()) == [0] * 5 + [1] * 5


@needs_fashion
def test_group_counts_match_request(scenes):
    table = pd.read_csv(scenes / "metadata.csv")
    counts = table.groupby(["split", "y", "place"]).size().to_dict()
    assert {(y, p): counts[(0, y, p)] for y in (0, 1) for p in (0, 1)} == {(0, 0): 18, (0, 1): 2, (1, 1): 18,
                                                                           (1, 0): 2}
    for split in (1, 2):
        assert {counts[(split, y, p)] for y in (0, 1) for p in (0, 1)} == {3}
    assert list(table.columns) == ["img_id", "img_filename", "y", "split", "place", "place_filename"]


@pytest.mark.slow
@needs_fashion
def test_same_seed_same_bytes(scenes, tmp_path):
    again = tmp_path / "again"
    make_scenes(again, FASHION_DIR, SIZES, ratio=0.9, seed=3, size=16, workers=2)
    assert (again / "metadata.csv").read_bytes() == (scenes / "metadata.csv").read_bytes()
    name = pd.read_csv(again / "metadata.csv").img_filename[0]
    assert (again / name).read_bytes() == (scenes / name).read_bytes()
    other = tmp_path / "other"
    make_scenes(other, FASHION_DIR, SIZES, ratio=0.9, seed=4, size=16)
    assert (other / "metadata.csv").read_bytes() != (scenes / "metadata.csv").read_bytes()


@needs_fashion
def test_waterbirds_loader_reads_layout(run_cli, scenes, tmp_path):
    rc, _, err = run_cli("--mode", "erm", "--data", "waterbirds", "--train_root_dir", scenes, "--epochs", "1",
                         "--device", "cpu", "--arch", "cnn", "--cnn_width", "4", "--image_size", "16",
                         "--batch_size", "8", "--out_dir", tmp_path / "out")
    assert rc == 0, err
    groups = read_results(tmp_path / "out")["splits"]["test"]["groups"]
    assert {name: g["n"] for name, g in groups.items()} == {f"y={y},a={a}": 3 for y in (0, 1) for a in (0, 1)}


def test_missing_fashion_files_name_the_generators_own_flag(tmp_path):
    with pytest.raises(UserError, match="point --fashion_dir at the folder holding the fashion IDX files") as caught:
        make_scenes(tmp_path / "out", tmp_path, SIZES, ratio=0.9, seed=3, size=16)
    assert "--train_root_dir" not in str(caught.value) and "--download" not in str(caught.value)
