"""Clustering: the k-means API that PruSC and the IRM environments use, the quality report, and the
cluster CLI (run.py --mode cluster and cluster/clustering.py), bad input included."""
import json

import pandas as pd
import pytest
import torch

from cluster.io import load_clusters
from cluster.kmeans import assign_nearest, fit_kmeans, majority_label, select_k
from cluster.report import agreement, summarize
from data.digits import make_colored_digits
from utils.checkpoint import save_checkpoint
from utils.errors import UserError


def blobs(n_blobs: int, n_per: int, dim: int = 8, seed: int = 0):
    """Points around ``n_blobs`` orthogonal directions, each scaled by a random positive factor:
    separable by angle, not by Euclidean distance before normalisation. Returns (points, blob id)."""
    gen = torch.Generator().manual_seed(seed)
    directions = torch.eye(dim)[:n_blobs]
    points = directions.repeat_interleave(n_per, dim=0) + 0.05 * torch.randn(n_blobs * n_per, dim, generator=gen)
    scale = torch.empty(len(points), 1).uniform_(0.1, 10.0, generator=gen)
    return points * scale, torch.arange(n_blobs).repeat_interleave(n_per)


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to a renaming of the ids."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_global_fit_finds_directions_whatever_the_scale():
    points, truth = blobs(3, 40)
    fit = fit_kmeans(points, 3, seed=0)
    assert same_partition(fit.assign, truth)
    assert sorted(fit.assign.unique().tolist()) == [0, 1, 2] and fit.num_clusters == 3
    assert torch.allclose(fit.centroids.norm(dim=1), torch.ones(3))
    assert fit.cluster_label is None and not fit.per_class
    assert torch.equal(assign_nearest(points, fit.centroids), fit.assign)


def test_per_class_fit_gives_each_class_its_own_ids():
    points, blob = blobs(4, 30)
    labels = blob // 2  # class 0 = blobs 0 and 1, class 1 = blobs 2 and 3
    fit = fit_kmeans(points, 2, seed=0, labels=labels)
    assert set(fit.assign[labels == 0].tolist()) == {0, 1} and set(fit.assign[labels == 1].tolist()) == {2, 3}
    assert fit.cluster_label.tolist() == [0, 0, 1, 1] and fit.per_class
    assert same_partition(fit.assign, blob)
    # restricted to its own label, a sample never lands in another class's cluster
    wrong_label = 1 - labels
    restricted = assign_nearest(points, fit.centroids, wrong_label, fit.cluster_label)
    assert torch.equal(fit.cluster_label[restricted], wrong_label)
    assert torch.equal(fit.cluster_label[assign_nearest(points, fit.centroids)], labels)


@pytest.mark.parametrize("k, labels, message", [
    (1, None, "below 2"),
    (121, None, "exceeds the 120 samples"),
    (31, "classes", "exceeds the 30 samples of class 0"),
])
def test_impossible_k_is_a_clear_error(k, labels, message):
    points, blob = blobs(4, 30)
    with pytest.raises(UserError, match=message):
        fit_kmeans(points, k, seed=0, labels=blob if labels else None)


def test_collapsed_features_are_reported():
    with pytest.raises(UserError, match="only 1 distinct direction"):
        fit_kmeans(torch.ones(50, 4) * torch.arange(1, 51).unsqueeze(1), 2, seed=0)


def test_auto_k_picks_the_number_of_blobs():
    points, _ = blobs(4, 50)
    best, scores = select_k(points, range(2, 7), seed=0)
    assert best == 4 and sorted(scores) == [2, 3, 4, 5, 6]
    per_class_best, _ = select_k(points, range(2, 5), seed=0, labels=torch.arange(4).repeat_interleave(50) // 2)
    assert per_class_best == 2


def test_majority_label_and_agreement_by_hand():
    assign = torch.tensor([0, 0, 0, 1, 1, 1])
    target = torch.tensor([0, 0, 1, 1, 1, 1])
    assert majority_label(assign, target).tolist() == [0, 1]
    q = agreement(assign, target)
    assert q["purity"] == pytest.approx(5 / 6) and q["baseline"] == pytest.approx(4 / 6)
    assert agreement(target, target)["nmi"] == pytest.approx(1.0)
    independent = agreement(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1]))
    assert independent["nmi"] == pytest.approx(0.0) and independent["purity"] == pytest.approx(0.5)


