"""What every action head shares: its sizes, the padding-aware mean, and input checks.

A head maps the encoder's feature vector ``(B, F)`` to a chunk of ``chunk_size`` future
actions ``(B, chunk_size, action_dim)``, all on the normalised scale (each dimension's
q01..q99 mapped to [-1, 1] and clipped). Training chunks that run past the end of an episode
are padded (LeRobot's ``action_is_pad``); those steps carry no target and are left out of
every loss, and their values are replaced by 0 before use so that whatever the padding holds
(a repeated last action, NaN) cannot leak into the loss.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn


class ActionHead(nn.Module):
    """Base of the action heads: ``loss(features, actions, pad_mask)`` and ``predict``.

    Args:
        feature_dim: Size ``F`` of the encoder's feature vector.
        action_dim: Action dimensions ``A``.
        chunk_size: Future actions predicted at once.
    """

    #: The registry name (``POLICY_HEADS``) of the head.
    name: str = ""

    def __init__(self, feature_dim: int, action_dim: int, chunk_size: int) -> None:
        super().__init__()
        for label, value in (
            ("feature_dim", feature_dim),
            ("action_dim", action_dim),
            ("chunk_size", chunk_size),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{label} must be a positive integer; got {value!r}")
        self.feature_dim, self.action_dim, self.chunk_size = feature_dim, action_dim, chunk_size

    # ------------------------------------------------------------------ checks
    def check_features(self, features: Tensor) -> None:
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(
                f"{self.name} head: features must be (B, {self.feature_dim}); got shape "
                f"{tuple(features.shape)}"
            )

    def prepare_targets(
        self, features: Tensor, actions: Tensor, pad_mask: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Checked ``(actions with padded steps zeroed, valid (B, chunk, 1) float mask)``."""
        self.check_features(features)
        want = (features.shape[0], self.chunk_size, self.action_dim)
        if tuple(actions.shape) != want:
            raise ValueError(
                f"{self.name} head: actions must be (B, chunk_size, action_dim) = {want}; got "
                f"shape {tuple(actions.shape)}"
            )
        if pad_mask is None:
            pad_mask = torch.zeros(want[:2], dtype=torch.bool, device=actions.device)
        if tuple(pad_mask.shape) != want[:2]:
            raise ValueError(
                f"{self.name} head: pad_mask must be (B, chunk_size) = {want[:2]} (True where "
                f"the step is padding); got shape {tuple(pad_mask.shape)}"
            )
        pad = pad_mask.to(device=actions.device, dtype=torch.bool).unsqueeze(-1)
        actions = actions.to(features.dtype).masked_fill(pad, 0.0)
        return actions, (~pad).to(features.dtype)

    @staticmethod
    def masked_mean(per_value: Tensor, valid: Tensor) -> Tensor:
        """Mean of ``per_value`` (B, chunk, A) over the valid steps (``valid`` (B, chunk, 1))."""
        total = (per_value * valid).sum()
        count = valid.sum() * per_value.shape[-1]
        return total / count.clamp(min=1.0)

    # ------------------------------------------------------------------ the interface
    def loss(
        self, features: Tensor, actions: Tensor, pad_mask: Tensor | None = None
    ) -> Tensor:  # pragma: no cover - abstract
        """Scalar training loss of normalised ``actions`` (B, chunk, A), padded steps left out."""
        raise NotImplementedError

    def predict(self, features: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Normalised action chunks ``(B, chunk, A)`` in [-1, 1]."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (
            f"feature_dim={self.feature_dim}, action_dim={self.action_dim}, "
            f"chunk_size={self.chunk_size}"
        )


def mlp(sizes: list[int], activation: type[nn.Module] = nn.GELU) -> nn.Sequential:
    """Linear layers of the given sizes with ``activation`` between them (not after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)
