"""The two standard robustness plots: the ID-vs-OOD frontier and reliability diagrams.

Each ``*_figure`` function returns a matplotlib ``Figure`` (made without pyplot, so no global
figure state is touched): a run hands it to ``report.md`` through
:class:`core.training.report.TestReport`, the benchmark saves it with :func:`save_figure`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from core.atomic import atomic_write

from .metrics import EffectiveRobustness, expected_calibration_error, reliability_bins

__all__ = ["frontier_figure", "reliability_figure", "save_figure"]


def save_figure(figure: Any, path: str | Path) -> Path:
    """Write ``figure`` as a PNG at ``path``, atomically."""
    return atomic_write(
        path, lambda tmp: figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    )


def frontier_figure(
    points: Sequence[Mapping[str, Any]],
    curve: Sequence[Mapping[str, Any]] | None = None,
    fit: EffectiveRobustness | None = None,
    title: str = "ID vs OOD accuracy",
) -> Any:
    """Scatter of (ID, average OOD) accuracy per model, the WiSE-FT curve and the ER fit.

    ``points``: dicts with ``name``, ``id``, ``ood``; ``curve``: dicts with ``alpha``,
    ``id``, ``ood`` in alpha order; ``fit``: the effective-robustness baseline line.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    if curve:
        ax.plot(
            [c["id"] for c in curve],
            [c["ood"] for c in curve],
            "-o",
            ms=3,
            color="C1",
            label="WiSE-FT (alpha 0..1)",
        )
        for c in curve[:: max(1, len(curve) // 5)]:
            ax.annotate(f"{c['alpha']:.1f}", (c["id"], c["ood"]), fontsize=7)
    for k, p in enumerate(points):
        ax.scatter(p["id"], p["ood"], color=f"C{(k + 2) % 10}", label=p["name"], zorder=3)
    if fit is not None:
        xs = [min(p["id"] for p in points), max(p["id"] for p in points)]
        grid = [xs[0] + (xs[1] - xs[0]) * t / 50 for t in range(51)]
        ax.plot(
            grid,
            [fit.predict(g) for g in grid],
            "--",
            color="gray",
            lw=1,
            label="baseline fit (logit)",
        )
    ax.set_xlabel("ID accuracy")
    ax.set_ylabel("average OOD accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return fig


def reliability_figure(curves: Mapping[str, tuple[Tensor, Tensor]], n_bins: int = 15) -> Any:
    """Reliability diagrams (accuracy vs confidence per bin), one panel per model.

    ``curves``: ``{model name: (probs (N, C), labels (N,))}``.
    """
    from matplotlib.figure import Figure

    n = max(1, len(curves))
    fig = Figure(figsize=(3.2 * n, 3.2))
    axes = fig.subplots(1, n, squeeze=False)
    centers = (torch.arange(n_bins) + 0.5) / n_bins
    for ax, (name, (probs, labels)) in zip(axes[0], curves.items(), strict=False):
        count, acc, _ = reliability_bins(probs, labels, n_bins)
        ece = expected_calibration_error(probs, labels, n_bins)
        mask = count > 0
        ax.bar(centers[mask], acc[mask], width=1 / n_bins, edgecolor="k", lw=0.5)
        ax.plot([0, 1], [0, 1], "--", color="gray")
        ax.set_title(f"{name}\nECE {ece:.3f}", fontsize=9)
        ax.set_xlabel("confidence")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("accuracy")
    return fig
