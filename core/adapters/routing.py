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
            f"of {batch}. If the model widens the batch itself (beam search, several returned "
            "sequences), use bank.generate(...), or repeat each id: "
            "ids.repeat_interleave(rows_per_sample)."
        )


def ids_for_batch(ids: Tensor, batch: int, expand: bool) -> Tensor:
    """One adapter id per row of a batch of ``batch`` rows.

    With ``expand``, a batch that holds k consecutive rows per sample (how ``generate``
    widens a batch for beams or several returned sequences: ``repeat_interleave``) gets each
    sample's id k times. Otherwise ``ids`` must match the batch (:func:`check_ids`).
    """
    samples = ids.shape[0] if ids.dim() == 1 else -1
    if expand and samples > 0 and batch != samples and batch % samples == 0:
        return ids.repeat_interleave(batch // samples)
    check_ids(ids, batch)
    return ids


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
