"""Weight averaging of fine-tuned models: uniform and greedy soups, WiSE-FT interpolation.

- Model soups (Wortsman et al., ICML 2022): average models fine-tuned from the same
  initialisation. The uniform soup averages all; the greedy soup sorts the models by their
  held-out score and adds one to the soup only if the held-out score of the average does
  not drop, so it never scores below the best single model (ViT-G/14 soup: 90.94 % top-1 on
  ImageNet in the paper).
- WiSE-FT (Wortsman et al., CVPR 2022): (1 - alpha) * theta_zeroshot + alpha * theta_ft
  trades in-distribution accuracy (alpha -> 1) for robustness (alpha -> 0).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from . import checks, ops
from .engine import TensorJob, merge_state_dicts
from .registry import REQUIRED, MergeMethod, register_method

ScoreFn = Callable[[Mapping[str, Tensor]], float]


# ------------------------------------------------------------------------------ uniform soup
def _uniform_kernel(job: TensorJob) -> None:
    weights = job.weights
    total_weight = sum(weights)
    for sl in job.chunks():
        total = None
        for k, w in enumerate(weights):
            term = job.model_at(k, sl) * w
            total = term if total is None else total + term
        assert total is not None
        job.write(sl, total / total_weight)


def _check_uniform(params: dict[str, Any], model_params: list[dict[str, Any]]) -> None:
    checks.positive_weights("uniform_soup", model_params)


register_method(
    MergeMethod(
        name="uniform_soup",
        summary="(weighted) mean of the models",
        needs_base=False,
        kernel=_uniform_kernel,
        check=_check_uniform,
    )
)


def uniform_soup(
    models: Sequence[Mapping[str, Tensor]], weights: Sequence[float] | None = None
) -> dict[str, Tensor]:
    """The mean of ``models`` (weighted by positive ``weights``, normalised to sum to 1)."""
    return merge_state_dicts("uniform_soup", models, weights=weights)


# ------------------------------------------------------------------------------- greedy soup
@dataclass
class GreedySoup:
    """What :func:`greedy_soup_search` found.

    Attributes:
        state_dict: The soup (mean of the ingredients).
        ingredients: Indices of the models in the soup, in the order they were added.
        scores: Each model's own held-out score.
        soup_score: Held-out score of the soup (never below ``max(scores)``).
        history: ``(model index, score of the soup with it, added?)`` per candidate.
    """

    state_dict: dict[str, Tensor]
    ingredients: list[int]
    scores: list[float]
    soup_score: float
    history: list[tuple[int, float, bool]] = field(default_factory=list)


def greedy_soup_search(models: Sequence[Mapping[str, Tensor]], score_fn: ScoreFn) -> GreedySoup:
    """Greedy soup: add models best-first, keeping each only if the soup's score does not drop.

    ``score_fn(state_dict)`` returns the held-out score (higher is better). It is called
    once per model and once per candidate soup. Models may be lazy mappings (sources read
    from disk): memory holds the running sum (float32) and one candidate soup.
    """
    if not models:
        raise ValueError("greedy_soup needs at least one model.")
    if not callable(score_fn):
        raise ValueError(
            "greedy_soup needs score_fn, a callable state_dict -> held-out score (higher is "
            "better); in a YAML config give it as 'package.module:function'."
        )
    scores = [float(score_fn(m)) for m in models]
    order = sorted(range(len(models)), key=lambda i: -scores[i])
    first = models[order[0]]
    keys = list(first.keys())
    dtypes = {k: first[k].dtype for k in keys}
    total = {
        k: first[k].to(ops.compute_dtype(dtypes[k])) if dtypes[k].is_floating_point else first[k]
        for k in keys
    }
    ingredients = [order[0]]
    best = scores[order[0]]
    history = [(order[0], best, True)]

    def mean_with(extra: Mapping[str, Tensor] | None, count: int) -> dict[str, Tensor]:
        out = {}
        for k in keys:
            if not dtypes[k].is_floating_point:
                out[k] = total[k].clone()
                continue
            s = total[k] if extra is None else total[k] + extra[k].to(total[k].dtype)
            out[k] = (s / count).to(dtypes[k])
        return out

    for i in order[1:]:
        candidate = mean_with(models[i], len(ingredients) + 1)
        score = float(score_fn(candidate))
        added = score >= best
        history.append((i, score, added))
        del candidate
        if added:
            for k in keys:
                if dtypes[k].is_floating_point:
                    total[k] = total[k] + models[i][k].to(total[k].dtype)
            ingredients.append(i)
            best = score
    return GreedySoup(mean_with(None, len(ingredients)), ingredients, scores, best, history)


def _greedy_function(
    models: Sequence[Mapping[str, Tensor]],
    base: Mapping[str, Tensor] | None,
    params: dict[str, Any],
    model_params: list[dict[str, Any]],
    seed: int,
) -> dict[str, Tensor]:
    return greedy_soup_search(models, params["score_fn"]).state_dict


register_method(
    MergeMethod(
        name="greedy_soup",
        summary="add models best-first while the held-out score of the mean does not drop",
        params={"score_fn": REQUIRED},
        per_model=(),
        needs_base=False,
        function=_greedy_function,
    )
)


def greedy_soup(models: Sequence[Mapping[str, Tensor]], score_fn: ScoreFn) -> dict[str, Tensor]:
    """The greedy soup of ``models`` under ``score_fn`` (see :func:`greedy_soup_search`)."""
    return merge_state_dicts("greedy_soup", models, score_fn=score_fn)


# ------------------------------------------------------------------------------------ WiSE-FT
def _wise_kernel(job: TensorJob) -> None:
    alpha = job.params["alpha"]
    for sl in job.chunks():
        job.write(sl, (1.0 - alpha) * job.base_at(sl) + alpha * job.model_at(0, sl))


_WISE_FT = register_method(
    MergeMethod(
        name="wise_ft",
        summary="(1 - alpha) * zero-shot (base) + alpha * fine-tuned",
        params={"alpha": 0.5},
        per_model=(),
        max_models=1,
        kernel=_wise_kernel,
        check=checks.numbers("wise_ft", "alpha"),
    )
)


def wise_ft(
    zeroshot: Mapping[str, Tensor],
    finetuned: Mapping[str, Tensor] | Sequence[Mapping[str, Tensor]],
    alpha: float = _WISE_FT.params["alpha"],
) -> dict[str, Tensor]:
    """WiSE-FT: (1 - alpha) * zeroshot + alpha * finetuned; alpha 0 and 1 give the inputs."""
    models = [finetuned] if isinstance(finetuned, Mapping) else list(finetuned)
    return merge_state_dicts("wise_ft", models, zeroshot, alpha=alpha)
