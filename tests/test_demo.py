from pathlib import Path

from cluster.io import load_clusters
from data.digits import make_colored_digits

DEMO = Path(__file__).resolve().parents[1] / "demo" / "digits_clustering.csv"


def test_demo_clusters_match_the_default_digits_training_split():
    train = make_colored_digits()["train"]
    assign = load_clusters(DEMO, train)
    # two clusters inside each class, as PruSC's positives need
    for cls in (0, 1):
        assert len(assign[train.y == cls].unique()) == 2
