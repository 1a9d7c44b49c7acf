"""A tiny encoder + head classifier and blob data shared by the regularizer tests."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class EncoderHead(nn.Module):
    """``encoder = Linear(6, 8) + ReLU``, ``head = Linear(8, 3)``: what DR-Tune expects."""

    def __init__(self, seed: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))


def blobs(n: int = 48, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Three Gaussian blobs in 6-d (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, 6, generator=gen) * 3
    y = torch.arange(n) % 3
    return centers[y] + torch.randn(n, 6, generator=gen), y


def batches(x: Tensor, y: Tensor, size: int = 16) -> list[tuple[Tensor, Tensor]]:
    """``(x, y)`` split into consecutive batches."""
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(y), size)]


def sgd_steps(model: nn.Module, x: Tensor, y: Tensor, steps: int = 5, lr: float = 0.5) -> None:
    """Move the parameters: a few plain SGD steps of cross-entropy on ``(x, y)``."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
