"""Which kernel backends a test run can exercise, and per-dtype tolerances."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from fused_kernels.dispatch import triton_available, triton_interpreting

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TRITON_OK = triton_available() and (torch.cuda.is_available() or triton_interpreting())

BACKENDS = [
    "reference",
    pytest.param(
        "triton",
        marks=pytest.mark.skipif(not TRITON_OK, reason="Triton needs CUDA or TRITON_INTERPRET=1"),
    ),
]

# fp32: absolute and relative 1e-4. bf16 (8 bits of mantissa, and reductions over many rows):
# relative 3e-2, absolute 3e-2 of the largest magnitude in the expected tensor.
TOLERANCES = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (3e-2, 3e-2)}


def assert_close_for(dtype: torch.dtype, got: torch.Tensor, expected: torch.Tensor, name: str):
    """Compare a result computed in ``dtype`` against an fp32 truth with that dtype's tolerance."""
    atol, rtol = TOLERANCES[dtype]
    if dtype != torch.float32:
        atol = atol * float(expected.abs().max().clamp_min(1.0))
    torch.testing.assert_close(
        got.float(), expected, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}"
    )


def assert_all_close_for(
    dtype: torch.dtype,
    names: Sequence[str],
    got: Sequence[torch.Tensor],
    expected: Sequence[torch.Tensor],
) -> None:
    """:func:`assert_close_for` on each pair of ``got`` (which must all be in ``dtype``) and
    ``expected``, named by the first ``len(got)`` of ``names``."""
    assert len(got) == len(expected) <= len(names), (len(got), len(expected), names)
    for name, g, e in zip(names, got, expected, strict=False):
        assert g.dtype == dtype, name
        assert_close_for(dtype, g, e, name)
