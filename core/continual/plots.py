"""A heat map of the accuracy matrix, written atomically as PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from core.atomic import atomic_write

__all__ = ["plot_accuracy_matrix"]


def plot_accuracy_matrix(
    R: Sequence[Sequence[float]] | np.ndarray,
    task_names: Sequence[str],
    path: str | Path,
    title: str = "accuracy after each task",
) -> Path:
    """Draw ``R`` (rows: after training task i; columns: evaluated on task j) to ``path``.

    Partial matrices (fewer rows than tasks) and ``nan`` cells are drawn blank. Uses a
    bare ``Figure`` (no pyplot state), so it is safe in any process.
    """
    m = np.asarray(R, dtype=np.float64)
    if m.ndim != 2 or m.shape[1] != len(task_names):
        raise ValueError(
            f"R of shape {m.shape} does not match {len(task_names)} task names; pass one "
            "name per column."
        )
    full = np.full((len(task_names), len(task_names)), np.nan)
    full[: m.shape[0], : m.shape[1]] = m
    size = 1.2 + 0.7 * len(task_names)
    fig = Figure(figsize=(size + 1.0, size))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(full), vmin=0.0, vmax=1.0, cmap="viridis")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    for (i, j), value in np.ndenumerate(full):
        if np.isfinite(value):
            color = "black" if value > 0.6 else "white"
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color=color, fontsize=8)
    ticks = range(len(task_names))
    ax.set_xticks(ticks, labels=list(task_names), rotation=45, ha="right")
    ax.set_yticks(ticks, labels=[f"after {n}" for n in task_names])
    ax.set_xlabel("evaluated on")
    ax.set_title(title)
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
