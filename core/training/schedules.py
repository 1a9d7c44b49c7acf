"""Per-step learning-rate schedules that follow the run's length.

``FineTuneModule``'s ``lr_scheduler`` is stepped per epoch; a run counted in optimizer steps
(``trainer.max_steps``) wants its schedule per step and sized to the run. :func:`warmup_cosine`
is the multiplier (linear warm-up, then a cosine down to a floor);
:func:`with_warmup_cosine` wraps what ``configure_optimizers`` returned so that the schedule
spans ``trainer.estimated_stepping_batches`` (``max_steps``, or the steps ``max_epochs``
amounts to), which is why a module builds it in ``configure_optimizers`` rather than taking
it from the config.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def warmup_cosine(step: int, warmup: int, total: int, floor: float = 0.1) -> float:
    """LR multiplier: linear warm-up to 1 over ``warmup`` steps, then cosine down to ``floor``
    at step ``total`` (and ``floor`` after it)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def with_warmup_cosine(
    configured: Any, warmup: int, total: int, floor: float = 0.1
) -> dict[str, Any]:
    """``configure_optimizers``' return value with a per-step :func:`warmup_cosine` schedule.

    Args:
        configured: An optimizer, or a dict holding one under ``"optimizer"``.
        warmup: Warm-up steps.
        total: Steps of the whole run (``trainer.estimated_stepping_batches``); at least
            ``warmup + 1`` is used.
        floor: The final multiplier.
    """
    optimizer = configured["optimizer"] if isinstance(configured, dict) else configured
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"expected an optimizer or {{'optimizer': ...}}, got {type(configured)}")
    total = max(warmup + 1, int(total))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup, total, floor)
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
