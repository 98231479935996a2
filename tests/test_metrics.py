import pytest
import torch

from utils.metrics import compute_metrics, group_counts


def t(*values):
    return torch.tensor(values)


def test_metrics_match_hand_computation():
    # groups: (0,0): 2 samples, 1 right; (0,1): 1 sample, right; (1,1): 3 samples, 2 right
    y = t(0, 0, 0, 1, 1, 1)
    a = t(0, 0, 1, 1, 1, 1)
    preds = t(0, 1, 0, 1, 1, 0)
    m = compute_metrics(preds, y, a)
    assert m["avg_acc"] == pytest.approx(4 / 6)
    assert m["groups"] == {"y=0,a=0": {"acc": 0.5, "n": 2}, "y=0,a=1": {"acc": 1.0, "n": 1},
                           "y=1,a=1": {"acc": pytest.approx(2 / 3), "n": 3}}
    assert m["worst_group_acc"] == pytest.approx(0.5)
    assert m["mean_group_acc"] == pytest.approx((0.5 + 1.0 + 2 / 3) / 3)
    assert m["weighted_avg_acc"] == pytest.approx(m["avg_acc"])  # no training counts given


def test_weighted_average_uses_training_proportions_and_skips_absent_groups():
    y = t(0, 0, 1, 1)
    a = t(0, 1, 0, 1)
    preds = t(0, 0, 0, 0)  # accs: (0,0)=1, (0,1)=1, (1,0)=0, (1,1)=0
    train_counts = {"y=0,a=0": 90, "y=0,a=1": 10, "y=1,a=0": 0, "y=1,a=1": 100, "y=2,a=0": 50}
    m = compute_metrics(preds, y, a, train_counts)
    # y=2,a=0 is absent from the split -> dropped; weights 90, 10, 0, 100 renormalised over 200
    assert m["weighted_avg_acc"] == pytest.approx((90 + 10) / 200)
    assert m["worst_group_acc"] == 0.0


def test_group_absent_from_split_is_not_a_zero():
    y = t(0, 0, 1)
    a = t(0, 0, 1)
    m = compute_metrics(t(0, 0, 1), y, a)
    assert set(m["groups"]) == {"y=0,a=0", "y=1,a=1"}
    assert m["worst_group_acc"] == 1.0


def test_unknown_attribute_makes_class_groups():
    m = compute_metrics(t(0, 1, 1), t(0, 1, 0), t(-1, -1, -1))
    assert set(m["groups"]) == {"y=0,a=-1", "y=1,a=-1"}
    assert m["worst_group_acc"] == 0.5


def test_group_counts():
    assert group_counts(t(0, 0, 1), t(1, 1, 0)) == {"y=0,a=1": 2, "y=1,a=0": 1}


def test_bad_shapes_rejected():
    with pytest.raises(ValueError):
        compute_metrics(t(0, 1), t(0), t(0))
