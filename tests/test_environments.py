import json

import pandas as pd
import pytest
import torch
from sklearn.cluster import KMeans

from cluster.features import extract_features
from cluster.io import write_clusters
from data.digits import make_colored_digits
from invariant_learning import environments
from invariant_learning.construction import ROLES, build_environments, conflicting_mask, label_attr_agreement, split_environments
from models.factory import model_from_checkpoint
from utils.checkpoint import load_checkpoint
from utils.errors import UserError

DIGITS_FLAGS = ("--data", "digits", "--data_seed", "0")


@pytest.fixture(scope="module")
def train():
    return make_colored_digits(0.95, 0.0, data_seed=0)["train"]


@pytest.fixture(scope="module")
def erm_clusters(tmp_path_factory, train, digits_erm):
    """clusters.csv of the real chain: a short ERM run (3 epochs, data seed 0), its penultimate features,
    k-means with 4 clusters."""
    folder = tmp_path_factory.mktemp("chain")
    model = model_from_checkpoint(load_checkpoint(digits_erm / "erm.pt"))
    features = extract_features(model, train, torch.device("cpu"))
    assign = KMeans(4, n_init=3, random_state=0).fit_predict(features.numpy())
    return write_clusters(folder / "clusters.csv", train, torch.as_tensor(assign))


def test_conflicting_is_label_against_cluster_majority():
    labels = torch.tensor([0, 0, 1, 1, 1, 0, 2, 2])
    clusters = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    # cluster 0 votes 0, cluster 1 votes 1, cluster 2 votes 2
    assert conflicting_mask(labels, clusters).tolist() == [False, False, True, False, False, True, False, False]


def test_split_follows_the_documented_construction():
    gen = torch.Generator().manual_seed(1)
    conflicting = torch.rand(1000, generator=gen) < 0.1
    envs = split_environments(conflicting, balanced_fraction=0.5, minority_share=0.5, seed=3)
    minority, balanced = envs["minority"], envs["balanced"]
    assert len(balanced) == 500
    assert not set(minority.tolist()) & set(balanced.tolist())
    outside = torch.ones(1000, dtype=torch.bool)
    outside[balanced] = False
    # every conflicting sample outside the balanced environment is in the minority one, at half its size
    assert set(torch.nonzero(conflicting & outside).flatten().tolist()) <= set(minority.tolist())
    assert float(conflicting[minority].double().mean()) == pytest.approx(0.5, abs=0.01)
    again = split_environments(conflicting, 0.5, 0.5, seed=3)
    assert all(torch.equal(envs[k], again[k]) for k in envs)


@pytest.mark.parametrize("conflicting, fraction, message", [
    (torch.tensor([True] + [False] * 99), 0.001, "balanced environment empty"),
    (torch.tensor([True] + [False] * 9), 0.99, "no conflicting sample is left"),
])
def test_split_refuses_an_empty_environment(conflicting, fraction, message):
    with pytest.raises(UserError, match=message):
        split_environments(conflicting, fraction, 0.5, seed=0)


def test_label_attr_agreement():
    y = torch.tensor([0, 1, 1, 0])
    assert label_attr_agreement(y, torch.tensor([0, 1, 0, 1])) == 0.5
    assert label_attr_agreement(y, torch.tensor([-1, -1, -1, -1])) is None


def test_environments_from_erm_clusters_differ_in_label_colour_agreement(erm_clusters, train, tmp_path, capsys):
    rc = environments.main([*DIGITS_FLAGS, "--clusters", str(erm_clusters), "--output_dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    summaries = {role: json.loads((tmp_path / role / "environment.json").read_text()) for role in ROLES}
    tables = {role: pd.read_csv(tmp_path / role / "indices.csv") for role in ROLES}
    for role in ROLES:
        idx = torch.tensor(tables[role]["index"].to_numpy())
        assert summaries[role]["size"] == len(idx) > 0
        assert summaries[role]["label_attr_agreement"] == pytest.approx(float((train.y[idx] == train.a[idx]).double().mean()))
        assert f"{summaries[role]['size']} samples" in out
    minority, balanced = summaries["minority"], summaries["balanced"]
    assert minority["conflicting_share"] > balanced["conflicting_share"]
    # the quantity IRM needs to differ: the colour predicts the label far less well in the minority environment
    assert balanced["label_attr_agreement"] - minority["label_attr_agreement"] > 0.3
    assert minority["data_flags"]["data"] == "digits" and minority["n_train"] == len(train)


def test_no_conflicting_sample_is_explained(train, tmp_path, capsys):
    path = write_clusters(tmp_path / "clusters.csv", train, train.y.clone())  # clusters = labels: nothing conflicts
    with pytest.raises(UserError, match="no conflicting samples.*more clusters.*earlier reference checkpoint"):
        build_environments(train, path, 0.5, 0.5, 0)
    assert environments.main([*DIGITS_FLAGS, "--clusters", str(path), "--output_dir", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no conflicting samples" in err
    assert not (tmp_path / "e").exists()


def test_existing_environments_are_not_replaced(train, tmp_path, capsys):
    path = write_clusters(tmp_path / "clusters.csv", train, train.a.clone())
    argv = [*DIGITS_FLAGS, "--clusters", str(path), "--output_dir", str(tmp_path / "e")]
    assert environments.main(argv) == 0
    assert environments.main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert environments.main([*argv, "--overwrite"]) == 0


@pytest.mark.parametrize("place", ["notes.txt", "minority/mydata.txt", "results.json"])
def test_a_folder_holding_anything_else_gets_no_environments(train, tmp_path, capsys, place):
    path = write_clusters(tmp_path / "clusters.csv", train, train.a.clone())
    (tmp_path / "e" / place).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "e" / place).write_text("a user's file")
    for extra in ([], ["--overwrite"]):
        assert environments.main([*DIGITS_FLAGS, "--clusters", str(path), "--output_dir", str(tmp_path / "e"),
                                  *extra]) == 2
        assert "which environments.py did not write; nothing was changed" in capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path / "e").as_posix() for p in (tmp_path / "e").rglob("*") if p.is_file()) \
        == [place]


def test_clusters_of_other_data_are_refused(tmp_path, capsys):
    other = make_colored_digits(0.95, 0.0, data_seed=5)["train"]
    path = write_clusters(tmp_path / "clusters.csv", other, other.a.clone())
    assert environments.main([*DIGITS_FLAGS, "--clusters", str(path), "--output_dir", str(tmp_path / "e")]) == 2
    assert "disagrees with the data set" in capsys.readouterr().err
