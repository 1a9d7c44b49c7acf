"""Model Breadcrumbs: keep the middle band of each task vector (Davari & Belilovsky, 2024).

Per tensor and per model, drop the ``top`` fraction of task-vector entries with the
largest magnitude (outliers that tend to fight other tasks) and the ``bottom`` fraction
with the smallest (noise), keep the band in between, and add
``scaling * sum_k weight_k * masked tau_k`` to the base.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from . import checks, ops
from .engine import TensorJob, merge_state_dicts
from .registry import MergeMethod, register_method
from .task_arithmetic import merge_task_vectors


def _kernel(job: TensorJob) -> None:
    n = job.numel
    tops = [ops.magnitude_rank(n, p["top"]) for p in job.model_params]
    bottoms = [ops.magnitude_rank(n, p["bottom"]) for p in job.model_params]
    # 0-based ranks in ascending magnitude: the first dropped "top" entry, the first kept.
    ks: list[int | None] = []
    for top, bottom in zip(tops, bottoms, strict=True):
        ks.append(n - top if 0 < top < n else None)
        ks.append(bottom if 0 < bottom < n else None)

    def magnitudes(sl: slice) -> list[Tensor]:
        b = job.base_at(sl)
        mags = [(job.model_at(k, sl) - b).abs() for k in range(len(job.models))]
        return [m for m in mags for _ in (0, 1)]

    found = ops.kth_smallest(magnitudes, n, ks)
    bounds = []
    for k, (top, bottom) in enumerate(zip(tops, bottoms, strict=True)):
        high = found[2 * k] if 0 < top < n else (float("inf") if top == 0 else 0.0)
        low = found[2 * k + 1] if 0 < bottom < n else (0.0 if bottom == 0 else float("inf"))
        bounds.append((low, high))

    def middle_band(k: int, sl: slice, tau: Tensor, w: float) -> Tensor:
        low, high = bounds[k]
        mag = tau.abs()
        return torch.where((mag >= low) & (mag < high), tau * w, 0.0)

    merge_task_vectors(job, job.params["scaling"], middle_band)


def _check(params: dict[str, Any], model_params: list[dict[str, Any]]) -> None:
    checks.number("breadcrumbs", "scaling", params["scaling"])
    for i, p in enumerate(model_params):
        top = checks.in_range("breadcrumbs", f"top of model {i}", p["top"], 0.0, 1.0)
        bottom = checks.in_range("breadcrumbs", f"bottom of model {i}", p["bottom"], 0.0, 1.0)
        if top + bottom > 1.0:
            raise ValueError(
                f"breadcrumbs: top={top} + bottom={bottom} for model {i} drop more than "
                "everything; their sum must be <= 1."
            )


_BREADCRUMBS = register_method(
    MergeMethod(
        name="breadcrumbs",
        summary="drop the largest-top and smallest-bottom magnitudes, sum the middle band",
        params={"top": 0.01, "bottom": 0.9, "scaling": 1.0},
        per_model=("weight", "top", "bottom"),
        kernel=_kernel,
        check=_check,
    )
)


def breadcrumbs(
    base: Mapping[str, Tensor],
    finetuned: Sequence[Mapping[str, Tensor]],
    top: float | Sequence[float] = _BREADCRUMBS.params["top"],
    bottom: float | Sequence[float] = _BREADCRUMBS.params["bottom"],
    scaling: float = _BREADCRUMBS.params["scaling"],
    weights: Sequence[float] | None = None,
) -> dict[str, Tensor]:
    """Model Breadcrumbs merge.

    Args:
        top: Fraction of largest-magnitude entries dropped per tensor (gamma; 0.01 = 1 %).
        bottom: Fraction of smallest-magnitude entries dropped per tensor (beta; 0.9 keeps
            at most the largest 10 %).
        scaling: lambda on the summed masked task vectors.
        weights: Per-model weights (default 1 each).
    """
    return merge_state_dicts(
        "breadcrumbs", finetuned, base, weights=weights, top=top, bottom=bottom, scaling=scaling
    )
