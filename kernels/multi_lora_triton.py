"""Triton BGMV kernel: each row's LoRA update read straight from the adapter stacks.

One program per (row, output tile): shrink h = s_k A_k x (r values, over the input in
tiles), then expand the tile B_k[tile] h. Rank is small, so recomputing h per output tile
is cheaper than a second launch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _bgmv_kernel(
    x_ptr, ids_ptr, a_ptr, b_ptr, s_ptr, out_ptr,
    IN, OUT, RANK,
    stride_xm, stride_ak, stride_ar, stride_ai, stride_bk, stride_bo, stride_br, stride_om,
    BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_O: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    tile = tl.program_id(1)
    k = tl.load(ids_ptr + row)
    ro = tile * BLOCK_O + tl.arange(0, BLOCK_O)
    rr = tl.arange(0, BLOCK_R)
    if k < 0:
        tl.store(
            out_ptr + row * stride_om + ro,
            tl.zeros((BLOCK_O,), tl.float32).to(out_ptr.dtype.element_ty),
            mask=ro < OUT,
        )
    else:
        h = tl.zeros((BLOCK_R,), dtype=tl.float32)
        for i0 in range(0, IN, BLOCK_I):
            ri = i0 + tl.arange(0, BLOCK_I)
            x = tl.load(x_ptr + row * stride_xm + ri, mask=ri < IN, other=0.0).to(tl.float32)
            a = tl.load(
                a_ptr + k * stride_ak + rr[:, None] * stride_ar + ri[None, :] * stride_ai,
                mask=(rr[:, None] < RANK) & (ri[None, :] < IN),
                other=0.0,
            ).to(tl.float32)
            h += tl.sum(a * x[None, :], axis=1)
        h = h * tl.load(s_ptr + k).to(tl.float32)
        b = tl.load(
            b_ptr + k * stride_bk + ro[:, None] * stride_bo + rr[None, :] * stride_br,
            mask=(ro[:, None] < OUT) & (rr[None, :] < RANK),
            other=0.0,
        ).to(tl.float32)
        out = tl.sum(b * h[None, :], axis=1)
        tl.store(out_ptr + row * stride_om + ro, out.to(out_ptr.dtype.element_ty), mask=ro < OUT)


def bgmv(
    x: torch.Tensor,
    ids: torch.Tensor,
    stack_a: torch.Tensor,
    stack_b: torch.Tensor,
    scalings: torch.Tensor,
) -> torch.Tensor:
    """(M, out) per-row LoRA updates; x (M, in) with unit stride along features."""
    x = x.contiguous()
    rows, fin = x.shape
    fout, rank = stack_b.shape[1], stack_b.shape[2]
    out = torch.empty(rows, fout, device=x.device, dtype=x.dtype)
    block_r = max(16, triton.next_power_of_2(rank))
    block_o = 64
    grid = (rows, triton.cdiv(fout, block_o))
    _bgmv_kernel[grid](
        x, ids.contiguous(), stack_a, stack_b, scalings.contiguous(), out,
        fin, fout, rank,
        x.stride(0), stack_a.stride(0), stack_a.stride(1), stack_a.stride(2),
        stack_b.stride(0), stack_b.stride(1), stack_b.stride(2), out.stride(0),
        BLOCK_R=block_r, BLOCK_I=64, BLOCK_O=block_o,
    )  # fmt: skip
    return out
