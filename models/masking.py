"""Learnable binary weight masks attached to an unchanged network (PruSC's subnetwork).

Each chosen ``Conv2d``/``Linear`` weight gets a :class:`WeightMask` parametrization
(``torch.nn.utils.parametrize``) holding one mask logit per weight. The model's code is not
touched: ``layer.weight`` simply becomes ``original_weight * mask``.

Mask modes:

- ``off``: dense, the mask is ignored;
- ``sample``: training-time mask ``m = hard(s)`` with
  ``s = sigmoid((logit + logistic noise) / tau)`` and ``hard(s) = [s >= 0.5]`` (Gumbel-sigmoid with a
  straight-through hard threshold): the forward pass uses an exactly binary mask, the backward
  pass treats the threshold as the identity so the gradient reaches the logits through ``s``;
- ``fixed``: deterministic mask ``[logit >= 0]``, used for retraining and evaluation.

Speed: the masks of one model form a :class:`MaskGroup` (made by :func:`attach_masks`,
:func:`load_mask_logits` and :func:`set_mask_mode`). In ``sample`` mode the group draws the
logistic noise for all its layers at once, when the first layer of a forward pass asks for its
mask; on CUDA it also samples every mask in one pass over one flat logits vector (fewer, larger
kernels; the sparsity penalty too), on the CPU each layer samples from its slice of the noise
(no copies). On the CPU the random numbers are the ones the layers would draw one after another
in forward order, so the results equal the per-layer estimator's bit for bit.
"""
from __future__ import annotations

import warnings
from typing import Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

from utils.errors import UserError

MODES = ("off", "sample", "fixed")
_PARAM_TAG = ".parametrizations.weight.original"
_LOGIT_TAG = ".parametrizations.weight.0.logits"
NOISE_EPS = 1e-6
FLAT_DEVICES = {"cuda"}  # device types where one pass over all masks (fewer, larger kernels) pays off


