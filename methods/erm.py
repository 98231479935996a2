"""ERM: the reference model itself (trained here, or ``--checkpoint``), evaluated as it is."""
from __future__ import annotations

from methods.base import Context, Fitted, Method
from methods.registry import register


@register
class ERM(Method):
    """Empirical risk minimisation: mean cross-entropy over the training split, ``--epochs`` epochs.

    Every other method is compared with it; PruSC, retrain-only and DFR start from this very model.
    """

    name = "erm"
    selection = "last epoch (--epochs)"

    def fit(self, ctx: Context) -> Fitted:
        ref = ctx.reference
        trained = {"train_loss": list(ref.train_loss)} if ref.train_loss is not None else {}  # the loss curve
        return Fitted(ref.model, info={"checkpoint": ref.checkpoint, **trained}, save=False)
