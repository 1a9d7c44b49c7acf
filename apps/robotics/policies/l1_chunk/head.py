"""OpenVLA-OFT's continuous action chunk: an MLP regresses the whole chunk, trained with L1.

OpenVLA-OFT replaced token-by-token decoding with one parallel pass that outputs every action
of the chunk as a continuous value and trained it with an L1 loss, which was both faster and
more precise than 256-bin tokens. The output goes through ``tanh`` so predictions stay in the
normalised range [-1, 1] without clipping.
"""

from __future__ import annotations

import torch
from torch import Tensor

from apps.robotics.policies.base import ActionHead, mlp


class L1ChunkHead(ActionHead):
    """``tanh(MLP(features))`` reshaped to ``(B, chunk, A)``, L1 loss over unpadded steps.

    Args:
        feature_dim, action_dim, chunk_size: See :class:`ActionHead`.
        hidden_dim: Width of the MLP's hidden layers.
        layers: Hidden layers of the MLP.
    """

    name = "l1_chunk"

    def __init__(
        self,
        feature_dim: int,
        action_dim: int,
        chunk_size: int,
        hidden_dim: int = 256,
        layers: int = 2,
    ) -> None:
        super().__init__(feature_dim, action_dim, chunk_size)
        if layers < 1:
            raise ValueError(f"l1_chunk head: layers={layers} must be at least 1")
        self.net = mlp([feature_dim, *[hidden_dim] * layers, chunk_size * action_dim])

    def forward(self, features: Tensor) -> Tensor:
        """``(B, chunk, A)`` actions in (-1, 1), with gradients."""
        self.check_features(features)
        out = torch.tanh(self.net(features))
        return out.view(features.shape[0], self.chunk_size, self.action_dim)

    def loss(self, features: Tensor, actions: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        actions, valid = self.prepare_targets(features, actions, pad_mask)
        return self.masked_mean((self(features) - actions).abs(), valid)

    @torch.no_grad()
    def predict(self, features: Tensor) -> Tensor:
        return self(features)
