"""DR-Tune (Zhou et al., 2023): distribution regularization with semantic calibration.

For an ``encoder -> head`` classifier. A frozen copy of the pre-trained encoder (taken by
``update``) supplies features ``z0 = f0(x)`` of each training batch. The head is trained on
the downstream features ``z = f(x)`` by the task loss and, through this regularizer, also
on *calibrated* pre-trained features, so it keeps classifying the pre-trained feature
distribution correctly; that in turn keeps the encoder from drifting into a region the
pre-trained features do not support.

Calibration closes the gap between the two feature spaces before the head sees ``z0``:

1. **rotation**: the orthogonal Procrustes solution ``R = U V^T`` of
   ``min_R ||(z0 - mean z0) R - (z - mean z)||_F`` (``U S V^T = svd((z0 - mean z0)^T
   (z - mean z))``), applied around the means;
2. **class-center shift**: each class's rotated pre-trained features are moved so their
   center equals the center of that class's downstream features.

The calibration is estimated on each batch, with no gradient (the paper keeps a memory
bank of features across batches; per-batch estimates are the simplification here). The
penalty is ``weight * CE(head(calibrated z0), y)``; its gradient reaches only the head.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .base import (
    ContinualRegularizer,
    TensorStore,
    default_inputs,
    default_targets,
    register,
)
from .snapshot import eval_mode, take_snapshot

__all__ = ["DRTune", "semantic_calibration"]


@torch.no_grad()
def semantic_calibration(
    pre: Tensor, cur: Tensor, labels: Tensor, rotate: bool = True, shift: bool = True
) -> Tensor:
    """Map pre-trained features ``pre`` (N, D) towards downstream features ``cur`` (N, D).

    Procrustes rotation about the means, then a per-class translation of the centers.
    """
    if pre.shape != cur.shape or pre.ndim != 2:
        raise ValueError(
            f"semantic_calibration needs two (N, D) feature matrices of one shape; got "
            f"{tuple(pre.shape)} and {tuple(cur.shape)}."
        )
    pre, cur = pre.float(), cur.float()
    out = pre
    if rotate:
        mu_pre, mu_cur = pre.mean(0, keepdim=True), cur.mean(0, keepdim=True)
        u, _, vh = torch.linalg.svd((pre - mu_pre).T @ (cur - mu_cur))
        out = (pre - mu_pre) @ (u @ vh) + mu_cur
    if shift:
        out = out.clone()
        for c in labels.unique():
            sel = labels == c
            out[sel] += cur[sel].mean(0) - out[sel].mean(0)
    return out


@register("drtune")
class DRTune(ContinualRegularizer):
    """Train the head also on calibrated features of a frozen pre-trained encoder.

    Args:
        encoder: Name of the encoder sub-module of the model (``model.get_submodule``).
        head: Name of the head sub-module; it maps encoder features to logits.
        weight: Multiplies the head's loss on calibrated pre-trained features.
        rotate / shift: Use the Procrustes rotation / class-center shift.
        input_fn / target_fn: Pick inputs and labels out of a batch.
        name: Logged name.
    """

    def __init__(
        self,
        encoder: str = "encoder",
        head: str = "head",
        weight: float = 1.0,
        rotate: bool = True,
        shift: bool = True,
        input_fn: Callable[[Any], Any] = default_inputs,
        target_fn: Callable[[Any], Tensor] = default_targets,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if weight < 0:
            raise ValueError(f"DRTune weight={weight} must be >= 0.")
        self.encoder_name, self.head_name = encoder, head
        self.weight = float(weight)
        self.rotate, self.shift = rotate, shift
        self.input_fn, self.target_fn = input_fn, target_fn
        self.pretrained = TensorStore()
        self._batch: tuple[Any, Tensor] | None = None

    def _parts(self, model: nn.Module) -> tuple[nn.Module, nn.Module]:
        try:
            return model.get_submodule(self.encoder_name), model.get_submodule(self.head_name)
        except AttributeError as err:
            raise AttributeError(
                f"{self.name}: the model needs sub-modules encoder={self.encoder_name!r} and "
                f"head={self.head_name!r}; pass their names (e.g. encoder='backbone')."
            ) from err

    def observe(self, batch: Any) -> None:
        """Remember the current batch's inputs and labels for the next ``penalty``."""
        self._batch = (self.input_fn(batch), self.target_fn(batch))

    def _update(self, model: nn.Module, data: Iterable[Any] | None, task: Any) -> None:
        encoder, _ = self._parts(model)
        take_snapshot(encoder, self.pretrained)

    def pretrained_features(self, model: nn.Module, inputs: Any) -> Tensor:
        """Features of the frozen pre-trained encoder (eval mode, no gradient)."""
        self.require_ready("pretrained_features()")
        encoder, _ = self._parts(model)
        # One positional argument, as the live ``encoder(inputs)`` in ``_penalty`` is called.
        with eval_mode(encoder), torch.no_grad():
            return functional_call(encoder, dict(self.pretrained.items()), (inputs,))

    def _penalty(self, model: nn.Module) -> Tensor:
        if self._batch is None:
            raise RuntimeError(
                f"{self.name} needs the current batch: call observe(batch) before penalty() "
                "(core.training.compute_penalties and RegularizerCallback do this)."
            )
        (inputs, labels), self._batch = self._batch, None
        encoder, head = self._parts(model)
        z0 = self.pretrained_features(model, inputs)
        with torch.no_grad():
            z = encoder(inputs)
        calibrated = semantic_calibration(z0, z, labels, self.rotate, self.shift).to(z.dtype)
        return self.weight * F.cross_entropy(head(calibrated), labels)
