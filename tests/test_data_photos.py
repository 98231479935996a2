"""Photo data sets in their exact public layouts: ERM end to end, per-group counts, file names, transforms."""
import numpy as np
import pandas as pd
import pytest
import torch

import run
from conftest import read_results
from data import build_splits
from data.transforms import IMAGENET_MEAN, split_pixels
from utils.runtime import to_device
from fixtures import (CELEBA_ATTRIBUTES, expected_groups, write_celeba, write_custom_csv, write_isic,
                      write_waterbirds)

CHEAP_METHODS = ("--irm_steps", "5", "--penalty_anneal_iters", "2", "--jtt_lambda_up", "3", "--dfr_num_retrains", "2")
TINY_ERM = ("--mode", "erm", "--epochs", "1", "--device", "cpu", "--arch", "cnn", "--cnn_width", "4",
            "--image_size", "16", "--batch_size", "8")


def run_erm(run_cli, out_dir, *argv) -> dict:
    """One tiny ERM epoch; return the splits of results.json."""
    rc, _, err = run_cli(*TINY_ERM, *argv, "--out_dir", out_dir)
    assert rc == 0, err
    return read_results(out_dir)["splits"]


def splits_of(*argv) -> dict:
    return build_splits(run.parse_args([str(a) for a in (*argv, "--out_dir", "unused")]))


def assert_groups(results: dict, samples: list) -> None:
    for split in ("val", "test"):
        got = {group: stats["n"] for group, stats in results[split]["groups"].items()}
        assert got == expected_groups(samples, split), split


@pytest.mark.parametrize("layout", ["kaggle", "original"])
def test_celeba_layouts(run_cli, tmp_path, layout):
    samples = write_celeba(tmp_path / "celeba", layout)
    argv = ("--data", "celebA", "--train_root_dir", tmp_path / "celeba")
    assert_groups(run_erm(run_cli, tmp_path / "out", *argv), samples)
    train = splits_of(*argv)["train"]
    assert train.filenames == [s.filename for s in samples if s.split == "train"]
    assert train.y.tolist() == [s.y for s in samples if s.split == "train"]
    assert train.a.tolist() == [s.a for s in samples if s.split == "train"]


def test_celeba_release_folders_anno_eval_img(tmp_path):
    samples = write_celeba(tmp_path, "original")
    for name, folder in (("list_attr_celeba.txt", "Anno"), ("list_eval_partition.txt", "Eval"),
                         ("img_align_celeba", "Img")):
        (tmp_path / folder).mkdir()
        (tmp_path / name).rename(tmp_path / folder / name)
    splits = splits_of("--data", "celebA", "--train_root_dir", tmp_path)
    assert splits["test"].filenames == [s.filename for s in samples if s.split == "test"]
    assert splits["test"][0][0].shape == (3, 224, 224)


def test_celeba_target_and_confounder_take_any_attribute(tmp_path):
    write_celeba(tmp_path, "original")
    swapped = splits_of("--data", "celeba", "--train_root_dir", tmp_path, "--target", "Male", "--confounder",
                        "Blond_Hair")
    default = splits_of("--data", "celebA", "--train_root_dir", tmp_path)
    for split in ("train", "val", "test"):
        assert torch.equal(swapped[split].y, default[split].a) and torch.equal(swapped[split].a, default[split].y)
    smiling = splits_of("--data", "celebA", "--train_root_dir", tmp_path, "--target", "Smiling")["train"]
    attrs = (tmp_path / "list_attr_celeba.txt").read_text().splitlines()[2:]
    column = 1 + CELEBA_ATTRIBUTES.index("Smiling")
    expected = {line.split()[0]: int(line.split()[column] == "1") for line in attrs}
    assert smiling.y.tolist() == [expected[name] for name in smiling.filenames]


@pytest.mark.parametrize("point_at_parent", [False, True])
def test_waterbirds_folder_or_parent(run_cli, tmp_path, point_at_parent):
    folder = tmp_path / "waterbird_complete95_forest2water2"
    samples = write_waterbirds(folder)
    root = tmp_path if point_at_parent else folder
    assert_groups(run_erm(run_cli, tmp_path / "out", "--data", "waterbirds", "--train_root_dir", root), samples)
    test = splits_of("--data", "cub", "--train_root_dir", root)["test"]
    expected = [s for s in samples if s.split == "test"]
    assert test.filenames == [s.filename for s in expected]
    x, y, a, idx = test[1]
    assert x.shape == (3, 224, 224) and (y, a, idx) == (expected[1].y, expected[1].a, 1)