class _GumbelHardMask(torch.autograd.Function):
    """Forward: the exactly binary mask ``[(logit + noise) / tau >= 0]``, i.e. ``[s >= 0.5]``.

    Backward: the straight-through estimator, the gradient of ``s = sigmoid((logit + noise) / tau)``.
    One fused function instead of a chain of element-wise ops keeps a pruning step cheap.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, noise: torch.Tensor, temperature: float) -> torch.Tensor:  # type: ignore[override]
        z = logits + noise
        if temperature != 1.0:
            z.div_(temperature)
        ctx.save_for_backward(z)
        ctx.temperature = temperature
        return (z >= 0).to(logits.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        (z,) = ctx.saved_tensors
        soft = torch.sigmoid(z)
        out = grad * soft
        out.mul_(soft.neg_().add_(1))  # grad * s * (1 - s), the same rounding as written out
        if ctx.temperature != 1.0:
            out.div_(ctx.temperature)
        return out, None, None


def logistic_noise(logits: list[torch.Tensor]) -> torch.Tensor:
    """Logistic noise for all of ``logits``, flat, in one draw. On the CPU, drawing ``n1 + n2`` uniforms
    at once gives the numbers that drawing ``n1`` then ``n2`` gives, so this equals a draw per tensor
    in turn (CUDA's generator makes other, equally distributed, numbers)."""
    total = sum(t.numel() for t in logits)
    return torch.rand(total, dtype=logits[0].dtype, device=logits[0].device).logit_(eps=NOISE_EPS)


def split_like(flat: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Views of ``flat`` shaped like each of ``tensors`` in turn."""
    return [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


class WeightMask(nn.Module):
    """A parametrization ``weight -> weight * mask(logits)`` with a switchable mode."""

    def __init__(self, shape: torch.Size, init_logit: float, temperature: float = 1.0) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.full(shape, float(init_logit)))
        self.temperature = temperature
        self.mode = "fixed"
        self.group: MaskGroup | None = None
        self.slot = 0

    def keep_probability(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    def mask(self) -> torch.Tensor:
        if self.mode == "fixed":
            return (self.logits >= 0).to(self.logits.dtype)
        if self.group is not None:
            return self.group.sampled(self)
        return _GumbelHardMask.apply(self.logits, logistic_noise([self.logits]).view_as(self.logits),
                                     self.temperature)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.mode == "off":
            return weight
        return weight * self.mask().to(weight.dtype)


class MaskGroup:
    """The masks of one model in forward order, sampled together: one noise draw per forward pass.

    A new draw happens when a layer asks again for a mask it already took from the current draw,
    i.e. at the first masked layer of every forward pass. On the devices in ``FLAT_DEVICES`` (where
    kernel launches cost more than memory passes) all masks are then made in one flat pass over the
    concatenated logits; elsewhere each layer makes its own from its slice of the noise (no copies).
    """

    def __init__(self, masks: list[WeightMask]) -> None:
        self.masks = masks
        for slot, mask in enumerate(masks):
            mask.group, mask.slot = self, slot
        self._drawn: list[torch.Tensor] = []  # per layer: its mask (flat pass) or its noise
        self._taken: set[int] = set()

    def __getstate__(self) -> dict:
        return {"masks": self.masks, "_drawn": [], "_taken": set()}  # a drawn mask is not copyable

    @property
    def flat(self) -> bool:
        return self.masks[0].logits.device.type in FLAT_DEVICES

    def sampled(self, mask: WeightMask) -> torch.Tensor:
        temperature = self.masks[0].temperature
        if not self._drawn or mask.slot in self._taken:
            logits = [m.logits for m in self.masks]
            noise = logistic_noise(logits)
            if self.flat:
                flat = torch.cat([t.reshape(-1) for t in logits])
                self._drawn = split_like(_GumbelHardMask.apply(flat, noise, temperature), logits)
            else:
                self._drawn = split_like(noise, logits)
            self._taken = set()
        self._taken.add(mask.slot)
        drawn = self._drawn[mask.slot]
        return drawn if self.flat else _GumbelHardMask.apply(mask.logits, drawn, temperature)


def group_masks(model: nn.Module) -> None:
    """Make the masks of ``model`` one :class:`MaskGroup` when they can share a draw (same
    temperature, device and dtype); otherwise each samples alone."""
    masks = [mask for _, mask in iter_masks(model)]
    for mask in masks:
        mask.group = None
    kinds = {(m.temperature, m.logits.device, m.logits.dtype) for m in masks}
    if len(kinds) == 1:
        MaskGroup(masks)


def maskable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """All ``Conv2d``/``Linear`` layers in module order (names as in ``named_modules``)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def select_layers(model: nn.Module, which: str) -> list[tuple[str, nn.Module]]:
    """Layers chosen by ``--prune_layers``: ``all``, ``head`` or an integer N (the last N layers)."""
    layers = maskable_layers(model)
    if which == "all":
        return layers
    if which == "head":
        return [(n, m) for n, m in layers if m is model.head]
    if which.isdigit() and int(which) > len(layers):
        raise UserError(f"--prune_layers {which}: the model has {len(layers)} maskable layers (Conv2d/Linear); "
                        f"use all, or a number up to {len(layers)}")
    if which.isdigit() and int(which) >= 1:
        return layers[-int(which):]
    raise UserError(f"--prune_layers {which!r} is not understood; use all, head, or a number N (the last N layers)")


def attach_masks(model: nn.Module, which: str = "all", init_logit: float = 3.0,
                 temperature: float = 1.0) -> dict[str, WeightMask]:
    """Give each selected layer a mask initialised so every weight starts kept (logit > 0)."""
    if init_logit <= 0:
        raise UserError(f"--mask_init {init_logit} must be > 0 so that pruning starts from the dense network")
    masks = {}
    for name, layer in select_layers(model, which):
        mask = WeightMask(layer.weight.shape, init_logit, temperature).to(layer.weight.device)
        parametrize.register_parametrization(layer, "weight", mask)
        masks[name] = mask
    group_masks(model)
    return masks


def iter_masks(model: nn.Module) -> Iterator[tuple[str, WeightMask]]:
    """``(layer name, mask)`` for every masked layer."""
    for name, layer in model.named_modules():
        if parametrize.is_parametrized(layer, "weight"):
            for p in layer.parametrizations.weight:
                if isinstance(p, WeightMask):
                    yield name, p


def set_mask_mode(model: nn.Module, mode: str) -> None:
    """Switch every mask of ``model`` to ``mode`` (and regroup them: the model may have moved device)."""
    if mode not in MODES:
        raise ValueError(f"mask mode must be one of {MODES}, got {mode!r}")
    for _, mask in iter_masks(model):
        mask.mode = mode
    group_masks(model)


def mask_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [mask.logits for _, mask in iter_masks(model)]


def weight_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter that is not a mask logit."""
    logits = {id(p) for p in mask_parameters(model)}
    return [p for p in model.parameters() if id(p) not in logits]


def sparsity_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of keep probabilities over all masked weights (the reference's L0 surrogate); on the
    devices in ``FLAT_DEVICES`` in one pass over the concatenated logits."""
    logits = mask_parameters(model)
    if logits and logits[0].device.type in FLAT_DEVICES:
        return torch.sigmoid(torch.cat([t.reshape(-1) for t in logits])).sum()
    return sum(torch.sigmoid(t).sum() for t in logits)


def density_report(model: nn.Module, warn: bool = True) -> dict:
    """Fraction of kept weights per masked layer and overall; warn about emptied layers."""
    per_layer, kept, total = {}, 0, 0
    for name, mask in iter_masks(model):
        keep = int((mask.logits >= 0).sum())
        per_layer[name] = keep / mask.logits.numel()
        kept += keep
        total += mask.logits.numel()
        if warn and keep == 0:
            warnings.warn(f"pruning removed every weight of layer {name!r}; its output is constant "
                          "(lower --lambda_sparse or --pruning_ep)", stacklevel=2)
    return {"overall": kept / total if total else 1.0, "per_layer": per_layer}


def split_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The dense-model ``state_dict`` (original weights under their usual keys) and the mask logits."""
    dense, logits = {}, {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu()
        if key.endswith(_LOGIT_TAG):
            logits[key[: -len(_LOGIT_TAG)]] = value
        elif key.endswith(_PARAM_TAG):
            dense[key[: -len(_PARAM_TAG)] + ".weight"] = value
        else:
            dense[key] = value
    return dense, logits


def load_mask_logits(model: nn.Module, logits: dict[str, torch.Tensor], temperature: float = 1.0) -> None:
    """Attach masks to the layers named in ``logits`` and copy the stored logits in."""
    layers = dict(maskable_layers(model))
    for name, value in logits.items():
        if name not in layers or layers[name].weight.shape != value.shape:
            raise UserError(f"checkpoint mask for layer {name!r} does not fit this model "
                            f"(shape {tuple(value.shape)}); the checkpoint was written for another architecture")
        mask = WeightMask(value.shape, 1.0, temperature)
        mask.logits.data.copy_(value)
        parametrize.register_parametrization(layers[name], "weight", mask)
    group_masks(model)
