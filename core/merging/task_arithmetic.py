"""Task vectors and task arithmetic: theta = theta_pre + lambda * sum_k w_k tau_k.

A task vector is what fine-tuning changed, tau_k = theta_k - theta_pre (Ilharco et al.,
"Editing models with task arithmetic", 2023). Adding several task vectors to the base
merges the tasks; a negative weight removes one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from . import checks
from .engine import TensorJob, check_compatible, merge_state_dicts
from .registry import MergeMethod, register_method
from .sources import DictSource


def task_vector(base: Mapping[str, Tensor], finetuned: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """tau = finetuned - base for every floating-point tensor (others are left out).

    Computed in float32 (float64 for float64 inputs) and kept in that dtype, since a
    difference of two bf16 weights is not exactly representable in bf16.
    """
    check_compatible(DictSource(base, "the base"), [DictSource(finetuned, "the fine-tuned model")])
    out = {}
    for key, b in base.items():
        if b.is_floating_point():
            dt = (
                torch.float64 if torch.float64 in (b.dtype, finetuned[key].dtype) else torch.float32
            )
            out[key] = finetuned[key].detach().to(dt) - b.detach().to(dt)
    return out


def apply_task_vector(
    base: Mapping[str, Tensor], tau: Mapping[str, Tensor], scaling: float = 1.0
) -> dict[str, Tensor]:
    """theta = base + scaling * tau, in the base's dtypes; tensors without tau are copied."""
    out = {}
    for key, b in base.items():
        if key in tau:
            out[key] = (b.float() + scaling * tau[key].float()).to(b.dtype)
        else:
            out[key] = b.detach().clone()
    unknown = sorted(set(tau) - set(base))
    if unknown:
        raise ValueError(
            f"task vector tensor {unknown[0]!r} is not in the base; apply it to the base it "
            "was computed from."
        )
    return out


def write_scaled_task_sum(job: TensorJob, scaling: float) -> None:
    """Write base + scaling * sum_k w_k (model_k - base) for one tensor, chunk by chunk."""
    weights = job.weights
    for sl in job.chunks():
        b = job.base_at(sl)
        total = torch.zeros_like(b)
        for k, w in enumerate(weights):
            total += w * (job.model_at(k, sl) - b)
        job.write(sl, b + scaling * total)


def _kernel(job: TensorJob) -> None:
    write_scaled_task_sum(job, job.params["scaling"])


def _check(params: dict[str, Any], model_params: list[dict[str, Any]]) -> None:
    checks.number("task_arithmetic", "scaling", params["scaling"])


_TASK_ARITHMETIC = register_method(
    MergeMethod(
        name="task_arithmetic",
        summary="theta_pre + scaling * sum_k weight_k (theta_k - theta_pre)",
        params={"scaling": 1.0},
        kernel=_kernel,
        check=_check,
    )
)


def task_arithmetic(
    base: Mapping[str, Tensor],
    finetuned: Sequence[Mapping[str, Tensor]],
    scaling: float = _TASK_ARITHMETIC.params["scaling"],
    weights: Sequence[float] | None = None,
) -> dict[str, Tensor]:
    """Task arithmetic: base + scaling * sum_k weights[k] * (finetuned[k] - base).

    ``scaling`` is the paper's lambda (0.3-0.5 is typical when adding several tasks);
    ``weights`` (default 1 each) may be negative to subtract a task.
    """
    return merge_state_dicts("task_arithmetic", finetuned, base, weights=weights, scaling=scaling)
