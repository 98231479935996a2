"""Bad input to the photo loaders: exit code 2 and one line naming the file, the column or the flag."""
from pathlib import Path

import pandas as pd
import pytest

from fixtures import CELEBA_ATTRIBUTES, write_celeba, write_custom_csv, write_isic, write_waterbirds

ERM = ("--mode", "erm", "--epochs", "1", "--device", "cpu", "--arch", "cnn", "--cnn_width", "4", "--image_size", "8")


def set_cell(path: Path, row: int, column: str, value: object) -> None:
    table = pd.read_csv(path)
    table[column] = table[column].astype(object)
    table.loc[row, column] = value
    table.to_csv(path, index=False)


def drop_column(path: Path, column: str) -> None:
    pd.read_csv(path).drop(columns=column).to_csv(path, index=False)


def missing_root(tmp: Path) -> tuple[list, list]:
    return ["--data", "waterbirds", "--train_root_dir", tmp / "nowhere"], ["--train_root_dir", "nowhere"]


def no_root_flag(tmp: Path) -> tuple[list, list]:
    return ["--data", "celebA"], ["--data celebA needs --train_root_dir"]


def missing_isic_metadata(tmp: Path) -> tuple[list, list]:
    write_isic(tmp, with_split=True, text_labels=True)
    (tmp / "metadata.csv").unlink()
    return ["--data", "isic", "--train_root_dir", tmp], [str(tmp / "metadata.csv"), "--metadata"]


def missing_csv_metadata(tmp: Path) -> tuple[list, list]:
    return ["--data", "csv", "--metadata", tmp / "labels.csv"], [str(tmp / "labels.csv"), "does not exist"]


def folder_as_csv_metadata(tmp: Path) -> tuple[list, list]:
    return ["--data", "csv", "--metadata", tmp], [str(tmp), "is a folder, not a file", "check --metadata"]


def csv_without_metadata_flag(tmp: Path) -> tuple[list, list]:
    return ["--data", "csv", "--train_root_dir", tmp], ["--data csv needs --metadata"]


def missing_waterbirds_metadata(tmp: Path) -> tuple[list, list]:
    return ["--data", "waterbirds", "--train_root_dir", tmp], ["metadata.csv", "waterbird_complete95_forest2water2"]


def missing_celeba_partition(tmp: Path) -> tuple[list, list]:
    write_celeba(tmp, "kaggle")
    (tmp / "list_eval_partition.csv").unlink()
    return ["--data", "celebA", "--train_root_dir", tmp], ["list_eval_partition", "--train_root_dir"]


def missing_label_column(tmp: Path) -> tuple[list, list]:
    write_custom_csv(tmp)
    return (["--data", "csv", "--metadata", tmp / "labels.csv", "--image_col", "path", "--label_col", "diagnosis"],
            ["labels.csv", "'diagnosis'", "--label_col"])


def missing_default_isic_column(tmp: Path) -> tuple[list, list]:
    write_isic(tmp, with_split=True, text_labels=True)
    drop_column(tmp / "metadata.csv", "patches")
    return ["--data", "isic", "--train_root_dir", tmp], ["metadata.csv", "'patches'", "--attr_col"]


def missing_split_column(tmp: Path) -> tuple[list, list]:
    write_isic(tmp, with_split=True, text_labels=True)
    return ["--data", "isic", "--train_root_dir", tmp, "--split_col", "fold"], ["'fold'", "--split_col"]


def missing_waterbirds_column(tmp: Path) -> tuple[list, list]:
    write_waterbirds(tmp)
    drop_column(tmp / "metadata.csv", "place")
    return ["--data", "waterbirds", "--train_root_dir", tmp], ["metadata.csv", "'place'"]


def unknown_target(tmp: Path) -> tuple[list, list]:
    write_celeba(tmp, "original")
    return (["--data", "celebA", "--train_root_dir", tmp, "--target", "Blonde_Hair"],
            ["--target 'Blonde_Hair'", "list_attr_celeba.txt", ", ".join(CELEBA_ATTRIBUTES)])


def unknown_confounder(tmp: Path) -> tuple[list, list]:
    write_celeba(tmp, "kaggle")
    return (["--data", "celebA", "--train_root_dir", tmp, "--confounder", "male"],
            ["--confounder 'male'", "valid names", "Male"])


def absent_image(tmp: Path) -> tuple[list, list]:
    samples = write_waterbirds(tmp)
    (tmp / samples[5].filename).unlink()
    return ["--data", "waterbirds", "--train_root_dir", tmp], [samples[5].filename, "is missing", "metadata.csv"]


def absent_celeba_image(tmp: Path) -> tuple[list, list]:
    samples = write_celeba(tmp, "kaggle")
    (tmp / "img_align_celeba" / "img_align_celeba" / samples[0].filename).unlink()
    return ["--data", "celebA", "--train_root_dir", tmp], [samples[0].filename, "list_attr_celeba.csv"]


def absent_isic_image(tmp: Path) -> tuple[list, list]:
    write_isic(tmp, with_split=True, text_labels=True)
    (tmp / "ISIC_0000003.png").unlink()
    return ["--data", "isic", "--train_root_dir", tmp], ["isic_id 'ISIC_0000003'", "metadata.csv"]


