"""Metrics of the code app: exact per-task token means over an epoch, perplexity.

Per-batch means averaged over batches are not the token mean of the epoch when batches
hold different numbers of a task's tokens; :class:`TaskLossMeter` keeps sums and counts so
the epoch figure is the exact mean over every target token of the task.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .losses import per_task_means


class TaskLossMeter:
    """Sums and counts of per-token losses by task name, over any number of batches."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, float] = {}

    def update(self, token_losses: Tensor, task_ids: Tensor, task_names: Sequence[str]) -> None:
        """Add one batch (``task_ids`` index ``task_names``; ``-1`` is skipped)."""
        sums, counts, _ = per_task_means(token_losses.detach(), task_ids, len(task_names))
        for name, s, c in zip(task_names, sums.tolist(), counts.tolist(), strict=True):
            if c > 0:
                self.sums[name] = self.sums.get(name, 0.0) + s
                self.counts[name] = self.counts.get(name, 0.0) + c

    def means(self) -> dict[str, float]:
        """Token-mean loss per task seen."""
        return {k: self.sums[k] / self.counts[k] for k in sorted(self.sums)}

    def reset(self) -> None:
        """Forget everything (start of an epoch)."""
        self.sums.clear()
        self.counts.clear()


def perplexity(mean_token_loss: float) -> float:
    """``exp(mean negative log-likelihood per token)``."""
    return math.exp(mean_token_loss) if math.isfinite(mean_token_loss) else math.inf


def task_vector(means: dict[str, float], task_names: Sequence[str]) -> Tensor:
    """Per-task losses as a tensor in ``task_names`` order (``nan`` for absent tasks)."""
    return torch.tensor([means.get(t, math.nan) for t in task_names], dtype=torch.float64)
