"""ColoredMNIST from IDX files: layouts, the IRM construction, ERM end to end, and bad input."""
from pathlib import Path

import numpy as np
import pytest
import torch

import run
from conftest import read_results
from data import build_splits
from data.cmnist import make_colored_mnist, read_idx
from fixtures import write_idx, write_mnist
from utils.metrics import group_counts

FASHION = Path("/usr/share/datasets/fashion-mnist")
ERM_ONE_EPOCH = ("--mode", "erm", "--data", "cmnist", "--epochs", "1", "--device", "cpu", "--hidden_dim", "8")


def synthetic(n_train: int, n_test: int, size: int = 4, seed: int = 0) -> tuple:
    """(images, classes) pairs for the train and test files, classes cycling 0..9."""
    rng = np.random.default_rng(seed)
    return tuple((rng.integers(0, 256, (n, size, size), dtype=np.uint8), np.arange(n) % 10) for n in (n_train, n_test))


def agreement(split, mask: torch.Tensor) -> float:
    """Fraction of the masked samples whose colour equals their label."""
    return float((split.y[mask] == split.a[mask]).float().mean())


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trip(tmp_path, gz):
    array = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    path = write_idx(tmp_path / ("x.idx3" + (".gz" if gz else "")), array)
    assert np.array_equal(read_idx(path), array)


@pytest.mark.parametrize("layout, source, gz", [
    ("MNIST/raw", "mnist", True),
    ("FashionMNIST/raw", "fashion", False),
    ("", "mnist", False),
    ("", "fashion", True),
])
def test_erm_runs_on_each_layout_with_the_right_group_counts(run_cli, tmp_path, layout, source, gz):
    root = tmp_path / "data"
    write_mnist(root / layout, n_train=60, n_test=20, gz=gz)
    argv = (*ERM_ONE_EPOCH, "--mnist_source", source, "--train_root_dir", root, "--out_dir", tmp_path / "out")
    rc, out, err = run_cli(*argv)
    assert rc == 0, err
    splits = build_splits(run.parse_args([str(a) for a in argv]))
    assert [len(splits[s]) for s in ("train", "val", "test")] == [50, 10, 20]
    results = read_results(tmp_path / "out")["splits"]
    for name in ("val", "test"):
        got = {group: stats["n"] for group, stats in results[name]["groups"].items()}
        assert got == group_counts(splits[name].y, splits[name].a)


def test_whole_pipeline_runs_on_cmnist(run_cli, tmp_path):
    write_mnist(tmp_path / "data", n_train=60, n_test=20)
    rc, _, err = run_cli(*ERM_ONE_EPOCH, "--mode", "all", "--train_root_dir", tmp_path / "data", "--irm_steps", "5",
                         "--penalty_anneal_iters", "2", "--jtt_lambda_up", "3", "--pruning_ep", "1",
                         "--retrain_ep", "1", "--out_dir", tmp_path / "out")
    assert rc == 0, err
    for method in read_results(tmp_path / "out")["methods"].values():
        assert sum(group["n"] for group in method["splits"]["test"]["groups"].values()) == 20


def test_irm_construction_rates_environments_and_shapes():
    train, test = synthetic(12_000, 6_000)
    splits = make_colored_mnist(train, test, data_seed=1)
    tr, te = splits["train"], splits["test"]
    assert len(splits["val"]) == 2_000 and len(tr) == 10_000
    assert torch.equal(torch.bincount(tr.env), torch.tensor([5_000, 5_000]))
    assert set(te.env.tolist()) == {2}
    assert abs(agreement(tr, tr.env == 0) - 0.9) < 0.02
    assert abs(agreement(tr, tr.env == 1) - 0.8) < 0.02
    assert abs(agreement(te, te.env == 2) - 0.1) < 0.02
    clean = torch.as_tensor(test[1] < 5).long()
    assert abs(float((te.y != clean).float().mean()) - 0.25) < 0.02
    x, y, a, idx = tr[7]
    assert x.shape == (2, 4, 4) and idx == 7 and a == int(tr.a[7])
    assert x[1 - a].abs().sum() == 0 and 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_spurious_ratio_and_label_noise_override():
    train, test = synthetic(6_000, 3_000)
    splits = make_colored_mnist(train, test, spurious_ratio=0.7, label_noise=0.0, data_seed=2)
    tr, te = splits["train"], splits["test"]
    assert abs(agreement(tr, tr.env == 0) - 0.7) < 0.03
    assert abs(agreement(tr, tr.env == 1) - 0.6) < 0.03
    assert abs(agreement(te, te.env == 2) - 0.3) < 0.03
    assert torch.equal(te.y, torch.as_tensor(test[1] < 5).long())


