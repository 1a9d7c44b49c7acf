"""LiNeS: layer-increasing network scaling of task vectors (Wang et al., ICLR 2025).

Shallow layers hold general features that fine-tuning should not disturb, deep layers the
task-specific ones. LiNeS scales the task vector of layer l (0-based, L layers) by
lambda(l) = alpha + beta * l / (L - 1): with alpha = 0 and beta = 1 the first layer stays
at the base and the last layer gets the full task vector. For several models the task
vector is sum_k weight_k * tau_k (task arithmetic), then scaled per layer.

Which layer a tensor belongs to comes from ``layers``: a regular expression whose first
group is the layer number (default: ``layers.N.``, ``layer.N.``, ``h.N.``, ``blocks.N.``,
``block.N.`` as in Llama, BERT, GPT-2 and ViT), a list of name prefixes in depth order
(``["fc1", "fc2", "head"]`` for a small MLP), or a callable ``name -> int | None``. Tensors
outside every layer (embeddings, final norm, head) are scaled as the ``unmatched`` layer:
``"first"`` (alpha; the default), ``"last"`` (alpha + beta) or ``"base"`` (kept at base).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor

from . import checks
from .engine import TensorJob, merge_state_dicts
from .registry import MergeMethod, register_method
from .task_arithmetic import write_scaled_task_sum

DEFAULT_LAYER_PATTERN = r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)"

LayerSpec = str | Sequence[str] | Callable[[str], int | None]


def layer_parser(layers: LayerSpec | None = None) -> Callable[[str], int | None]:
    """A function tensor name -> layer index (or ``None``) from a regex, prefixes or callable."""
    if layers is None:
        layers = DEFAULT_LAYER_PATTERN
    if callable(layers):
        return layers
    if isinstance(layers, str):
        try:
            pattern = re.compile(layers)
        except re.error as err:
            raise ValueError(
                f"lines: layers={layers!r} is not a valid regular expression ({err})."
            ) from err
        if pattern.groups < 1:
            raise ValueError(
                f"lines: layers={layers!r} needs a group that captures the layer number, e.g. "
                r"'layers\.(\d+)\.'."
            )

        def from_regex(name: str) -> int | None:
            match = pattern.search(name)
            return int(match.group(1)) if match else None

        return from_regex
    prefixes = [str(p) for p in layers]
    if not prefixes:
        raise ValueError("lines: layers=[] names no layer; give prefixes in depth order.")

    def from_prefixes(name: str) -> int | None:
        for i, prefix in enumerate(prefixes):
            if name == prefix or name.startswith(prefix + ".") or f".{prefix}." in f".{name}":
                return i
        return None

    return from_prefixes


def layer_scales(
    keys: Sequence[str],
    alpha: float,
    beta: float,
    layers: LayerSpec | None = None,
    unmatched: str = "first",
) -> dict[str, float]:
    """lambda for every tensor name: alpha + beta * l / (L - 1), L = highest index + 1."""
    parse = layer_parser(layers)
    index = {k: parse(k) for k in keys}
    found = [i for i in index.values() if i is not None]
    if not found:
        raise ValueError(
            f"lines: no tensor name matches layers={layers!r} (first names: {list(keys)[:3]}); "
            "give a regex with the layer number as its group, or a list of module prefixes "
            "in depth order."
        )
    depth = max(found)

    def scale(i: int) -> float:
        return alpha + beta * (i / depth if depth > 0 else 1.0)

    outside = {"first": alpha, "last": alpha + beta, "base": 0.0}
    if unmatched not in outside:
        raise ValueError(f"lines: unmatched={unmatched!r} must be 'first', 'last' or 'base'.")
    return {k: outside[unmatched] if i is None else scale(i) for k, i in index.items()}


def _prepare(keys: list[str], params: dict[str, Any]) -> dict[str, Any]:
    return layer_scales(
        keys, params["alpha"], params["beta"], params["layers"], params["unmatched"]
    )


def _kernel(job: TensorJob) -> None:
    write_scaled_task_sum(job, float(job.info))  # the layer's depth-dependent scale


def _check(params: dict[str, Any], model_params: list[dict[str, Any]]) -> None:
    checks.number("lines", "alpha", params["alpha"])
    checks.number("lines", "beta", params["beta"])
    layer_parser(params["layers"])


_LINES = register_method(
    MergeMethod(
        name="lines",
        summary="scale the task vector by alpha + beta * depth (first layer ~ base, last full)",
        params={"alpha": 0.0, "beta": 1.0, "layers": None, "unmatched": "first"},
        kernel=_kernel,
        prepare=_prepare,
        check=_check,
    )
)


def lines(
    base: Mapping[str, Tensor],
    finetuned: Sequence[Mapping[str, Tensor]],
    alpha: float = _LINES.params["alpha"],
    beta: float = _LINES.params["beta"],
    layers: LayerSpec | None = _LINES.params["layers"],
    unmatched: str = _LINES.params["unmatched"],
    weights: Sequence[float] | None = None,
) -> dict[str, Tensor]:
    """LiNeS: base + (alpha + beta * l / (L - 1)) * sum_k weights[k] * tau_k, layer by layer.

    See the module docstring for ``layers`` and ``unmatched``.
    """
    return merge_state_dicts(
        "lines",
        finetuned,
        base,
        weights=weights,
        alpha=alpha,
        beta=beta,
        layers=layers,
        unmatched=unmatched,
    )
