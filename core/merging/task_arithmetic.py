"""Task vectors and task arithmetic: theta = theta_pre + lambda * sum_k w_k tau_k.

A task vector is what fine-tuning changed, tau_k = theta_k - theta_pre (Ilharco et al.,
"Editing models with task arithmetic", 2023). Adding several task vectors to the base
merges the tasks; a negative weight removes one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

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


#: ``term(k, sl, tau_k, w_k)``: model ``k``'s contribution to the merged task vector on the
#: flat positions ``sl``, from its task vector ``tau_k`` there and its weight ``w_k``.
TaskTerm = Callable[[int, slice, Tensor, float], Tensor]


def merge_task_vectors(
    job: TensorJob,
    scaling: float,
    term: TaskTerm,
    combine: Callable[[list[Tensor]], Tensor] | None = None,
) -> None:
    """Write ``base + scaling * merged`` for one tensor, chunk by chunk: the task-vector merge
    shared by task arithmetic, LiNeS, TIES, DARE, Breadcrumbs and ComPEFT.

    ``merged`` is ``sum_k term(k, sl, tau_k, w_k)`` (added up one model at a time), or, with
    ``combine``, ``combine([term(0, ...), term(1, ...), ...])`` (TIES's disjoint mean, which
    needs every model's term at once). ``tau_k`` is ``model_k - base`` on the chunk, in the
    compute dtype.
    """
    weights = job.weights
    for sl in job.chunks():
        b = job.base_at(sl)
        if combine is None:
            merged = torch.zeros_like(b)
            for k, w in enumerate(weights):
                merged += term(k, sl, job.model_at(k, sl) - b, w)
        else:
            merged = combine(
                [term(k, sl, job.model_at(k, sl) - b, w) for k, w in enumerate(weights)]
            )
        job.write(sl, b + scaling * merged)


def _weighted(k: int, sl: slice, tau: Tensor, w: float) -> Tensor:
    return w * tau


def write_scaled_task_sum(job: TensorJob, scaling: float) -> None:
    """Write base + scaling * sum_k w_k (model_k - base) for one tensor, chunk by chunk."""
    merge_task_vectors(job, scaling, _weighted)


def _kernel(job: TensorJob) -> None:
    write_scaled_task_sum(job, job.params["scaling"])


_TASK_ARITHMETIC = register_method(
    MergeMethod(
        name="task_arithmetic",
        summary="theta_pre + scaling * sum_k weight_k (theta_k - theta_pre)",
        params={"scaling": 1.0},
        kernel=_kernel,
        check=checks.numbers("task_arithmetic", "scaling"),
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
