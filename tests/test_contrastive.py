import pytest
import torch

from training.contrastive import cluster_contrastive_loss
from training.samplers import BalancedBatchSampler
from utils.errors import UserError


def per_anchor_reference(z, y, c, tau):
    """Slow, obviously-correct loop over anchors (the test's own independent formula)."""
    losses = []
    for i in range(len(z)):
        pos = [j for j in range(len(z)) if j != i and y[j] == y[i] and c[j] != c[i]]
        neg = [j for j in range(len(z)) if j != i and c[j] == c[i]]
        if not pos:
            continue
        denom = sum(torch.exp(z[i] @ z[k] / tau) for k in pos + neg)
        losses.append(-sum(torch.log(torch.exp(z[i] @ z[p] / tau) / denom) for p in pos) / len(pos))
    return torch.stack(losses).mean()


def test_matches_the_per_anchor_definition():
    torch.manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(12, 5), dim=1)
    y = torch.tensor([0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 0, 1])
    c = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 1])
    expected = per_anchor_reference(z.double(), y, c, 0.5)
    assert cluster_contrastive_loss(z.double(), y, c, 0.5).item() == pytest.approx(expected.item(), rel=1e-6)


def test_pulls_same_class_across_clusters_and_pushes_within_cluster():
    y = torch.tensor([0, 0])
    c = torch.tensor([0, 1])
    close = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1]]), dim=1)
    far = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    # add a same-cluster negative for anchor 0
    y3, c3 = torch.tensor([0, 0, 1]), torch.tensor([0, 1, 0])
    near_neg = torch.cat([close, torch.tensor([[1.0, 0.0]])])
    far_neg = torch.cat([close, torch.tensor([[-1.0, 0.0]])])
    assert cluster_contrastive_loss(far_neg, y3, c3) < cluster_contrastive_loss(near_neg, y3, c3)
    assert cluster_contrastive_loss(close, y, c).item() == pytest.approx(0.0)  # only positives in the softmax
    assert cluster_contrastive_loss(far, y, c).item() == pytest.approx(0.0)


def test_batch_without_positives_gives_zero_with_graph():
    z = torch.randn(4, 3, requires_grad=True)
    loss = cluster_contrastive_loss(z, torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 1, 1]))
    assert loss.item() == 0.0
    loss.backward()
    assert z.grad is not None


def test_sampler_balances_cells():
    cells = torch.tensor([0] * 90 + [1] * 6 + [2] * 4)
    sampler = BalancedBatchSampler(cells, batch_size=30, num_batches=5, generator=torch.Generator().manual_seed(0))
    batches = list(sampler)
    assert len(batches) == 5
    for batch in batches:
        counts = torch.bincount(cells[torch.tensor(batch)], minlength=3)
        assert counts.tolist() == [10, 10, 10]
    # small cells are cycled through completely before repeating
    seen = [i for b in batches[:1] for i in b if cells[i] == 2]
    assert len(set(seen[:4])) == 4


def test_sampler_rejects_too_small_batches():
    with pytest.raises(UserError, match="--batch_size 4 is smaller than the number of cells"):
        BalancedBatchSampler(torch.arange(10), batch_size=4)