def test_isic_with_split_column_and_text_labels(run_cli, tmp_path):
    samples = write_isic(tmp_path, with_split=True, text_labels=True)
    assert_groups(run_erm(run_cli, tmp_path / "out", "--data", "isic", "--train_root_dir", tmp_path), samples)


def test_isic_without_split_column_uses_a_seeded_80_10_10_split(run_cli, tmp_path):
    samples = write_isic(tmp_path, with_split=False, text_labels=False)
    results = run_erm(run_cli, tmp_path / "out", "--data", "isic", "--metadata", tmp_path / "metadata.csv")
    splits = splits_of("--data", "isic", "--metadata", tmp_path / "metadata.csv")
    assert [len(splits[s]) for s in ("train", "val", "test")] == [round(0.8 * 28), round(0.1 * 28), 28 - 22 - 3]
    for split in ("val", "test"):
        assert sum(g["n"] for g in results[split]["groups"].values()) == len(splits[split])
    by_name = {s.filename: s for s in samples}
    for ds in splits.values():
        assert ds.y.tolist() == [by_name[name].y for name in ds.filenames]
    again = splits_of("--data", "isic", "--metadata", tmp_path / "metadata.csv")
    other = splits_of("--data", "isic", "--metadata", tmp_path / "metadata.csv", "--data_seed", "1")
    assert again["test"].filenames == splits["test"].filenames != other["test"].filenames


def test_isic_columns_are_overridable(tmp_path):
    write_isic(tmp_path, with_split=True, text_labels=True)
    metadata = tmp_path / "metadata.csv"
    text = metadata.read_text().replace("isic_id,benign_malignant,patches,split", "id,diagnosis,patch,fold", 1)
    metadata.write_text(text)
    splits = splits_of("--data", "isic", "--train_root_dir", tmp_path, "--image_col", "id", "--label_col",
                       "diagnosis", "--attr_col", "patch", "--split_col", "fold")
    assert [len(splits[s]) for s in ("train", "val", "test")] == [12, 8, 8]


def test_custom_csv_with_attribute_and_numeric_splits(run_cli, tmp_path):
    samples = write_custom_csv(tmp_path)
    argv = ("--data", "csv", "--metadata", tmp_path / "labels.csv", "--image_col", "path", "--label_col", "target",
            "--attr_col", "bg", "--split_col", "fold")
    assert_groups(run_erm(run_cli, tmp_path / "out", *argv), samples)
    train = splits_of(*argv)["train"]
    assert train.n_classes == 3 and train.n_attrs == 2
    assert train.filenames == [s.filename for s in samples if s.split == "train"]


def test_an_image_listed_twice_in_one_split_counts_twice_with_a_note(tmp_path, capsys):
    samples = write_custom_csv(tmp_path)
    table = pd.read_csv(tmp_path / "labels.csv")
    pd.concat([table, table.iloc[[0]]]).to_csv(tmp_path / "labels.csv", index=False)
    split = splits_of("--data", "csv", "--metadata", tmp_path / "labels.csv", "--image_col", "path",
                      "--label_col", "target", "--split_col", "fold")[samples[0].split]
    assert split.filenames.count(samples[0].filename) == 2
    assert f"lists 1 image(s) more than once within a split (first: '{samples[0].filename}', lines 2, " \
           f"{len(table) + 2}); each row counts as a sample" in capsys.readouterr().err


def test_custom_csv_without_attribute_groups_by_class(run_cli, tmp_path):
    samples = write_custom_csv(tmp_path / "meta", n_classes=2)
    images = tmp_path / "meta"
    results = run_erm(run_cli, tmp_path / "out", "--data", "csv", "--metadata", images / "labels.csv",
                      "--train_root_dir", images, "--image_col", "path", "--label_col", "target",
                      "--split_col", "fold", "--num_workers", "2", "--augment")
    for split in ("val", "test"):
        expected = {f"y={y},a=-1": sum(s.y == y and s.split == split for s in samples) for y in (0, 1)}
        got = {group: stats["n"] for group, stats in results[split]["groups"].items()}
        assert got == {k: v for k, v in expected.items() if v}