def test_summary_separates_colour_clusters_from_label_clusters():
    train = make_colored_digits(0.95, 0.0, data_seed=0)["train"]
    by_colour = summarize(train.a, train.y, train.a, per_class=False)
    for q in by_colour["vs_attribute"]["within_class"].values():
        assert q["purity"] == pytest.approx(1.0) and q["nmi"] == pytest.approx(1.0)
    assert by_colour["conflicting_fraction"] == pytest.approx(float((train.a != train.y).double().mean()))
    by_label = summarize(train.y, train.y, train.a, per_class=False)
    for q in by_label["vs_attribute"]["within_class"].values():
        assert q["purity"] == pytest.approx(q["baseline"]) and q["nmi"] == pytest.approx(0.0)
    assert by_label["conflicting_fraction"] == 0.0
    assert sum(sum(cells.values()) for cells in by_label["counts"].values()) == len(train)


@pytest.fixture(scope="module")
def erm_checkpoint(digits_erm):
    """An MLP after one ERM epoch on Colored Digits: it has learnt the colour, not yet the digits."""
    return digits_erm / "erm_epoch1.pt"


@pytest.fixture(scope="module")
def train_set():
    return make_colored_digits(0.95, 0.0, data_seed=0)["train"]


def cluster_cli(run_cli, *argv):
    try:
        return run_cli("--mode", "cluster", "--data", "digits", "--device", "cpu", *argv)
    except SystemExit as exc:  # argparse errors exit by themselves
        return exc.code, "", ""


def test_cluster_mode_separates_colour_within_each_class(run_cli, erm_checkpoint, train_set, tmp_path):
    rc, out, _ = cluster_cli(run_cli, "--checkpoint", erm_checkpoint, "--out_dir", tmp_path)
    assert rc == 0 and "attribute | y=1" in out and "fitted over all samples" in out
    assign = load_clusters(tmp_path / "clusters.csv", train_set)
    assert sorted(assign.unique().tolist()) == [0, 1]
    summary = json.loads((tmp_path / "cluster_summary.json").read_text())
    for q in summary["vs_attribute"]["within_class"].values():
        assert q["nmi"] > 0.9 and q["purity"] > q["baseline"]
    assert (tmp_path / "cluster_summary.txt").read_text().strip() in out
    rc, _, err = cluster_cli(run_cli, "--checkpoint", erm_checkpoint, "--out_dir", tmp_path)
    assert rc == 2 and "already holds clusters.csv" in err and "--overwrite" in err


def test_script_main_is_run_py_mode_cluster_in_process(erm_checkpoint, tmp_path, capsys):
    from cluster import clustering

    argv = ["--data", "digits", "--checkpoint", str(erm_checkpoint), "--output_dir", str(tmp_path), "--device", "cpu"]
    assert clustering.main(argv) == 0
    assert "fitted over all samples" in capsys.readouterr().out
    assert json.loads((tmp_path / "cluster_summary.json").read_text())["num_clusters"] == 2


def test_script_per_class_with_plot(erm_checkpoint, train_set, tmp_path):
    from cluster import clustering

    assert clustering.main(["--data", "digits", "--checkpoint", str(erm_checkpoint), "--num_clusters", "2",
                            "--per_class", "--plot", "--output_dir", str(tmp_path), "--device", "cpu"]) == 0
    assert (tmp_path / "clusters.png").stat().st_size > 0
    frame = pd.read_csv(tmp_path / "clusters.csv")
    assert list(frame.columns) == ["index", "label", "cluster_assign", "attr"]
    assert frame.groupby("label")["cluster_assign"].unique().map(sorted).tolist() == [[0, 1], [2, 3]]


def test_auto_k_is_reported(run_cli, erm_checkpoint, tmp_path):
    rc, out, _ = cluster_cli(run_cli, "--checkpoint", erm_checkpoint, "--num_clusters", "auto", "--per_class",
                             "--max_clusters", "3", "--out_dir", tmp_path)
    summary = json.loads((tmp_path / "cluster_summary.json").read_text())
    assert rc == 0 and "silhouette" in out and sorted(summary["silhouette"]) == ["2", "3"]
    best = max(summary["silhouette"], key=summary["silhouette"].get)
    assert summary["num_clusters"] == 2 * int(best) and summary["per_class"] is True


@pytest.fixture
def checkpoints(erm_checkpoint, tmp_path):
    """The ERM checkpoint as it is, claiming another data set, and claiming other image sizes."""
    ckpt = torch.load(erm_checkpoint, weights_only=True)
    return {
        "erm": erm_checkpoint,
        "other_data": save_checkpoint(tmp_path / "cmnist.pt", {**ckpt, "data": "cmnist"}),
        "other_shape": save_checkpoint(tmp_path / "small.pt",
                                       {**ckpt, "arch_args": {**ckpt["arch_args"], "input_shape": [2, 4, 4]}}),
    }


