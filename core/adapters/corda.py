"""Calibration statistics for CorDA: the covariance X^T X of each target layer's inputs."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn


def call_model(model: nn.Module, batch: Any) -> Any:
    """Run ``model`` on a batch: a tensor is passed as is, a dict as keywords, a tuple spread."""
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, list | tuple):
        return model(*batch)
    return model(batch)


@torch.no_grad()
def collect_input_covariances(
    model: nn.Module,
    module_names: list[str],
    batches: Iterable[Any],
    forward: Callable[[nn.Module, Any], Any] = call_model,
) -> dict[str, Tensor]:
    """Sum of x x^T over every input row seen by each named module (float64, in x in).

    The model runs in eval mode (no dropout) and is returned to its previous mode.
    """
    modules = dict(model.named_modules())
    sums: dict[str, Tensor] = {}
    handles = []

    def hook_for(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple, _kwargs: dict | None = None) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sums[name] = sums.get(name, 0) + x.T @ x

        return hook

    for name in module_names:
        handles.append(modules[name].register_forward_pre_hook(hook_for(name)))
    was_training = model.training
    model.eval()
    seen = 0
    try:
        for batch in batches:
            forward(model, batch)
            seen += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    missing = [n for n in module_names if n not in sums]
    if seen == 0 or missing:
        raise ValueError(
            "CorDA calibration saw no input for "
            f"{', '.join(missing[:5]) if missing else 'any layer'}; pass a non-empty iterable "
            "of batches that runs through the target layers."
        )
    return sums