def unexpected_isic_label(tmp: Path) -> tuple[list, list]:
    write_isic(tmp, with_split=True, text_labels=True)
    set_cell(tmp / "metadata.csv", 2, "benign_malignant", "indeterminate")
    return ["--data", "isic", "--train_root_dir", tmp], ["'benign_malignant'", "'indeterminate'", "metadata.csv", "--label_col"]


def unexpected_waterbirds_label(tmp: Path) -> tuple[list, list]:
    write_waterbirds(tmp)
    set_cell(tmp / "metadata.csv", 0, "y", 2)
    return ["--data", "waterbirds", "--train_root_dir", tmp], ["column 'y'", "'2' on line 2"]


def empty_waterbirds_place(tmp: Path) -> tuple[list, list]:
    write_waterbirds(tmp)
    set_cell(tmp / "metadata.csv", 3, "place", None)
    return ["--data", "waterbirds", "--train_root_dir", tmp], ["column 'place'", "an empty cell on line 5"]


def unexpected_celeba_value(tmp: Path) -> tuple[list, list]:
    write_celeba(tmp, "kaggle")
    set_cell(tmp / "list_attr_celeba.csv", 1, "Blond_Hair", 0)
    return (["--data", "celebA", "--train_root_dir", tmp],
            ["column 'Blond_Hair'", "'0' on row '", ".jpg'", "['-1', '1']"])


def non_integer_csv_label(tmp: Path) -> tuple[list, list]:
    write_custom_csv(tmp)
    set_cell(tmp / "labels.csv", 3, "target", "cat")
    return (["--data", "csv", "--metadata", tmp / "labels.csv", "--image_col", "path", "--label_col", "target"],
            ["column 'target'", "'cat'", "class ids", "--label_col"])


def image_in_two_splits(tmp: Path) -> tuple[list, list]:
    write_custom_csv(tmp)
    table = pd.read_csv(tmp / "labels.csv")
    other = int((table["fold"] != table.loc[0, "fold"]).idxmax())
    set_cell(tmp / "labels.csv", other, "path", table.loc[0, "path"])
    return (["--data", "csv", "--metadata", tmp / "labels.csv", "--image_col", "path", "--label_col", "target",
             "--split_col", "fold"], [f"image {table.loc[0, 'path']!r} is listed in", "line 2", f"line {other + 2}",
                                      "keep one of its rows"])


def unexpected_split_value(tmp: Path) -> tuple[list, list]:
    write_custom_csv(tmp)
    set_cell(tmp / "labels.csv", 4, "fold", 7)
    return (["--data", "csv", "--metadata", tmp / "labels.csv", "--image_col", "path", "--label_col", "target",
             "--split_col", "fold"], ["column 'fold'", "'7'", "--split_col"])


def truncated_celeba_txt(tmp: Path) -> tuple[list, list]:
    write_celeba(tmp, "original")
    path = tmp / "list_attr_celeba.txt"
    path.write_text("\n".join(path.read_text().splitlines()[:-3]) + "\n")
    return ["--data", "celebA", "--train_root_dir", tmp], ["list_attr_celeba.txt", "announces 28 images"]


def empty_split(tmp: Path) -> tuple[list, list]:
    write_waterbirds(tmp)
    table = pd.read_csv(tmp / "metadata.csv")
    table.loc[table["split"] == 1, "split"] = 0
    table.to_csv(tmp / "metadata.csv", index=False)
    return ["--data", "waterbirds", "--train_root_dir", tmp], ["no samples in split 'val'"]


def corrupt_image(tmp: Path) -> tuple[list, list]:
    samples = write_isic(tmp, with_split=True, text_labels=True)
    (tmp / samples[0].filename).write_bytes(b"not a png")
    return ["--data", "isic", "--train_root_dir", tmp], ["cannot be opened", samples[0].filename, f"{samples[0].split} split"]


CASES = [missing_root, no_root_flag, missing_isic_metadata, missing_csv_metadata, folder_as_csv_metadata,
         csv_without_metadata_flag,
         missing_waterbirds_metadata, missing_celeba_partition, missing_label_column, missing_default_isic_column,
         missing_split_column, missing_waterbirds_column, unknown_target, unknown_confounder, absent_image,
         absent_celeba_image, absent_isic_image, unexpected_isic_label, unexpected_waterbirds_label,
         empty_waterbirds_place, unexpected_celeba_value, non_integer_csv_label, image_in_two_splits,
         unexpected_split_value, truncated_celeba_txt, empty_split,
         corrupt_image]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.__name__)
def test_bad_input_exits_2_with_a_message_that_names_it(run_cli, tmp_path, case):
    (tmp_path / "data").mkdir()
    argv, needles = case(tmp_path / "data")
    rc, _, err = run_cli(*ERM, *argv, "--out_dir", tmp_path / "out")
    assert rc == 2
    assert err.startswith("run.py: error: ") and err.count("\n") == 1
    for needle in needles:
        assert needle in err, (needle, err)
    assert not (tmp_path / "out" / "results.json").exists()



def test_error_inside_a_dataloader_worker_is_still_one_line(run_cli, tmp_path):
    (tmp_path / "data").mkdir()
    argv, _ = corrupt_image(tmp_path / "data")
    rc, _, err = run_cli(*ERM, *argv, "--num_workers", "1", "--skip_image_check", "--out_dir", tmp_path / "out")
    assert rc == 2 and err.count("\n") == 1
    assert "cannot decode image" in err, err
