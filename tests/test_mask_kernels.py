"""The grouped mask kernels give what the straight-through Gumbel-sigmoid estimator, written out
layer by layer, gives: the same masks, outputs and gradients (sampled and fixed), the same penalty."""
import copy

import pytest
import torch

from models import build_model, masking
from models.masking import (attach_masks, iter_masks, load_mask_logits, mask_parameters, set_mask_mode,
                            sparsity_penalty, split_state)


class StraightThrough(torch.autograd.Function):
    """Forward ``[z >= 0]``, backward ``grad * s * (1 - s) / tau`` with ``s = sigmoid(z)``."""

    @staticmethod
    def forward(ctx, logits, noise, temperature):
        z = (logits + noise) / temperature
        ctx.save_for_backward(z)
        ctx.temperature = temperature
        return (z >= 0).to(logits.dtype)

    @staticmethod
    def backward(ctx, grad):
        (z,) = ctx.saved_tensors
        soft = torch.sigmoid(z)
        return grad * soft * (1 - soft) / ctx.temperature, None, None


def per_layer_masks(model: torch.nn.Module, temperature: float) -> dict[str, torch.Tensor]:
    """The estimator as first written: each layer, in forward order, draws its own noise."""
    out = {}
    for name, mask in iter_masks(model):
        noise = torch.logit(torch.rand_like(mask.logits), eps=1e-6)
        out[name] = StraightThrough.apply(mask.logits, noise, temperature)
    return out


def reference_forward(model: torch.nn.Module, x: torch.Tensor, masks: dict[str, torch.Tensor]) -> torch.Tensor:
    """``model(x)`` with each masked weight replaced by ``original * masks[name]``."""
    weights = {f"{name}.weight": layer.parametrizations.weight.original * masks[name]
               for name, layer in model.named_modules() if name in masks}
    rest = {k: v for k, v in split_state(model)[0].items() if k not in weights}
    dense = build_model("cnn", (3, 8, 8), 2, width=4).eval()
    return torch.func.functional_call(dense, {**rest, **weights}, (x,))


@pytest.fixture(params=["per_layer", "flat"])
def kernels(request, monkeypatch):
    """Run a test with each layout of the mask kernels (the flat one is CUDA's, forced on the CPU)."""
    monkeypatch.setattr(masking, "FLAT_DEVICES", {"cpu"} if request.param == "flat" else set())
    return request.param


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sampled_masks_outputs_and_gradients_match_the_per_layer_estimator(kernels, temperature):
    torch.manual_seed(0)
    model = build_model("cnn", (3, 8, 8), 2, width=4).eval()
    attach_masks(model, "all", init_logit=0.3, temperature=temperature)
    for _, mask in iter_masks(model):
        mask.logits.data.normal_(0.5, 1.0)
    reference = copy.deepcopy(model)
    x = torch.randn(6, 3, 8, 8)

    set_mask_mode(model, "sample")
    torch.manual_seed(1)
    out = model(x)
    out.square().sum().backward()

    torch.manual_seed(1)
    expected = reference_forward(reference, x, per_layer_masks(reference, temperature))
    expected.square().sum().backward()
    assert torch.equal(out, expected)
    for got, want in zip(mask_parameters(model), mask_parameters(reference)):
        if kernels == "flat":  # one pass over a flat buffer: CPU vector kernels may round the last bit otherwise
            torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-9)
        else:
            assert torch.equal(got.grad, want.grad)


def test_each_forward_pass_draws_fresh_masks_and_fixed_mode_is_deterministic(kernels):
    torch.manual_seed(0)
    model = build_model("cnn", (3, 8, 8), 2, width=4).eval()
    attach_masks(model, "all", init_logit=0.01)
    x = torch.randn(4, 3, 8, 8)
    set_mask_mode(model, "sample")
    assert not torch.equal(model(x), model(x))
    set_mask_mode(model, "fixed")
    for _, mask in iter_masks(model):
        mask.logits.data.normal_()
    dense = copy.deepcopy(model)
    set_mask_mode(dense, "off")
    expected = {n: (m.logits >= 0).float() for n, m in iter_masks(model)}
    assert torch.equal(model(x), reference_forward(dense, x, expected))


def test_sparsity_penalty_value_and_gradient_match_the_per_layer_sum(kernels):
    torch.manual_seed(0)
    model = build_model("cnn", (3, 8, 8), 2, width=4)
    attach_masks(model)
    for _, mask in iter_masks(model):
        mask.logits.data.normal_()
    reference = copy.deepcopy(model)
    sparsity_penalty(model).backward()
    expected = sum(torch.sigmoid(p).sum() for p in mask_parameters(reference))
    expected.backward()
    assert sparsity_penalty(model).item() == pytest.approx(expected.item(), rel=1e-6)
    for got, want in zip(mask_parameters(model), mask_parameters(reference)):
        assert torch.equal(got.grad, want.grad)


def test_copies_and_loaded_masks_sample_on_their_own_logits(kernels):
    torch.manual_seed(0)
    model = build_model("mlp", (2, 8, 8), 2, hidden_dim=8).eval()
    attach_masks(model)
    set_mask_mode(model, "sample")
    model(torch.randn(2, 2, 8, 8)).sum().backward()  # leaves a drawn mask behind
    twin = copy.deepcopy(model)
    for _, mask in iter_masks(twin):
        mask.logits.data.fill_(-30.0)  # every weight pruned, whatever the noise
    assert torch.equal(twin(torch.randn(2, 2, 8, 8)), twin.head.bias.expand(2, 2).detach())
    loaded = build_model("mlp", (2, 8, 8), 2, hidden_dim=8).eval()
    load_mask_logits(loaded, {n: m.logits.detach() for n, m in iter_masks(twin)})
    set_mask_mode(loaded, "sample")
    assert torch.equal(loaded(torch.ones(1, 2, 8, 8)), loaded.head.bias[None].detach())
