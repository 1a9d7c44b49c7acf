"""OpenVLA-style action tokens: each action dimension of each chunk step is one of 256 bins.

OpenVLA discretises every normalised action dimension into 256 uniform bins over [-1, 1] and
trains its language model to predict the bin index with cross-entropy, like a word. Here an
MLP turns the feature vector into one small embedding per (step, dimension) slot, and one
classifier shared by all slots (as OpenVLA's output embedding is shared by all positions)
gives ``(B, chunk, A, bins)`` logits. Targets come from
:class:`apps.robotics.actions.ActionTokenizer` ``(low=-1, high=1, bins)``, so the bins here
are exactly the tokenizer's.

Decoding: ``decode="argmax"`` (the default, OpenVLA's greedy decoding) returns the centre of
the most likely bin, within half a bin of the target once the head is right; the alternative
``"expected"`` returns the softmax-weighted mean of the bin centres, which is smoother but
averages two modes (push left / push right) into a third action no demonstration took.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from apps.robotics.actions import ActionTokenizer
from apps.robotics.policies.base import ActionHead, mlp

DECODES = ("argmax", "expected")


class TokenHead(ActionHead):
    """Per-slot bin logits ``(B, chunk, A, bins)``, cross-entropy, greedy decoding.

    Args:
        feature_dim, action_dim, chunk_size: See :class:`ActionHead`.
        bins: Bins per action dimension over [-1, 1] (256 in OpenVLA).
        hidden_dim: Width of the MLP.
        token_dim: Size of each slot's embedding fed to the shared bin classifier.
        decode: ``"argmax"`` (bin centre of the most likely bin) or ``"expected"``.
        label_smoothing: Cross-entropy label smoothing (0 = none, as OpenVLA).
    """

    name = "tokens"

    def __init__(
        self,
        feature_dim: int,
        action_dim: int,
        chunk_size: int,
        bins: int = 256,
        hidden_dim: int = 256,
        token_dim: int = 64,
        decode: str = "argmax",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(feature_dim, action_dim, chunk_size)
        if decode not in DECODES:
            raise ValueError(f"tokens head: decode={decode!r} must be one of {DECODES}")
        self.tokenizer = ActionTokenizer(
            low=[-1.0] * action_dim, high=[1.0] * action_dim, bins=bins
        )
        self.bins, self.token_dim, self.decode = bins, token_dim, decode
        self.label_smoothing = float(label_smoothing)
        self.slots = nn.Sequential(
            mlp([feature_dim, hidden_dim, chunk_size * action_dim * token_dim]), nn.GELU()
        )
        self.classifier = nn.Linear(token_dim, bins)
        # Bin centres from the tokenizer itself (identical for every dimension over [-1, 1]).
        every_bin = torch.arange(bins)[:, None].expand(bins, action_dim).numpy()
        centres = torch.from_numpy(self.tokenizer.decode(every_bin))[:, 0].clone()
        self.register_buffer("centres", centres, persistent=False)

    def logits(self, features: Tensor) -> Tensor:
        """``(B, chunk, A, bins)`` bin logits."""
        self.check_features(features)
        slots = self.slots(features).view(
            features.shape[0], self.chunk_size, self.action_dim, self.token_dim
        )
        return self.classifier(slots)

    def tokens(self, actions: Tensor) -> Tensor:
        """Bin indices of normalised ``actions`` (any shape ending in A) via the tokenizer."""
        tokens = self.tokenizer.encode(actions.detach().float().cpu().numpy())
        return torch.from_numpy(tokens).to(actions.device)

    def loss(self, features: Tensor, actions: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        actions, valid = self.prepare_targets(features, actions, pad_mask)
        logits = self.logits(features)
        per_value = F.cross_entropy(
            logits.flatten(0, 2).float(),
            self.tokens(actions).flatten(),
            reduction="none",
            label_smoothing=self.label_smoothing,
        ).view(actions.shape)
        return self.masked_mean(per_value, valid)

    @torch.no_grad()
    def predict(self, features: Tensor) -> Tensor:
        logits = self.logits(features).float()
        if self.decode == "argmax":
            return self.centres[logits.argmax(dim=-1)]
        return logits.softmax(dim=-1) @ self.centres
