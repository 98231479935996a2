import copy

import pytest
import torch

from models import build_model
from models.masking import (attach_masks, density_report, iter_masks, mask_parameters, set_mask_mode,
                            sparsity_penalty)
from training.contrastive import cluster_contrastive_loss
from models.factory import checkpoint_content, model_from_checkpoint
from utils.checkpoint import load_checkpoint, save_checkpoint


@pytest.mark.parametrize("arch, shape", [("mlp", (2, 8, 8)), ("cnn", (2, 8, 8))])
def test_fixed_masks_with_positive_logits_reproduce_the_dense_model(arch, shape):
    torch.manual_seed(0)
    dense = build_model(arch, shape, 2).eval()
    masked = copy.deepcopy(dense)
    attach_masks(masked, "all", init_logit=3.0)
    set_mask_mode(masked, "fixed")
    x = torch.randn(5, *shape)
    assert torch.equal(dense(x), masked(x))
    assert density_report(masked)["overall"] == 1.0


def test_sampled_mask_is_binary_and_has_gradient():
    torch.manual_seed(0)
    model = build_model("mlp", (2, 8, 8), 2)
    attach_masks(model, "all", init_logit=0.5)
    set_mask_mode(model, "sample")
    layer = model.head
    w = layer.parametrizations.weight.original
    ratio = (layer.weight / w).detach()
    assert set(torch.unique(ratio).tolist()) <= {0.0, 1.0}
    model(torch.randn(3, 2, 8, 8)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mask_parameters(model))


def test_prune_layers_selection():
    model = build_model("mlp", (2, 8, 8), 2)
    assert [n for n, _ in iter_masks(model)] == []
    assert list(attach_masks(copy.deepcopy(model), "head")) == ["head"]
    assert list(attach_masks(copy.deepcopy(model), "2")) == ["body.3", "head"]
    assert len(attach_masks(model, "all")) == 3


def test_contrastive_term_alone_gives_mask_logits_a_gradient():
    torch.manual_seed(0)
    model = build_model("mlp", (2, 8, 8), 2)
    attach_masks(model, "all")
    set_mask_mode(model, "sample")
    x = torch.randn(16, 2, 8, 8)
    y = torch.tensor([0, 1] * 8)
    c = torch.tensor([0, 0, 1, 1] * 4)
    z = torch.nn.functional.normalize(model.features(x), dim=1)
    loss = cluster_contrastive_loss(z, y, c)
    assert loss.requires_grad and loss.item() > 0
    loss.backward()
    grads = [p.grad for p in mask_parameters(model)[:-1]]  # the head does not feed the features
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_sparsity_penalty_counts_keep_probabilities():
    model = build_model("mlp", (2, 8, 8), 2, hidden_dim=4)
    attach_masks(model, "head", init_logit=2.0)
    assert sparsity_penalty(model).item() == pytest.approx(8 * torch.sigmoid(torch.tensor(2.0)).item())


def test_checkpoint_round_trip_keeps_the_mask(tmp_path):
    import argparse

    torch.manual_seed(0)
    model = build_model("mlp", (2, 8, 8), 2)
    attach_masks(model, "all")
    for _, mask in iter_masks(model):
        mask.logits.data.normal_()
    set_mask_mode(model, "fixed")
    args = argparse.Namespace(arch="mlp", data="digits")
    save_checkpoint(tmp_path / "m.pt", checkpoint_content(model, vars(args), {"hidden_dim": 256, "input_shape": [2, 8, 8]}, 2))
    ckpt = load_checkpoint(tmp_path / "m.pt")
    assert set(ckpt["mask_logits"]) == {"body.1", "body.3", "head"}
    assert "head.weight" in ckpt["state_dict"]
    restored = model_from_checkpoint(ckpt)
    x = torch.randn(4, 2, 8, 8)
    model.eval()
    assert torch.equal(model(x), restored.eval()(x))
    assert density_report(restored)["overall"] == pytest.approx(density_report(model)["overall"])


def test_emptied_layer_warns_by_name():
    model = build_model("mlp", (2, 8, 8), 2)
    attach_masks(model, "head")
    model.head.parametrizations.weight[0].logits.data.fill_(-1.0)
    with pytest.warns(UserWarning, match="'head'"):
        assert density_report(model)["per_layer"]["head"] == 0.0
