"""Fisher merging: a Fisher-weighted average of the models (Matena & Raffel, NeurIPS 2022).

theta = sum_k w_k F_k theta_k / sum_k w_k F_k per entry, with F_k the diagonal Fisher
information of model k, floored at ``floor`` so entries no model is informed about fall
back to the plain weighted average. :func:`fisher_for_merging` computes the ``F_k`` it
takes: a diagonal Fisher (mean squared gradient of a loss over batches) for every
floating-point tensor of the state dict. (EWC's estimator from exact per-sample gradients,
over parameters only, is :func:`core.regularizers.per_sample_fisher`.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from . import checks
from .engine import TensorJob, merge_state_dicts
from .registry import MergeMethod, register_method


def _kernel(job: TensorJob) -> None:
    floor = job.params["floor"]
    weights = job.weights
    for sl in job.chunks():
        numerator = None
        denominator = None
        for k, w in enumerate(weights):
            f = job.extra_at("fisher", k, sl).clamp_min(floor) * w
            term = f * job.model_at(k, sl)
            numerator = term if numerator is None else numerator + term
            denominator = f if denominator is None else denominator + f
        assert numerator is not None and denominator is not None
        job.write(sl, numerator / denominator)


def _check(params: dict[str, Any], model_params: list[dict[str, Any]]) -> None:
    if checks.number("fisher_merge", "floor", params["floor"]) <= 0:
        raise ValueError(f"fisher_merge: floor={params['floor']!r} must be > 0 (e.g. 1e-6).")
    checks.positive_weights("fisher_merge", model_params)


_FISHER_MERGE = register_method(
    MergeMethod(
        name="fisher_merge",
        summary="per-entry average weighted by each model's diagonal Fisher information",
        params={"floor": 1e-6},
        needs_base=False,
        extras=("fisher",),
        kernel=_kernel,
        check=_check,
    )
)


def fisher_merge(
    models: Sequence[Mapping[str, Tensor]],
    fishers: Sequence[Mapping[str, Tensor]],
    floor: float = _FISHER_MERGE.params["floor"],
    weights: Sequence[float] | None = None,
) -> dict[str, Tensor]:
    """Fisher-weighted average of ``models``.

    Args:
        models: State dicts to merge (no base needed).
        fishers: One diagonal Fisher per model with the same tensor names and shapes (for
            every floating-point tensor; zeros where unknown, e.g. buffers).
        floor: Lower bound on each Fisher entry.
        weights: Positive per-model weights (default 1 each).
    """
    return merge_state_dicts(
        "fisher_merge", models, weights=weights, extras={"fisher": fishers}, floor=floor
    )


def fisher_for_merging(
    model: nn.Module,
    batches: Iterable[Any],
    loss_fn: Callable[[nn.Module, Any], Tensor],
    max_batches: int | None = None,
) -> dict[str, Tensor]:
    """Diagonal empirical Fisher of ``model``: the mean over batches of squared gradients.

    ``loss_fn(model, batch)`` returns the batch's loss (e.g. cross-entropy against the
    labels, or against labels sampled from the model for the true Fisher). Batches of size
    one give the per-example estimate of the paper; larger batches are a cheaper
    approximation. Gradients are taken for every floating-point parameter (``requires_grad``
    is switched on for the call and restored); buffers get zeros. Keys follow
    ``model.state_dict()``.
    """
    params = dict(model.named_parameters(remove_duplicate=False))
    saved = {n: p.requires_grad for n, p in params.items()}
    squares = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    was_training = model.training
    model.eval()
    count = 0
    try:
        for p in params.values():
            p.requires_grad_(p.is_floating_point())
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            model.zero_grad(set_to_none=True)
            loss_fn(model, batch).backward()
            for n, p in params.items():
                if p.grad is not None:
                    squares[n] += p.grad.detach().float() ** 2
            count += 1
    finally:
        model.zero_grad(set_to_none=True)
        for n, p in params.items():
            p.requires_grad_(saved[n])
        model.train(was_training)
    if count == 0:
        raise ValueError("fisher_for_merging: no batches were given; pass at least one batch.")
    out = {}
    for key, value in model.state_dict().items():
        if not value.is_floating_point():
            continue
        out[key] = squares[key] / count if key in squares else torch.zeros_like(value).float()
    return out