@pytest.mark.parametrize("which, flags, needle", [
    ("erm", ("--arch", "cnn"), "holds architecture 'mlp', but --arch is 'cnn'"),
    ("other_data", (), "was trained on data 'cmnist', but --data is 'digits'"),
    ("other_shape", (), "expects inputs (2, 4, 4)"),
    ("erm", ("--num_clusters", "900"), "--num_clusters 900 exceeds the 898 samples"),
    ("erm", ("--num_clusters", "450", "--per_class"), "exceeds the"),
    (None, ("--plot", "--clusters", "some.csv"), "--plot needs --checkpoint"),
    (None, (), "needs --checkpoint"),
])
def test_bad_input_fails_with_a_message(run_cli, checkpoints, tmp_path, which, flags, needle):
    argv = [*flags, "--checkpoint", checkpoints[which]] if which else list(flags)
    rc, _, err = cluster_cli(run_cli, *argv, "--out_dir", tmp_path / "out")
    assert rc == 2 and needle in err and "Traceback" not in err
    assert not (tmp_path / "out" / "clusters.csv").exists()


@pytest.mark.parametrize("damage, needle", [
    (lambda f: f.iloc[:-1], "has 897 rows but the train split has 898 samples"),
    (lambda f: f.assign(label=f["label"].sample(frac=1.0, random_state=0).to_numpy()), "column 'label' disagrees"),
    (lambda f: f.drop(columns=["label"]), "lacks column(s) ['label']"),
])
def test_bad_clusters_file_is_named(run_cli, train_set, tmp_path, damage, needle):
    good = pd.DataFrame({"index": range(len(train_set)), "label": train_set.y.numpy(),
                         "cluster_assign": train_set.a.numpy()})
    damage(good).to_csv(tmp_path / "bad.csv", index=False)
    rc, _, err = cluster_cli(run_cli, "--clusters", tmp_path / "bad.csv", "--out_dir", tmp_path / "out")
    assert rc == 2 and needle in err and str(tmp_path / "bad.csv") in err


def test_existing_clusters_file_is_reported(run_cli, train_set, tmp_path):
    pd.DataFrame({"index": range(len(train_set)), "label": train_set.y.numpy(),
                  "cluster_assign": train_set.a.numpy()}).to_csv(tmp_path / "colour.csv", index=False)
    rc, out, _ = cluster_cli(run_cli, "--clusters", tmp_path / "colour.csv", "--out_dir", tmp_path / "out")
    assert rc == 0 and "read from a file" in out
    summary = json.loads((tmp_path / "out" / "cluster_summary.json").read_text())
    assert summary["vs_attribute"]["overall"]["nmi"] == pytest.approx(1.0)
    pd.read_csv(tmp_path / "colour.csv").assign(cluster_assign=0).to_csv(tmp_path / "one.csv", index=False)
    rc, _, err = cluster_cli(run_cli, "--clusters", tmp_path / "one.csv", "--out_dir", tmp_path / "out")
    assert rc == 2 and "already holds cluster_summary.json, a finished result" in err, err
    rc, _, _ = cluster_cli(run_cli, "--clusters", tmp_path / "one.csv", "--out_dir", tmp_path / "out", "--overwrite")
    summary = json.loads((tmp_path / "out" / "cluster_summary.json").read_text())
    assert rc == 0 and summary["clusters"].endswith("one.csv")


def test_num_clusters_below_two_is_refused_on_one_line(erm_checkpoint, tmp_path, capsys):
    from cluster import clustering

    with pytest.raises(SystemExit) as exited:  # argparse refuses it (through the one-line parser)
        clustering.main(["--checkpoint", str(erm_checkpoint), "--num_clusters", "1", "--output_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "--num_clusters" in err and err.strip().count("\n") == 0
    assert err.startswith("clustering.py: error: ")


def test_the_script_names_itself_in_errors_and_reads_its_own_record_back(erm_checkpoint, tmp_path, capsys):
    from cluster import clustering

    (tmp_path / "file.txt").write_text("mine")
    assert clustering.main(["--data", "digits", "--output_dir", str(tmp_path / "file.txt")]) == 2
    assert capsys.readouterr().err.startswith("clustering.py: error: --out_dir ")
    argv = ["--data", "digits", "--checkpoint", str(erm_checkpoint), "--device", "cpu"]
    assert clustering.main([*argv, "--output_dir", str(tmp_path / "a")]) == 0
    record = tmp_path / "a" / "cluster_args.json"
    assert clustering.main(["--config", str(record), "--output_dir", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "clusters.csv").read_text() == (tmp_path / "a" / "clusters.csv").read_text()
