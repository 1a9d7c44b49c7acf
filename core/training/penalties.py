"""How a list of regularizers turns into penalty terms for one training step.

One job, shared by everything that trains with regularizers: ``FineTuneModule`` (its own
``regularizers`` and those a callback attaches), ``core.regularizers.RegularizerCallback``
and plain PyTorch loops such as ``core.continual.experiment``. Keeping it in one place means the
rules below hold everywhere:

- a regularizer with ``observe(batch)`` sees the training batch before ``penalty`` is asked
  (LwF and DR-Tune need the inputs of the step);
- a regularizer whose ``ready`` attribute is false (it has not been ``update``-d after a
  task yet: nothing to protect) contributes an exact zero and its ``penalty`` is not called
  (calling it directly raises a clear error instead);
- names are the ``name`` attribute or the class name, numbered when repeated, so the logs
  read ``train/reg/EWC``, ``train/reg/LwF_0``, ``train/reg/LwF_1``;
- stage hooks ``on_train_start(model)`` / ``on_train_end(model)`` (Half Fine-Tuning freezes
  and restores its half there) run through :func:`start_stage` / :func:`end_stage`.

Only duck typing is used here, so ``core.training`` does not import ``core.regularizers``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn


def penalty_names(regularizers: Sequence[Any]) -> list[str]:
    """Logged names: a ``name`` attribute or the class name, numbered when repeated."""
    base = [str(getattr(r, "name", None) or type(r).__name__) for r in regularizers]
    names: list[str] = []
    for i, name in enumerate(base):
        names.append(f"{name}_{base[:i].count(name)}" if base.count(name) > 1 else name)
    return names


def is_ready(regularizer: Any) -> bool:
    """Whether ``regularizer`` has state to penalize against (objects without ``ready``: yes)."""
    return bool(getattr(regularizer, "ready", True))


def compute_penalties(
    regularizers: Sequence[Any],
    model: nn.Module,
    batch: Any = None,
    names: Sequence[str] | None = None,
) -> dict[str, Tensor]:
    """Each regularizer's penalty on ``model`` for one step, keyed by logged name.

    Args:
        regularizers: Objects with ``penalty(model) -> Tensor``; optionally ``observe(batch)``
            and a ``ready`` property.
        model: The network the penalties are computed on (``FineTuneModule.model``).
        batch: The current training batch, handed to ``observe`` first; ``None`` skips that.
        names: Precomputed names (default :func:`penalty_names`).

    Regularizers that are not ready yield a zero scalar on the model's device, so the
    logged value is an honest 0 during the first task of a continual run.
    """
    names = list(names) if names is not None else penalty_names(regularizers)
    if len(names) != len(regularizers):
        raise ValueError(f"got {len(names)} names for {len(regularizers)} regularizers.")
    device = _device_of(model)
    out: dict[str, Tensor] = {}
    for name, reg in zip(names, regularizers, strict=True):
        if not is_ready(reg):
            out[name] = torch.zeros((), device=device)
            continue
        if batch is not None and callable(getattr(reg, "observe", None)):
            reg.observe(batch)
        out[name] = reg.penalty(model)
    return out


def start_stage(regularizers: Sequence[Any], model: nn.Module) -> None:
    """Call ``on_train_start(model)`` on every regularizer that has it (before training)."""
    for reg in regularizers:
        if callable(getattr(reg, "on_train_start", None)):
            reg.on_train_start(model)


def end_stage(regularizers: Sequence[Any], model: nn.Module) -> None:
    """Call ``on_train_end(model)`` on every regularizer that has it (after training).

    The hooks are idempotent, so calling this twice (module, then a callback that updates
    the regularizers) is safe.
    """
    for reg in regularizers:
        if callable(getattr(reg, "on_train_end", None)):
            reg.on_train_end(model)


def _device_of(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")
