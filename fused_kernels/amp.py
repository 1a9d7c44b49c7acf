"""Autocast for the ops: cast their inputs the way autocast casts a matmul's, once, outside.

Autocast does not reach into a custom autograd Function the way it reaches into plain ops.
Inside the forward, products would run in the autocast dtype but in-place updates in the
inputs' own dtypes, and the backward (run outside the autocast region) would see the
inputs' dtypes again: under ``precision="bf16-mixed"`` the mixed dtypes collide. So each
op, when autocast is on for its device, casts its floating inputs to the autocast dtype
*before* its Function (autograd records those casts and brings each gradient back to its
input's own dtype, as it does for autocast's casts) and runs the Function with autocast
off, in that one dtype, forward and backward.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor


def autocast_dtype(tensor: Tensor) -> torch.dtype | None:
    """The dtype autocast gives matmuls on ``tensor``'s device, or None when it is off."""
    device = tensor.device.type
    try:
        enabled = torch.is_autocast_enabled(device)
    except RuntimeError:  # a device type autocast does not know (meta)
        return None
    return torch.get_autocast_dtype(device) if enabled else None


def cast_floating(dtype: torch.dtype, *tensors: Tensor | None) -> tuple[Tensor | None, ...]:
    """Each floating-point tensor cast to ``dtype``; None and integer tensors unchanged."""
    return tuple(
        t.to(dtype) if t is not None and torch.is_floating_point(t) else t for t in tensors
    )


@contextmanager
def autocast_off(tensor: Tensor) -> Iterator[None]:
    """Autocast disabled on ``tensor``'s device for the block (the inputs are cast already)."""
    with torch.autocast(tensor.device.type, enabled=False):
        yield