def test_downsample_keeps_every_second_pixel():
    train, test = synthetic(120, 20, size=28)
    full = make_colored_mnist(train, test, data_seed=3)
    small = make_colored_mnist(train, test, data_seed=3, downsample=True)
    assert small["train"].input_shape == (2, 14, 14)
    for split in ("train", "val", "test"):
        assert torch.equal(small[split].images, full[split].images[:, :, ::2, ::2])


def test_same_data_seed_same_data():
    train, test = synthetic(600, 100)
    first, second = (make_colored_mnist(train, test, data_seed=5) for _ in range(2))
    other = make_colored_mnist(train, test, data_seed=6)
    for split in ("train", "val", "test"):
        assert torch.equal(first[split].images, second[split].images) and torch.equal(first[split].y, second[split].y)
    assert not torch.equal(first["train"].y, other["train"].y)


@pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_loads_with_the_irm_construction():
    args = run.parse_args(["--data", "cmnist", "--mnist_source", "fashion", "--train_root_dir", str(FASHION),
                           "--downsample", "--out_dir", "unused"])
    splits = build_splits(args)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [50_000, 10_000, 10_000]
    assert splits["train"].input_shape == (2, 14, 14)
    tr = splits["train"]
    assert abs(agreement(tr, tr.env == 0) - 0.9) < 0.01


def test_download_offline_fails_clearly(run_cli, tmp_path, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://..., got: [Errno -3]")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    rc, _, err = run_cli(*ERM_ONE_EPOCH, "--download", "--train_root_dir", tmp_path / "mnist", "--out_dir",
                         tmp_path / "out")
    assert rc == 2 and "--download" in err and "offline" in err and "Error downloading" in err


def corrupt_magic(root: Path) -> str:
    (root / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x0d\x03" + bytes(12))
    return "train-images-idx3-ubyte is not an unsigned-byte IDX file"


def labels_out_of_range(root: Path) -> str:
    write_idx(root / "train-labels-idx1-ubyte", np.full(60, 12, dtype=np.uint8))
    return "label 12"


def fewer_labels(root: Path) -> str:
    write_idx(root / "train-labels-idx1-ubyte", np.zeros(59, dtype=np.uint8))
    return "60 images but"


def truncated(root: Path) -> str:
    path = root / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    return "t10k-images-idx3-ubyte is truncated"


def missing_file(root: Path) -> str:
    (root / "t10k-labels-idx1-ubyte").unlink()
    return "t10k-labels-idx1-ubyte[.gz] not found"


@pytest.mark.parametrize("damage", [corrupt_magic, labels_out_of_range, fewer_labels, truncated, missing_file])
def test_bad_idx_files_fail_with_exit_2_naming_the_file(run_cli, tmp_path, damage):
    root = tmp_path / "data"
    write_mnist(root, gz=False)
    needle = damage(root)
    rc, _, err = run_cli(*ERM_ONE_EPOCH, "--train_root_dir", root, "--out_dir", tmp_path / "out")
    assert rc == 2 and needle in err and "Traceback" not in err


def test_missing_root_names_the_flag(run_cli, tmp_path):
    rc, _, err = run_cli(*ERM_ONE_EPOCH, "--train_root_dir", tmp_path / "nowhere", "--out_dir", tmp_path / "out")
    assert rc == 2 and "--train_root_dir" in err and "nowhere" in err
    rc, _, err = run_cli(*ERM_ONE_EPOCH, "--out_dir", tmp_path / "out")
    assert rc == 2 and "--data cmnist needs --train_root_dir" in err
