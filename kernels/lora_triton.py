"""Triton kernel of the fused LoRA linear: one GEMM with a low-rank term added in its epilogue.

    out = X @ Wt + scale * (L @ R) [* mask] + bias

Forward: X = x, Wt = W^T, L = dropout(x) A^T, R = B^T.  Backward (dx): X = dy, Wt = W,
L = dy B, R = A, mask = the dropout mask (already divided by 1 - p). The low-rank term
rides along in the same tile loop, so the (rows x out) LoRA product never goes to memory
on its own and no separate add kernel runs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _gemm_lowrank_kernel(
    x_ptr, w_ptr, l_ptr, r_ptr, bias_ptr, mask_ptr, out_ptr,
    M, N, K, RANK, scale,
    stride_xm, stride_xk, stride_wk, stride_wn, stride_lm, stride_lr,
    stride_rr, stride_rn, stride_mm, stride_mn, stride_om, stride_on,
    HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(
            x_ptr + rm[:, None] * stride_xm + rk[None, :] * stride_xk,
            mask=(rm[:, None] < M) & (rk[None, :] < K),
            other=0.0,
        )
        w = tl.load(
            w_ptr + rk[:, None] * stride_wk + rn[None, :] * stride_wn,
            mask=(rk[:, None] < K) & (rn[None, :] < N),
            other=0.0,
        )
        if UPCAST:
            x = x.to(tl.float32)
            w = w.to(tl.float32)
        acc += tl.dot(x, w, input_precision=PRECISION, out_dtype=tl.float32)
    low = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for r0 in range(0, RANK, BLOCK_R):
        rr = r0 + tl.arange(0, BLOCK_R)
        lo = tl.load(
            l_ptr + rm[:, None] * stride_lm + rr[None, :] * stride_lr,
            mask=(rm[:, None] < M) & (rr[None, :] < RANK),
            other=0.0,
        )
        ro = tl.load(
            r_ptr + rr[:, None] * stride_rr + rn[None, :] * stride_rn,
            mask=(rr[:, None] < RANK) & (rn[None, :] < N),
            other=0.0,
        )
        if UPCAST:
            lo = lo.to(tl.float32)
            ro = ro.to(tl.float32)
        low += tl.dot(lo, ro, input_precision=PRECISION, out_dtype=tl.float32)
    out_mask = (rm[:, None] < M) & (rn[None, :] < N)
    if HAS_MASK:
        drop = tl.load(
            mask_ptr + rm[:, None] * stride_mm + rn[None, :] * stride_mn, mask=out_mask, other=0.0
        )
        low = low * drop.to(tl.float32)
    acc += scale * low
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rn, mask=rn < N, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    tl.store(
        out_ptr + rm[:, None] * stride_om + rn[None, :] * stride_on,
        acc.to(out_ptr.dtype.element_ty),
        mask=out_mask,
    )


def _upcast(x: torch.Tensor) -> bool:
    """Triton's CPU interpreter computes ``tl.dot`` on 16-bit floats wrongly (Triton 3.6), so
    under it the tiles are widened to fp32 first; on a GPU the dot runs in the input dtype."""
    return x.dtype in (torch.bfloat16, torch.float16) and not x.is_cuda


def _precision(x: torch.Tensor) -> str:
    """fp32 products in full precision unless PyTorch itself allows TF32 matmuls (its default
    is not to), so the kernel agrees with the reference to fp32 tolerance."""
    if x.dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def gemm_lowrank(
    x: torch.Tensor,
    wt: torch.Tensor,
    low_left: torch.Tensor,
    low_right: torch.Tensor,
    scale: float,
    bias: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x @ wt + scale * (low_left @ low_right) [* mask] + bias`` for 2-D operands.

    Shapes: x (M, K), wt (K, N), low_left (M, R), low_right (R, N), mask (M, N), bias (N,).
    Any strides (a transposed view costs nothing). Accumulates in fp32, returns x's dtype.
    """
    m, k = x.shape
    n = wt.shape[1]
    rank = low_left.shape[1]
    out = torch.empty((m, n), device=x.device, dtype=x.dtype)
    block_m, block_n, block_k = 32, 32, 32
    block_r = max(16, min(64, triton.next_power_of_2(rank)))
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    mask_arg = mask if mask is not None else out
    bias_arg = bias if bias is not None else out
    _gemm_lowrank_kernel[grid](
        x, wt, low_left, low_right, bias_arg, mask_arg, out,
        m, n, k, rank, float(scale),
        x.stride(0), x.stride(1), wt.stride(0), wt.stride(1),
        low_left.stride(0), low_left.stride(1), low_right.stride(0), low_right.stride(1),
        mask_arg.stride(0), mask_arg.stride(1), out.stride(0), out.stride(1),
        HAS_BIAS=bias is not None, HAS_MASK=mask is not None, UPCAST=_upcast(x),
        PRECISION=_precision(x),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_R=block_r,
    )  # fmt: skip
    return out
