"""A linear digit classifier fine-tuned through :class:`core.training.FineTuneModule`."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from torch import Tensor, nn

from core.training import FineTuneModule


class LinearDigits(FineTuneModule):
    """One linear layer (``model.linear``) from 64 pixels to 10 digits; logs loss and accuracy.

    It keeps the base class's ``test_report`` (the logged ``test/*`` metrics), so the
    contract test sees an app whose ``report.md`` comes from the core alone.

    Args:
        in_features: Input size (64 pixels).
        num_classes: Number of classes (10 digits).
        **kwargs: The :class:`~core.training.FineTuneModule` options (``adapter``,
            ``optimizer``, ``monitor``, ...), passed through unchanged.
    """

    def __init__(self, in_features: int = 64, num_classes: int = 10, **kwargs: Any) -> None:
        network = nn.Sequential(OrderedDict(linear=nn.Linear(in_features, num_classes)))
        super().__init__(model=network, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> dict[str, Any]:
        x, y = batch
        logits = self(x)
        preds = logits.argmax(dim=-1)
        if stage == "predict":
            return {"preds": preds, "target": y}
        return {
            "loss": self.loss_fn(logits, y),
            "acc": (preds == y).float().mean(),
            "batch_size": len(y),
        }
