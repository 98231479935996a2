import pytest
import torch

from training.contrastive import cluster_contrastive_loss
from training.samplers import BalancedBatchSampler


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
    # anchor 0 (class 0, cluster 0); positive 1 (class 0, cluster 1); negative 2 (class 1, cluster 0)
    y, c = torch.tensor([0, 0, 1]), torch.tensor([0, 1, 0])

    def loss(positive_angle: float, negative_angle: float) -> float:
        angles = torch.tensor([0.0, positive_angle, negative_angle])
        z = torch.stack([angles.cos(), angles.sin()], dim=1)
        return cluster_contrastive_loss(z, y, c, 0.5).item()

    # pull: with the negative fixed, a positive nearer the anchor lowers the loss
    assert loss(0.3, 1.0) < loss(1.5, 1.0) < loss(3.0, 1.0)
    # push: with the positive fixed, a same-cluster negative farther from the anchor lowers the loss
    assert loss(1.0, 3.0) < loss(1.0, 1.5) < loss(1.0, 0.3)
    # the gradient on the anchor points toward the positive and away from the negative
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], requires_grad=True)
    cluster_contrastive_loss(z, y, c, 0.5).backward()
    step = -z.grad[0]
    assert float(step @ torch.tensor([0.0, 1.0])) > 0


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
    with pytest.raises(ValueError, match="smaller than the number of cells"):
        BalancedBatchSampler(torch.arange(10), batch_size=4)
