"""L2-SP (Li et al., 2018): keep the backbone near its starting point.

Penalty: ``(alpha/2) ||theta_b - theta_b^0||^2`` over the backbone parameters, plus an
optional ``(beta/2) ||theta_h||^2`` on the head (the paper's plain weight decay on the new
layers; ``beta=0`` by default). ``update(model)`` takes the snapshot ``theta^0``: call it
once on the pre-trained model, or after every task to anchor to the previous task's
weights in a continual run.

"Backbone" is every trainable parameter whose name does not match one of ``head``
(default ``["head", "classifier", "lm_head", "fc_out"]``; patterns as in
``select_parameters``): the head of a new task is free to move.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from .base import ContinualRegularizer, TensorStore, register, select_parameters

__all__ = ["DEFAULT_HEAD_PATTERNS", "L2SP"]

DEFAULT_HEAD_PATTERNS = ["head", "classifier", "lm_head", "fc_out"]


@register("l2sp")
class L2SP(ContinualRegularizer):
    """Squared distance of the backbone to its snapshot.

    Args:
        alpha: Strength on the backbone.
        beta: Strength of plain L2 on the head parameters (``0``: head unregularized).
        head: Name patterns of the head (excluded from the anchor term).
        include: Restrict the backbone to these patterns (``None``: all but the head).
        name: Logged name.
    """

    def __init__(
        self,
        alpha: float = 0.01,
        beta: float = 0.0,
        head: list[str] | None = None,
        include: list[str] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if alpha < 0 or beta < 0:
            raise ValueError(f"L2SP alpha={alpha} and beta={beta} must be >= 0.")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.head = list(DEFAULT_HEAD_PATTERNS if head is None else head)
        self.include = include
        self.anchor = TensorStore()

    def backbone_parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """The parameters the anchor term covers."""
        return select_parameters(model, self.include, self.head)

    def head_parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """The parameters the ``beta`` term covers."""
        return select_parameters(model, self.head)

    def _update(self, model: nn.Module, data: Iterable[Any] | None, task: Any) -> None:
        params = self.backbone_parameters(model)
        if not params:
            raise ValueError(
                f"{self.name}: no backbone parameter (trainable, not matching head={self.head}, "
                f"include={self.include}); check the patterns."
            )
        self.anchor.clear()
        with torch.no_grad():
            for name, p in params.items():
                self.anchor[name] = p.detach().clone()

    def _penalty(self, model: nn.Module) -> Tensor:
        current = dict(model.named_parameters())
        total = torch.zeros((), device=self.num_updates.device)
        for name, anchor in self.anchor.items():
            if name not in current:
                raise KeyError(
                    f"{self.name}: anchored parameter {name!r} is not in the model given to "
                    "penalty(); pass the same model as to update()."
                )
            total = total + (current[name] - anchor).pow(2).sum()
        out = 0.5 * self.alpha * total
        if self.beta:
            heads = self.head_parameters(model).values()
            out = out + 0.5 * self.beta * sum(p.pow(2).sum() for p in heads)
        return out
