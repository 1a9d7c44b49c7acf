"""TIES-Merging: trim, elect sign, disjoint mean (Yadav et al., NeurIPS 2023).

Per tensor and per model, keep the ``density`` fraction of task-vector entries with the
largest magnitude (trim); per entry, elect the sign of the sum of the trimmed values; then
average only the entries that agree with the elected sign (disjoint mean), so that models
pulling an entry in opposite directions do not cancel out, and entries a model did not
change do not dilute the ones it did. theta = theta_pre + scaling * merged.

Weights multiply each trimmed task vector before the election, and the disjoint mean
divides by the sum of the agreeing models' weights (with unit weights: their count).
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


def disjoint_mean(values: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """Elect a sign per entry from ``sum(values)``; average (by weight) the values that agree.

    ``values`` are already weighted; an entry no model agrees on (or where the sum is
    exactly zero) merges to 0.
    """
    elected = torch.sign(sum(values))  # type: ignore[arg-type]
    numerator = torch.zeros_like(values[0])
    denominator = torch.zeros_like(values[0])
    for v, w in zip(values, weights, strict=True):
        agree = (torch.sign(v) == elected) & (v != 0)
        numerator += torch.where(agree, v, 0.0)
        denominator += agree * w
    return torch.where(denominator > 0, numerator / denominator.clamp_min(1e-30), 0.0)


def magnitude_thresholds(job: TensorJob, densities: Sequence[float]) -> list[float]:
    """Per model, the task-vector magnitude at which the top ``density`` fraction starts."""

    def magnitudes(sl: slice) -> list[Tensor]:
        b = job.base_at(sl)
        return [(job.model_at(k, sl) - b).abs() for k in range(len(job.models))]

    return ops.top_magnitude_thresholds(magnitudes, job.numel, densities)


def _kernel(job: TensorJob) -> None:
    weights = job.weights
    thresholds = magnitude_thresholds(job, [p["density"] for p in job.model_params])

    def trimmed(k: int, sl: slice, tau: Tensor, w: float) -> Tensor:
        return torch.where(tau.abs() >= thresholds[k], tau * w, 0.0)

    merge_task_vectors(
        job, job.params["scaling"], trimmed, lambda terms: disjoint_mean(terms, weights)
    )


def _check(params: dict[str, Any], model_params: list[dict[str, Any]]) -> None:
    checks.number("ties", "scaling", params["scaling"])
    checks.positive_weights("ties", model_params)
    checks.per_model_in_range("ties", "density", model_params, 0.0, 1.0)


_TIES = register_method(
    MergeMethod(
        name="ties",
        summary="trim to the top-density magnitudes, elect signs, disjoint mean (TIES)",
        params={"density": 0.2, "scaling": 1.0},
        per_model=("weight", "density"),
        kernel=_kernel,
        check=_check,
    )
)


def ties(
    base: Mapping[str, Tensor],
    finetuned: Sequence[Mapping[str, Tensor]],
    density: float | Sequence[float] = _TIES.params["density"],
    scaling: float = _TIES.params["scaling"],
    weights: Sequence[float] | None = None,
) -> dict[str, Tensor]:
    """TIES-merge ``finetuned`` onto ``base``.

    Args:
        base: Pre-trained state dict.
        finetuned: Fine-tuned state dicts of the same architecture.
        density: Fraction of each task vector's entries kept per tensor (one value, or one
            per model); 0.2 keeps the 20 % largest magnitudes.
        scaling: lambda, applied to the merged task vector (1.0 in the paper's default).
        weights: Positive per-model weights (default 1 each).
    """
    return merge_state_dicts(
        "ties", finetuned, base, weights=weights, density=density, scaling=scaling
    )