def test_transforms_size_normalisation_and_augmentation():
    from PIL import Image

    image = Image.new("RGB", (40, 30), color=(255, 0, 0))
    plain = split_pixels(24, augment=False)
    augmented = split_pixels(24, augment=True)
    pixels = plain["train"](image)
    assert pixels.shape == (24, 24, 3) and pixels.dtype == np.uint8
    x = to_device(torch.from_numpy(pixels).permute(2, 0, 1)[None], torch.device("cpu"))
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([(1 - IMAGENET_MEAN[0]) / 0.229, -IMAGENET_MEAN[1] / 0.224,
                                                       -IMAGENET_MEAN[2] / 0.225]), atol=1e-4)
    assert plain["train"] is plain["val"] is plain["test"]
    assert augmented["train"](image).shape == (24, 24, 3) and augmented["val"] is not augmented["train"]
    torch.manual_seed(0)
    striped = Image.fromarray(torch.arange(40 * 30 * 3, dtype=torch.uint8).reshape(30, 40, 3).numpy())
    crops = {tuple(augmented["train"](striped).flatten()[:20].tolist()) for _ in range(5)}
    assert len(crops) > 1
    assert np.array_equal(augmented["val"](striped), augmented["val"](striped))


def photo_layout(data: str, root) -> tuple[list, tuple]:
    """Write ``data`` under ``root``; return its samples and the flags that point run.py at it."""
    if data == "celebA":
        return write_celeba(root, "kaggle"), ("--train_root_dir", root)
    if data == "waterbirds":
        return write_waterbirds(root), ("--train_root_dir", root)
    if data == "isic":
        return write_isic(root, with_split=True, text_labels=True), ("--train_root_dir", root)
    return write_custom_csv(root), ("--metadata", root / "labels.csv", "--image_col", "path", "--label_col", "target",
                                    "--attr_col", "bg", "--split_col", "fold")


@pytest.mark.parametrize("data", [pytest.param("celebA", marks=pytest.mark.slow), "waterbirds",
                                  pytest.param("isic", marks=pytest.mark.slow),
                                  pytest.param("csv", marks=pytest.mark.slow)])
def test_whole_pipeline_runs_on_each_photo_data_set(run_cli, tmp_path, data):
    samples, argv = photo_layout(data, tmp_path / "data")
    rc, _, err = run_cli(*TINY_ERM, "--mode", "all", "--data", data, *argv, *CHEAP_METHODS, "--pruning_ep", "1",
                         "--retrain_ep", "1", "--out_dir", tmp_path / "out")
    assert rc == 0, err
    ran = set(read_results(tmp_path / "out")["methods"])
    assert {"erm", "retrain_only", "prusc_no_con", "prusc", "jtt"} <= ran
    assert {"groupdro", "dfr"} <= ran  # every layout here has an attribute column
    image_ids = pd.read_csv(tmp_path / "out" / "clusters.csv")["image_id"].tolist()
    assert image_ids == [s.filename for s in samples if s.split == "train"]


def test_val_root_dir_reads_validation_images_elsewhere(run_cli, tmp_path):
    import shutil

    root = tmp_path / "celeba"
    samples = write_celeba(root, "kaggle")
    images = root / "img_align_celeba" / "img_align_celeba"
    val_dir = tmp_path / "val_images"
    val_dir.mkdir()
    for sample in samples:
        if sample.split == "val":
            shutil.move(images / sample.filename, val_dir / sample.filename)
    splits = build_splits(run.parse_args(["--data", "celebA", "--train_root_dir", str(root),
                                          "--val_root_dir", str(val_dir), "--image_size", "8"]))
    assert splits["val"][0][0].shape == (3, 8, 8)
    (val_dir / next(s.filename for s in samples if s.split == "val")).unlink()
    rc, _, err = run_cli(*TINY_ERM, "--data", "celebA", "--train_root_dir", root, "--val_root_dir", val_dir,
                         "--out_dir", tmp_path / "out")
    assert rc == 2 and "--val_root_dir" in err and "missing" in err
    rc, _, err = run_cli(*TINY_ERM, "--data", "digits", "--val_root_dir", val_dir, "--out_dir", tmp_path / "d")
    assert rc == 2 and "--val_root_dir applies to data sets read from image files" in err
