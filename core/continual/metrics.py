"""Continual-learning metrics as pure functions of the accuracy matrix ``R``.

``R[i][j]`` is the accuracy on task ``j`` after training task ``i`` (0-based). A finished
run of ``T`` tasks gives a ``T x T`` matrix; during a run, after ``k`` tasks, ``R`` has
``k`` rows and still ``T`` columns (the runner evaluates every task, seen or not), or ``k``
columns when only seen tasks were evaluated. Every function below reads the *last* row as
"now", so it works on such partial matrices: ``k <= T`` rows are required.

With ``k`` rows and ``c = k - 1`` the index of the last trained task:

- ``average_accuracy``: ``mean_{j<=c} R[c][j]`` (tasks seen so far);
- ``backward_transfer`` (Lopez-Paz & Ranzato, 2017): ``mean_{j<c} (R[c][j] - R[j][j])``;
- ``forgetting`` (max-based, Chaudhry et al., 2018): ``mean_{j<c} (max_{i<c} R[i][j] -
  R[c][j])``, the max taken over every earlier row as in METHODS.md;
- ``forgetting_last``: ``mean_{j<c} (R[j][j] - R[c][j])`` (= ``-backward_transfer``);
- ``forward_transfer(R, b)``: ``mean_{1<=j<=min(c+1, T-1)} (R[j-1][j] - b[j])``, ``b[j]``
  the accuracy on task ``j`` before any training;
- ``average_incremental_accuracy``: ``mean_{i<=c} mean_{j<=i} R[i][j]``.

Quantities that need an earlier task (BWT, forgetting with one row; forward transfer with
no ``R[j-1][j]`` yet) are ``nan``: undefined, not zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "average_accuracy",
    "average_incremental_accuracy",
    "backward_transfer",
    "forgetting",
    "forgetting_last",
    "forward_transfer",
    "summary",
]

Matrix = Sequence[Sequence[float]] | np.ndarray


def _matrix(R: Matrix) -> np.ndarray:
    try:
        m = np.asarray(R, dtype=np.float64)
    except ValueError as err:
        raise ValueError(
            "accuracy matrix R must be rectangular (k rows of T numbers); ragged rows found. "
            "Fill cells that were not evaluated with nan."
        ) from err
    if m.ndim != 2 or m.shape[0] < 1:
        raise ValueError(
            f"accuracy matrix R must be 2-D with at least one row; got shape {m.shape}."
        )
    if m.shape[0] > m.shape[1]:
        raise ValueError(
            f"accuracy matrix R has {m.shape[0]} rows but {m.shape[1]} columns; R[i][j] is "
            "the accuracy on task j after training task i, so rows (tasks trained) cannot "
            "outnumber columns (tasks)."
        )
    return m


def average_accuracy(R: Matrix) -> float:
    """Mean accuracy over the tasks seen so far, after the last trained task."""
    m = _matrix(R)
    c = m.shape[0] - 1
    return float(m[c, : c + 1].mean())


def backward_transfer(R: Matrix) -> float:
    """Mean change on earlier tasks since each was learned (negative = forgetting)."""
    m = _matrix(R)
    c = m.shape[0] - 1
    if c == 0:
        return math.nan
    idx = np.arange(c)
    return float((m[c, idx] - m[idx, idx]).mean())


def forgetting(R: Matrix) -> float:
    """Max-based forgetting: best earlier accuracy minus current, mean over earlier tasks."""
    m = _matrix(R)
    c = m.shape[0] - 1
    if c == 0:
        return math.nan
    return float((m[:c, :c].max(axis=0) - m[c, :c]).mean())


def forgetting_last(R: Matrix) -> float:
    """Accuracy right after learning each earlier task minus current accuracy, mean.

    That is exactly ``-backward_transfer(R)`` (the same mean, sign flipped); it has its own
    name because papers report it as a forgetting figure, next to the max-based one.
    """
    return 0.0 - backward_transfer(R)  # not -x: a run that changed nothing gives 0.0, not -0.0


def forward_transfer(R: Matrix, baseline: Sequence[float] | np.ndarray) -> float:
    """Mean gain on each task from training on the previous ones, over the untrained model."""
    m = _matrix(R)
    b = np.asarray(baseline, dtype=np.float64)
    if b.shape != (m.shape[1],):
        raise ValueError(
            f"forward_transfer baseline must hold one accuracy per task ({m.shape[1]}); got "
            f"shape {b.shape}. Evaluate every task once before training."
        )
    last = min(m.shape[0], m.shape[1] - 1)
    if last < 1:
        return math.nan
    j = np.arange(1, last + 1)
    return float((m[j - 1, j] - b[j]).mean())


def average_incremental_accuracy(R: Matrix) -> float:
    """Mean over steps ``i`` of the average accuracy on tasks ``0..i`` after task ``i``."""
    m = _matrix(R)
    return float(np.mean([m[i, : i + 1].mean() for i in range(m.shape[0])]))


def summary(R: Matrix, baseline: Sequence[float] | None = None) -> dict[str, Any]:
    """Every metric above by name (``forward_transfer`` only with a baseline)."""
    out = {
        "average_accuracy": average_accuracy(R),
        "backward_transfer": backward_transfer(R),
        "forgetting": forgetting(R),
        "forgetting_last": forgetting_last(R),
        "average_incremental_accuracy": average_incremental_accuracy(R),
    }
    if baseline is not None:
        out["forward_transfer"] = forward_transfer(R, baseline)
    return out
