"""--clusters_auto: the label-free choice of snapshot, scope and k (cluster/choose.py) finds the attribute
where the ERM model's errors point to it, declines where they do not, and reaches the methods."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import adjusted_mutual_info_score

from cluster.choose import ClassAmi, choose_clustering, format_choice
from cluster.report import agreement


def scene(n: int, seed: int, shortcut: bool, errors_follow_minority: bool = True, distractor: float = 0.5):
    """Features of a two-class set with a 10% minority (attribute != label) and a distractor.

    Each class is two blobs along the attribute direction (visible only in a ``shortcut`` snapshot)
    and two equal halves along a distractor direction unrelated to anything (a third as far apart as the
    attribute blobs by default). The simulated ERM model errs on 50% of the minority and 5% of the
    majority (or on 10% of everyone).
    """
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    a = torch.where(torch.rand(n, generator=gen) < 0.1, 1 - y, y)
    x = 0.3 * torch.randn(n, 12, generator=gen) + 1.0
    x[:, 0] += 3.0 * (2 * y - 1)
    x[:, 1] += (1.5 if shortcut else 0.0) * (2 * a - 1)
    x[:, 2] += distractor * (2 * (torch.rand(n, generator=gen) < 0.5).float() - 1)
    p_err = torch.where(a != y, 0.5, 0.05) if errors_follow_minority else torch.full((n,), 0.1)
    return x, y, a, (torch.rand(n, generator=gen) < p_err).long()


def two_snapshots(errors_follow_minority: bool = True, seed: int = 0, distractor: float = 0.5):
    """An early snapshot that sees the attribute and a late one that does not (same samples)."""
    train, val = {}, {}
    for name, shortcut in (("early", True), ("late", False)):
        train[name], y, a, _ = scene(1200, 0, shortcut, distractor=distractor)
        val[name], val_y, _, errors = scene(500, 1, shortcut, errors_follow_minority, distractor)
    return dict(train_feats=train, val_feats=val, train_y=y, val_y=val_y, val_errors=errors, seed=seed, train_a=a)


def mean_attribute_nmi(scored) -> float:
    return float(np.mean([q["nmi"] for q in scored.attribute.values()]))


def test_ami_matches_scikit_learn():
    rng = np.random.default_rng(0)
    for n, k in ((40, 2), (300, 5), (600, 16)):
        cells = rng.integers(0, k, n)
        errors = (rng.random(n) < 0.2 + 0.2 * (cells == 0)).astype(int)
        assert ClassAmi.of(cells, errors)(errors) == pytest.approx(adjusted_mutual_info_score(errors, cells), abs=1e-9)


def test_picks_the_attribute_clustering_when_the_errors_point_to_it():
    choice = choose_clustering(**two_snapshots(), permutations=50)
    assert choice.chosen is not None and choice.p_value <= 0.05
    assert choice.chosen.candidate.snapshot == "early"
    hindsight = max(mean_attribute_nmi(s) for s in choice.scored)
    assert mean_attribute_nmi(choice.chosen) >= 0.8 * hindsight > 0.3
    a = two_snapshots()["train_a"]
    y = two_snapshots()["train_y"]
    for cls in (0, 1):  # the chosen clusters separate the minority inside each class
        assert agreement(choice.chosen.fit.assign[y == cls], a[y == cls])["purity"] > 0.98


def test_a_wider_choice_set_finds_the_attribute_behind_a_stronger_distractor():
    """With the distractor wider than the attribute, 2 clusters per class split the distractor; allowing
    k = 4 per class lets the choice take the clusters that cut both."""
    choice = choose_clustering(**two_snapshots(distractor=2.5), choose_ks=(2, 3, 4), permutations=50)
    assert choice.chosen is not None and choice.chosen.candidate.snapshot == "early"
    assert mean_attribute_nmi(choice.chosen) >= 0.8 * max(mean_attribute_nmi(s) for s in choice.scored)


def test_says_no_confident_choice_without_signal():
    choice = choose_clustering(**two_snapshots(errors_follow_minority=False), permutations=50)
    assert choice.chosen is None and choice.p_value > 0.05
    text = format_choice(choice, "erm_epoch1, per class, k=2")
    assert "no confident choice" in text and "keeping the default clustering, erm_epoch1, per class, k=2" in text
    assert choice.record()["confident"] is False and choice.record()["chosen"] is None


def test_choice_is_deterministic_for_a_seed():
    first = choose_clustering(**two_snapshots(seed=3), permutations=30).record()
    second = choose_clustering(**two_snapshots(seed=3), permutations=30).record()
    assert first == second


def test_cluster_mode_chooses_among_the_erm_snapshots(run_cli, tmp_path):
    erm_dir, out = tmp_path / "erm", tmp_path / "clusters"
    rc, _, err = run_cli("--mode", "erm", "--data", "digits", "--epochs", "2", "--clusters_auto", "--out_dir", erm_dir)
    assert rc == 0, err
    assert (erm_dir / "erm_epoch1.pt").is_file()  # the candidate snapshot was saved
    rc, out_text, err = run_cli("--mode", "cluster", "--data", "digits", "--checkpoint", erm_dir / "erm.pt",
                                "--clusters_auto", "--out_dir", out)
    assert rc == 0, err
    assert "label-free clustering choice" in out_text and "not used" in out_text
    summary = json.loads((out / "cluster_summary.json").read_text())
    choice = summary["clusters_choice"]
    assert {c["snapshot"] for c in choice["candidates"]} == {"erm", "erm_epoch1"}
    assert choice["confident"], "2-epoch ERM on Colored Digits errs exactly on the minority colour"
    frame = pd.read_csv(out / "clusters.csv")
    per_class = frame.groupby("label")["cluster_assign"].nunique()
    k = choice["chosen"]["k"]
    assert (per_class == k).all() if choice["chosen"]["per_class"] else frame["cluster_assign"].nunique() == k


def test_clusters_auto_needs_a_checkpoint(run_cli, tmp_path):
    rc, _, err = run_cli("--mode", "cluster", "--data", "digits", "--clusters", tmp_path / "x.csv", "--clusters_auto",
                         "--out_dir", tmp_path / "o")
    assert rc == 2 and "--clusters_auto" in err


@pytest.mark.slow
def test_methods_use_the_chosen_clusters(run_cli, tmp_path):
    out = tmp_path / "all"
    rc, _, err = run_cli("--data", "digits", "--methods", "retrain_only", "--epochs", "2", "--retrain_ep", "1",
                         "--clusters_auto", "--out_dir", out)
    assert rc == 0, err
    results = json.loads((out / "results.json").read_text())
    chosen = results["clusters_choice"]["chosen"]
    assert results["cluster_checkpoint"].endswith(f"{chosen['snapshot']}.pt")
    assert results["args"]["num_clusters"] == chosen["k"] and results["args"]["per_class"] == chosen["per_class"]
    assert results["clusters"] == str(out / "clusters.csv")
