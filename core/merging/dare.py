"""DARE: drop a random fraction of each task vector and rescale the rest (Yu et al., 2024).

Each entry of tau_k is dropped with probability ``drop_rate`` (p); survivors are rescaled
so the merged task vector is unbiased: E[mask * r] = 1 with r = 1 / (1 - p), the
"standard" rescale. At high p (0.9 and above) that factor over-amplifies the survivors;
DAREx ("DARE the extreme", Deng et al., 2025) instead tunes the rescale. Here ``rescale``
is ``"standard"`` (1/(1-p)), ``"none"`` (1) or a number q meaning divide by q (DAREx-q;
q = 1 - p is the standard case); :func:`tune_rescale` picks q by a held-out score.

With ``sign_election=True`` the dropped-and-rescaled vectors are combined by TIES's sign
election and disjoint mean (DARE-TIES) instead of summed (DARE-linear).

Masks come from ``seed`` (per tensor, per model, per position; see ``ops.uniform_noise``):
the same seed gives the same merge on any machine and with any chunking.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from . import checks, ops
from .engine import TensorJob, merge_state_dicts
from .registry import MergeMethod, register_method
from .task_arithmetic import merge_task_vectors
from .ties import disjoint_mean


def rescale_factor(drop_rate: float, rescale: str | float) -> float:
    """The factor survivors are multiplied by: 1/(1-p), 1, or 1/q."""
    if rescale == "standard":
        return 0.0 if drop_rate >= 1.0 else 1.0 / (1.0 - drop_rate)
    if rescale == "none":
        return 1.0
    return 1.0 / float(rescale)


def _kernel(job: TensorJob) -> None:
    weights = job.weights
    rates = [p["drop_rate"] for p in job.model_params]
    factors = [rescale_factor(p, job.params["rescale"]) for p in rates]
    seeds = [job.model_seed(k) for k in range(len(job.models))]

    def kept(k: int, sl: slice, tau: Tensor, w: float) -> Tensor:
        keep = ops.uniform_noise(seeds[k], job.numel, sl).to(tau.dtype) >= rates[k]
        return tau * keep * (w * factors[k])

    def elect(terms: list[Tensor]) -> Tensor:
        return disjoint_mean(terms, weights)

    merge_task_vectors(
        job, job.params["scaling"], kept, elect if job.params["sign_election"] else None
    )


def _check(params: dict[str, Any], model_params: list[dict[str, Any]]) -> None:
    checks.number("dare", "scaling", params["scaling"])
    checks.per_model_in_range("dare", "drop_rate", model_params, 0.0, 1.0)
    rescale = params["rescale"]
    if isinstance(rescale, str):
        if rescale not in ("standard", "none"):
            raise ValueError(
                f"dare: rescale={rescale!r} must be 'standard' (1/(1-p)), 'none', or a number "
                "q in (0, 1] that survivors are divided by (DAREx-q)."
            )
    else:
        checks.in_range("dare", "rescale", rescale, 0.0, 1.0, low_open=True)
    if not isinstance(params["sign_election"], bool):
        raise ValueError(f"dare: sign_election={params['sign_election']!r} must be true or false.")
    if params["sign_election"]:
        checks.positive_weights("dare", model_params)


_DARE = register_method(
    MergeMethod(
        name="dare",
        summary="drop task-vector entries at random (seeded), rescale the rest, sum (or TIES)",
        params={"drop_rate": 0.9, "scaling": 1.0, "rescale": "standard", "sign_election": False},
        per_model=("weight", "drop_rate"),
        stochastic=True,
        kernel=_kernel,
        check=_check,
    )
)


def dare(
    base: Mapping[str, Tensor],
    finetuned: Sequence[Mapping[str, Tensor]],
    drop_rate: float | Sequence[float] = _DARE.params["drop_rate"],
    scaling: float = _DARE.params["scaling"],
    seed: int = 0,
    rescale: str | float = _DARE.params["rescale"],
    sign_election: bool = _DARE.params["sign_election"],
    weights: Sequence[float] | None = None,
) -> dict[str, Tensor]:
    """DARE-merge ``finetuned`` onto ``base``.

    Args:
        drop_rate: p, the probability an entry is dropped (one value or one per model).
        scaling: lambda on the merged task vector.
        seed: Seed of the random masks.
        rescale: ``"standard"`` (1/(1-p)), ``"none"`` or q in (0, 1] (divide by q: DAREx-q).
        sign_election: Combine with TIES's sign election (DARE-TIES) instead of a sum.
        weights: Per-model weights (default 1 each).
    """
    return merge_state_dicts(
        "dare",
        finetuned,
        base,
        weights=weights,
        seed=seed,
        drop_rate=drop_rate,
        scaling=scaling,
        rescale=rescale,
        sign_election=sign_election,
    )


@dataclass
class RescaleSearch:
    """Result of :func:`tune_rescale`: the best q, its score, and every q tried."""

    best: float
    best_score: float
    scores: dict[float, float]
    state_dict: dict[str, Tensor]


def tune_rescale(
    base: Mapping[str, Tensor],
    finetuned: Sequence[Mapping[str, Tensor]],
    score_fn: Callable[[Mapping[str, Tensor]], float],
    drop_rate: float = _DARE.params["drop_rate"],
    candidates: Sequence[float] | None = None,
    scaling: float = _DARE.params["scaling"],
    seed: int = 0,
    weights: Sequence[float] | None = None,
) -> RescaleSearch:
    """DAREx-q: pick the rescale q (survivors divided by q) with the best held-out score.

    ``score_fn(state_dict)`` returns a number where higher is better (accuracy, minus a
    loss). ``candidates`` default to 1 - p and a grid around it. Every candidate uses the
    same ``seed``, so they differ only in q.
    """
    if candidates is None:
        keep = 1.0 - drop_rate
        candidates = sorted({min(1.0, round(keep * f, 6)) for f in (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)})
    scores: dict[float, float] = {}
    best: tuple[float, float, dict[str, Tensor]] | None = None
    for q in candidates:
        merged = dare(base, finetuned, drop_rate, scaling, seed, rescale=float(q), weights=weights)
        score = float(score_fn(merged))
        scores[float(q)] = score
        if best is None or score > best[1]:
            best = (float(q), score, merged)
    if best is None:
        raise ValueError("tune_rescale: candidates is empty; give at least one q in (0, 1].")
    return RescaleSearch(best=best[0], best_score=best[1], scores=scores, state_dict=best[2])
