import pandas as pd
import pytest
import torch

from cluster.io import load_clusters, write_clusters
from data.digits import make_colored_digits
from utils.errors import UserError


@pytest.fixture(scope="module")
def train():
    return make_colored_digits(0.95, 0.0, data_seed=0)["train"]


def test_round_trip(train, tmp_path):
    assign = train.a.clone()
    path = write_clusters(tmp_path / "clusters.csv", train, assign)
    frame = pd.read_csv(path)
    assert list(frame.columns) == ["index", "label", "cluster_assign", "attr"]
    assert torch.equal(load_clusters(path, train), assign)
    # row order does not matter, the index column does
    frame.sample(frac=1.0, random_state=0).to_csv(tmp_path / "shuffled.csv", index=False)
    assert torch.equal(load_clusters(tmp_path / "shuffled.csv", train), assign)


@pytest.mark.parametrize("damage, message", [
    (lambda f: f.drop(columns=["cluster_assign"]), "lacks column"),
    (lambda f: f.iloc[:-3], "rows but the train split has"),
    (lambda f: f.assign(label=f["label"].sample(frac=1.0, random_state=1).to_numpy()), "disagrees with the data set"),
    (lambda f: f.assign(index=f["index"].clip(upper=10)), "column 'index'"),
    (lambda f: f.assign(cluster_assign=-1), "negative"),
    (lambda f: f.iloc[:0], "has a header but no rows"),
    (lambda f: f.assign(cluster_assign=f["cluster_assign"].where(f.index != 4)), "an empty cell on line 6"),
])
def test_bad_files_are_named(train, tmp_path, damage, message):
    path = write_clusters(tmp_path / "clusters.csv", train, train.a)
    damage(pd.read_csv(path)).to_csv(path, index=False)
    with pytest.raises(UserError, match=message):
        load_clusters(path, train)


def test_missing_file(train, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_clusters(tmp_path / "nope.csv", train)
