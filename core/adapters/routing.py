"""The per-sample computation of an AdapterBank, kept in one place for the multi-adapter kernel."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from .layer import AdapterUnit


def check_ids(ids: Tensor, batch: int) -> None:
    """Raise unless ``ids`` holds exactly one adapter id per sample of the batch."""
    if ids.dim() != 1 or ids.shape[0] != batch:
        raise ValueError(
            f"adapter_ids must hold one id per sample: got shape {tuple(ids.shape)} for a batch "
            f"of {batch}."
        )


def routed_forward(
    units: list[AdapterUnit], x: Tensor, out: Tensor, base: nn.Module, ids: Tensor
) -> Tensor:
    """Apply ``units[ids[b]]`` to sample ``b`` of the batch (dimension 0); ``-1`` keeps ``out``.

    Samples are grouped by id so each adapter runs once on its rows.
    """
    check_ids(ids, x.shape[0])
    result = out
    for adapter_id in torch.unique(ids).tolist():
        if adapter_id < 0:
            continue
        rows = (ids == adapter_id).nonzero().squeeze(1)
        rows_out = units[adapter_id](x.index_select(0, rows), out.index_select(0, rows), base)
        result = result.index_copy(0, rows, rows_out)
    return result
