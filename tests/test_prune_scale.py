"""Default pruning must not collapse a network: the seed's command shape on a few hundred scenes.

The scenes are made by the Fashion-scenes generator from synthetic 28x28 items (a filled block
for y = 1, a thin ring for y = 0), so the test needs no data files.
"""
import numpy as np
import pytest

import run
from conftest import read_results
from data.cmnist import IDX_FILES
from data.fashion_scenes import LABEL_OF, make_scenes
from fixtures import write_idx

pytestmark = pytest.mark.slow  # an ERM, two prunings and retrainings of a CNN on 720 generated photos


def synthetic_items(folder, n_train: int = 800, n_test: int = 200) -> None:
    """IDX files whose items show their binary label as a shape, classes cycling 0..9."""
    ys, xs = np.mgrid[0:28, 0:28]
    radius = np.hypot(ys - 13.5, xs - 13.5)
    shapes = {1: ((abs(ys - 13.5) < 9) & (abs(xs - 13.5) < 6)) * 255,
              0: ((radius > 8) & (radius < 11)) * 255}
    for part, n in (("train", n_train), ("test", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = np.stack([shapes[int(LABEL_OF[k])] for k in labels]).astype(np.uint8)
        write_idx(folder / f"{IDX_FILES[part][0]}.gz", images)
        write_idx(folder / f"{IDX_FILES[part][1]}.gz", labels)


@pytest.fixture(scope="module")
def erm(tmp_path_factory):
    """A few hundred 32x32 scenes (no spurious correlation, so ERM learns the items) and a tiny CNN on them."""
    items = tmp_path_factory.mktemp("items")
    synthetic_items(items)
    scenes = tmp_path_factory.mktemp("scenes")
    make_scenes(scenes, items, {"train": 400, "val": 160, "test": 160}, ratio=0.5, seed=0, size=32)
    out = tmp_path_factory.mktemp("erm")
    common = ("--data", "waterbirds", "--train_root_dir", str(scenes), "--image_size", "32", "--device", "cpu",
              "--batch_size", "16")
    assert run.main(["--mode", "erm", *common, "--arch", "cnn", "--cnn_width", "8", "--epochs", "4",
                     "--out_dir", str(out)]) == 0
    return common, out


@pytest.mark.parametrize("lambda_sparse", ["5e-8", "1e-5"])
def test_default_pruning_keeps_a_working_network(run_cli, erm, tmp_path, lambda_sparse):
    """The seed's shape (--lambda_sparse 5e-8 --pruning_ep=2 --retrain_ep=2), and a 200x stronger penalty,
    which without the layer floor and the scored checks cuts this network to under 1% of its weights."""
    common, erm_dir = erm
    rc, _, err = run_cli("--mode", "prune", *common, "--checkpoint", erm_dir / "erm.pt", "--lambda_sparse",
                         lambda_sparse, "--pruning_ep=2", "--retrain_ep=2", "--out_dir", tmp_path)
    assert rc == 0, err
    res = read_results(tmp_path)
    dense = read_results(erm_dir)["splits"]["test"]
    assert min(res["density"]["per_layer"].values()) > 0.0, res["density"]
    assert res["density"]["overall"] >= 0.2, res["density"]
    assert res["splits"]["test"]["avg_acc"] >= dense["avg_acc"] - 0.1
    assert res["splits"]["test"]["worst_group_acc"] >= dense["worst_group_acc"] - 0.15
