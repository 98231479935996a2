"""The decode-once image cache: same numbers as decoding, rebuilt when its inputs change or it is damaged."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

import run
from conftest import read_results
from data import build_splits
from fixtures import write_waterbirds

TINY = ("--device", "cpu", "--arch", "cnn", "--cnn_width", "4", "--image_size", "16", "--batch_size", "8")


def splits(root, cache_dir, *argv):
    return build_splits(run.parse_args(["--data", "waterbirds", "--train_root_dir", str(root), "--image_size", "8",
                                        "--cache_dir", str(cache_dir), *map(str, argv)]))


def decoded(root, split="train", size="8"):
    """Every image of ``split`` decoded from its file (no cache), as one uint8 batch."""
    ds = build_splits(run.parse_args(["--data", "waterbirds", "--train_root_dir", str(root), "--image_size", size,
                                      "--no_cache"]))[split]
    return ds.load_images(torch.arange(len(ds)))


def all_images(ds):
    return ds.load_images(torch.arange(len(ds)))


def replace_image(path, seed):
    """New pixels in ``path``, with a later modification time (as an edit a moment later would have)."""
    before = os.stat(path).st_mtime_ns
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
    os.utime(path, ns=(before + 10**9, before + 10**9))


def without_paths(value):
    """``value`` without what names the run's folder (``checkpoint``) or its speed (``time_s``)."""
    if isinstance(value, dict):
        return {k: without_paths(v) for k, v in value.items() if k not in ("checkpoint", "time_s")}
    return value


@pytest.mark.slow
def test_cached_and_uncached_runs_give_the_same_metrics(run_cli, tmp_path):
    write_waterbirds(tmp_path / "wb")
    results = {}
    for name, flags in (("decoded", ("--no_cache",)), ("cached", ("--cache_dir", tmp_path / "cache"))):
        rc, _, err = run_cli("--mode", "all", "--methods", "erm,retrain_only,prusc", "--data", "waterbirds",
                             "--train_root_dir", tmp_path / "wb", *TINY,
                             "--epochs", "2", "--pruning_ep", "1", "--retrain_ep", "1", *flags,
                             "--out_dir", tmp_path / name)
        assert rc == 0, err
        results[name] = read_results(tmp_path / name)
    assert any((tmp_path / "cache").glob("waterbirds_train_crop16_*.npy"))
    assert without_paths(results["cached"]["methods"]) == without_paths(results["decoded"]["methods"])
    assert results["cached"]["splits"] == results["decoded"]["splits"]


def test_items_and_batches_are_the_decoded_pixels(tmp_path):
    write_waterbirds(tmp_path / "wb")
    for split in ("train", "val", "test"):
        ds = splits(tmp_path / "wb", tmp_path / "cache")[split]
        assert ds.cache is not None
        x, y, a, idx = ds.__getitems__([2, 0])
        assert x.dtype == torch.uint8 and x.shape == (2, 3, 8, 8)
        assert torch.equal(x, decoded(tmp_path / "wb", split)[[2, 0]])
        assert torch.equal(y, ds.y[[2, 0]]) and idx.tolist() == [2, 0]
        item = ds[1]
        assert torch.equal(item[0], decoded(tmp_path / "wb", split)[1]) and item[3] == 1


def test_changing_an_image_or_the_size_rebuilds_the_cache(tmp_path, capsys):
    samples = write_waterbirds(tmp_path / "wb")
    splits(tmp_path / "wb", tmp_path / "cache")
    capsys.readouterr()
    splits(tmp_path / "wb", tmp_path / "cache")
    assert "image cache" not in capsys.readouterr().err  # reused as it is
    replace_image(tmp_path / "wb" / samples[0].filename, seed=99)
    train = splits(tmp_path / "wb", tmp_path / "cache")["train"]
    err = capsys.readouterr().err
    assert "images changed" in err and "rebuilding" in err and "waterbirds_train" in err
    assert torch.equal(all_images(train), decoded(tmp_path / "wb"))
    bigger = splits(tmp_path / "wb", tmp_path / "cache", "--image_size", "12")["train"]
    assert "built" in capsys.readouterr().err
    assert all_images(bigger).shape == (len(bigger), 3, 12, 12)
    assert torch.equal(all_images(bigger), decoded(tmp_path / "wb", size="12"))


def test_a_corrupt_cache_file_is_rebuilt_with_a_message(tmp_path, capsys):
    write_waterbirds(tmp_path / "wb")
    splits(tmp_path / "wb", tmp_path / "cache")
    (path,) = (tmp_path / "cache").glob("waterbirds_train_*.npy")
    path.write_bytes(path.read_bytes()[:-10])  # truncated
    capsys.readouterr()
    train = splits(tmp_path / "wb", tmp_path / "cache")["train"]
    err = capsys.readouterr().err
    assert f"{path} is corrupt" in err and "rebuilding" in err
    assert torch.equal(all_images(train), decoded(tmp_path / "wb"))
    path.with_suffix(".json").write_text("{not json")
    splits(tmp_path / "wb", tmp_path / "cache")
    assert "is corrupt" in capsys.readouterr().err


def test_a_corrupt_row_is_never_read_but_decoded_again(tmp_path, capsys):
    write_waterbirds(tmp_path / "wb")
    splits(tmp_path / "wb", tmp_path / "cache")
    (path,) = (tmp_path / "cache").glob("waterbirds_train_*.npy")
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # one byte of the last row
    path.write_bytes(bytes(data))
    train = splits(tmp_path / "wb", tmp_path / "cache")["train"]
    capsys.readouterr()
    assert torch.equal(all_images(train), decoded(tmp_path / "wb"))
    assert f"row {len(train) - 1} of {path} is corrupt" in capsys.readouterr().err
    all_images(train)
    assert "corrupt" not in capsys.readouterr().err  # written back


def test_the_budget_leaves_splits_uncached_with_a_message(tmp_path, capsys):
    write_waterbirds(tmp_path / "wb")
    parts = splits(tmp_path / "wb", tmp_path / "cache", "--cache_max_gb", str(12 * 8 * 8 * 3 / 1e9))
    err = capsys.readouterr().err
    assert parts["train"].cache is not None and parts["val"].cache is None and parts["test"].cache is None
    assert "waterbirds_val" in err and "--cache_max_gb" in err
    assert torch.equal(all_images(parts["val"]), decoded(tmp_path / "wb", "val"))
    assert all(ds.cache is None for ds in splits(tmp_path / "wb", tmp_path / "c2", "--no_cache").values())
    assert not (tmp_path / "c2").exists()


@pytest.mark.parametrize("workers", ["0", "2"])
def test_augmented_training_reads_random_crops_from_the_cache(tmp_path, workers):
    write_waterbirds(tmp_path / "wb")
    train = splits(tmp_path / "wb", tmp_path / "cache", "--augment", "--num_workers", workers)["train"]
    assert train.cache is not None and train.cache.shape[1:] == (9, 9, 3)  # the whole image, squeezed
    torch.manual_seed(0)
    first = all_images(train)
    torch.manual_seed(0)
    again = all_images(train)
    assert first.shape == (len(train), 3, 8, 8) and first.dtype == torch.uint8
    assert torch.equal(first, again) and not torch.equal(first, all_images(train))
