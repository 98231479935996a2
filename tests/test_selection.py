"""The label-free model-selection core (training/selection.py): every annotation-free number depends on it."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from data import TensorSpuriousDataset
from methods import REGISTRY
from training.reference import nearest_clusters
from training.selection import (BestEpoch, WorstCell, WorstGroup, cells_of, requested_selector, selection_facts,
                                sparsest_within, stratified_halves, worst_cell_accuracy)


def tensor(*values: int) -> torch.Tensor:
    return torch.tensor(values)


def test_worst_cell_accuracy_ignores_cells_below_the_minimum_size():
    cells = tensor(0, 0, 0, 0, 1, 1, 1, 1, 2, 2)
    y = torch.zeros(10, dtype=torch.long)
    preds = tensor(0, 0, 0, 1, 0, 0, 0, 0, 1, 1)  # cell 0: 3/4, cell 1: 4/4, cell 2 (2 samples): 0/2
    assert worst_cell_accuracy(preds, y, cells, min_size=3) == pytest.approx(0.75)
    assert worst_cell_accuracy(preds, y, cells, min_size=2) == 0.0
    assert worst_cell_accuracy(preds, y, cells) == 0.0  # every cell counts by default


def test_worst_cell_accuracy_uses_every_cell_when_all_are_small():
    cells, y = tensor(0, 0, 1, 1), tensor(1, 1, 0, 0)
    preds = tensor(1, 0, 0, 0)  # cell 0: 1/2, cell 1: 2/2
    assert worst_cell_accuracy(preds, y, cells, min_size=5) == 0.5


def test_cells_of_gives_one_id_per_label_and_cluster():
    y, clusters = tensor(0, 0, 1, 1, 1), tensor(0, 2, 0, 2, 1)
    cells = cells_of(y, clusters)
    assert len(set(cells.tolist())) == 5
    assert cells.tolist() == [0, 2, 3, 5, 4]


def test_stratified_halves_split_every_cell_in_half():
    cells = torch.tensor([0] * 7 + [1] * 4 + [2] * 1)
    first, second = stratified_halves(cells, seed=3)
    assert sorted(first.tolist() + second.tolist()) == list(range(12))
    assert first.tolist() == sorted(first.tolist()) and second.tolist() == sorted(second.tolist())
    for cell, (n_first, n_second) in {0: (4, 3), 1: (2, 2), 2: (1, 0)}.items():
        assert int((cells[first] == cell).sum()) == n_first and int((cells[second] == cell).sum()) == n_second
    again, _ = stratified_halves(cells, seed=3)
    assert torch.equal(first, again)  # seeded: every method of a run gets the same halves
    assert any(not torch.equal(stratified_halves(cells, seed=s)[0], first) for s in range(4, 10))


def test_nearest_centroid_val_clusters():
    train_feats = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    assign, train_y = tensor(0, 0, 1, 1), tensor(0, 1, 0, 1)  # clusters mix labels: nearest over all
    val_feats = torch.tensor([[0.2, 1.0], [1.0, 0.3]])
    assert nearest_clusters(train_feats, assign, train_y, val_feats, tensor(0, 0)).tolist() == [1, 0]


def test_nearest_centroid_val_clusters_stay_inside_the_label_of_label_pure_clusters():
    train_feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0]])
    assign, train_y = tensor(0, 1, 2, 3), tensor(0, 0, 1, 1)  # per class: clusters 0, 1 of label 0; 2, 3 of 1
    val_feats = torch.tensor([[1.0, 0.05], [1.0, 0.05]])
    assert nearest_clusters(train_feats, assign, train_y, val_feats, tensor(0, 1)).tolist() == [0, 2]


def test_best_epoch_keeps_the_earliest_of_tied_scores():
    model = nn.Linear(1, 1, bias=False)
    best = BestEpoch(model)
    for epoch, score in enumerate([0.5, 0.7, 0.7, 0.6]):
        with torch.no_grad():
            model.weight.fill_(float(epoch))
        best.record(score, epoch)
    assert best.epoch == 1 and best.scores == [0.5, 0.7, 0.7, 0.6]
    best.restore()
    assert float(model.weight.detach()) == 1.0
    copy = BestEpoch(model)
    copy.load_state_dict(best.state_dict())
    assert copy.epoch == 1 and copy.scores == best.scores


def test_sparsest_within_tolerance():
    checks = [{"density": 1.0, "score": 0.80}, {"density": 0.6, "score": 0.82},
              {"density": 0.4, "score": 0.79}, {"density": 0.2, "score": 0.70}]
    assert sparsest_within(checks, 0.0) == 1  # only the best score
    assert sparsest_within(checks, 0.03) == 2  # 0.79 >= 0.82 - 0.03; 0.70 is outside the band
    assert sparsest_within(checks, 0.2) == 3
    tied = [{"density": 0.5, "score": 0.8}, {"density": 0.5, "score": 0.8}]
    assert sparsest_within(tied, 0.0) == 1  # equal density: the later check


def test_sparsest_within_keeps_the_dense_start_when_every_mask_hurts():
    checks = [{"density": 1.0, "score": 0.9}, {"density": 0.5, "score": 0.5}, {"density": 0.3, "score": 0.4}]
    assert sparsest_within(checks, 0.02) == 0


def split(preds_right: list[bool]) -> tuple[TensorSpuriousDataset, torch.Tensor]:
    """Four samples, groups (y, a) = (0,0), (0,1), (1,0), (1,1), and predictions right where asked."""
    y, a = tensor(0, 0, 1, 1), tensor(0, 1, 0, 1)
    data = TensorSpuriousDataset(torch.zeros(4, 1), y, a, 2, 2, "val")
    preds = torch.where(torch.tensor(preds_right), y, 1 - y)
    return data, preds


def test_selectors_score_cells_or_true_groups():
    data, preds = split([True, False, True, True])
    cells = tensor(0, 0, 1, 1)  # clusters blind to the attribute: cell 0 holds both groups of label 0
    assert WorstCell(1).score(preds, data, cells) == 0.5
    assert WorstGroup().score(preds, data, None) == 0.0
    with pytest.raises(ValueError, match="cell"):
        WorstCell(1).score(preds, data, None)


def test_selector_from_the_flags_and_its_results_entry():
    worst, oracle = requested_selector("worst_cluster", 7), requested_selector("oracle", 7)
    assert isinstance(worst, WorstCell) and worst.min_cell_size == 7 and isinstance(oracle, WorstGroup)
    facts = selection_facts("epoch with the best {score} on val", worst, False, "none")
    assert facts == {"uses_group_labels": False, "group_labels": "none",
                     "selection": "epoch with the best " + worst.words + " on val"}
    assert "no group labels" in worst.words and ">= 7" in worst.words
    facts = selection_facts("epoch with the best {score} on val", oracle, False, "none")
    assert facts["uses_group_labels"] is True and "--selection oracle" in facts["group_labels"]
    assert "ORACLE" in facts["selection"]
    kept = selection_facts("epoch with the best {score} on val", oracle, True, "training and model selection")
    assert kept["group_labels"] == "training and model selection"
    assert selection_facts("last epoch", None, False, "none")["selection"] == "last epoch"


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_method_states_its_selection_from_its_selector(name):
    method = REGISTRY[name]()
    facts = method.selection_facts(WorstGroup())
    assert "{" not in facts["selection"], "an unfilled {score}"
    selector = method.selector(WorstGroup())
    if selector is not None:
        assert selector.words in facts["selection"]
        assert facts["uses_group_labels"] is True  # the oracle selector reads group labels
    else:
        assert "{score}" not in method.selection
