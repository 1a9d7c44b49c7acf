"""Triton kernel of the fused LoRA linear: one GEMM with a low-rank term added in its epilogue.

    out = X @ Wt + scale * (L @ R) [* mask] + bias

Forward: X = x, Wt = W^T, L = dropout(x) A^T, R = B^T.  Backward (dx): X = dy, Wt = W,
L = dy B, R = A, mask = the dropout mask (already divided by 1 - p). The low-rank term
rides along in the same tile loop, so the (rows x out) LoRA product never goes to memory
on its own and no separate add kernel runs.

On a GPU the tile shape is autotuned per (M, N, K) over :data:`GPU_CONFIGS` (the first call
at a new shape benchmarks them), and programs walk the output in groups of ``GROUP_M``
row tiles so that neighbouring programs share W tiles in L2. Under Triton's CPU
interpreter, which runs the tests, one small fixed tile shape is used.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_dtypes import dot_precision, upcast_tiles


@triton.jit
def _tile_product(
    a_ptr, b_ptr, rm, rn, M, N, K, stride_am, stride_ak, stride_bk, stride_bn,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """``A[rm, :] @ B[:, rn]`` for one (BLOCK_M, BLOCK_N) output tile, A (M, K) and B (K, N),
    accumulated in fp32 over ``K`` in steps of ``BLOCK_K`` (out-of-range entries read as 0).

    Both products of the fused GEMM run through it: x W^T over the features and the
    low-rank L R over the rank. Triton inlines it into the kernel."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(
            a_ptr + rm[:, None] * stride_am + rk[None, :] * stride_ak,
            mask=(rm[:, None] < M) & (rk[None, :] < K),
            other=0.0,
        )
        b = tl.load(
            b_ptr + rk[:, None] * stride_bk + rn[None, :] * stride_bn,
            mask=(rk[:, None] < K) & (rn[None, :] < N),
            other=0.0,
        )
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc += tl.dot(a, b, input_precision=PRECISION, out_dtype=tl.float32)
    return acc


@triton.jit
def _gemm_lowrank_kernel(
    x_ptr, w_ptr, l_ptr, r_ptr, bias_ptr, mask_ptr, out_ptr,
    M, N, K, RANK, scale,
    stride_xm, stride_xk, stride_wk, stride_wn, stride_lm, stride_lr,
    stride_rr, stride_rn, stride_mm, stride_mn, stride_om, stride_on,
    HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
    GROUP_M: tl.constexpr,
):  # fmt: skip
    # Program ids run down GROUP_M row tiles before moving to the next column of tiles.
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = min(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = _tile_product(
        x_ptr, w_ptr, rm, rn, M, N, K, stride_xm, stride_xk, stride_wk, stride_wn,
        UPCAST, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K,
    )  # fmt: skip
    low = _tile_product(
        l_ptr, r_ptr, rm, rn, M, N, RANK, stride_lm, stride_lr, stride_rr, stride_rn,
        UPCAST, PRECISION, BLOCK_M, BLOCK_N, BLOCK_R,
    )  # fmt: skip
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


# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages): the usual Triton GEMM candidates for
# Ampere and Hopper, large tiles for large problems, small ones for few rows. Only those
# whose pipelined tiles fit SHARED_BUDGET at the operands' element size are tried (see
# :func:`fitting_configs`); `python -m fused_kernels.compile_check` compiles each one that is
# kept, for sm_80 and sm_90, and checks the shared memory it really needs.
GPU_CONFIGS = [
    (128, 256, 64, 8, 3),
    (256, 128, 64, 8, 3),
    (128, 128, 64, 8, 4),
    (128, 128, 32, 4, 4),
    (128, 64, 64, 4, 4),
    (64, 128, 64, 4, 4),
    (64, 64, 64, 4, 4),
    (32, 64, 64, 4, 5),
]
GROUP_M = 8
SHARED_BUDGET = 160 * 1024  # bytes per block: within A100's 163 KB and H100's 227 KB
INTERPRETER_BLOCKS = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 2}


def fitting_configs(element_size: int) -> list[tuple[int, int, int, int, int]]:
    """The candidates whose X and W tiles, one buffer per pipeline stage, fit the budget."""
    return [
        (bm, bn, bk, warps, stages)
        for bm, bn, bk, warps, stages in GPU_CONFIGS
        if stages * (bm + bn) * bk * element_size <= SHARED_BUDGET
    ]


def _prune(configs: list, named_args: dict, **_: object) -> list:
    """Autotuner hook: keep the candidates that fit at this call's element size."""
    keep = set(fitting_configs(named_args["x_ptr"].element_size()))
    return [
        c
        for c in configs
        if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps,
            c.num_stages) in keep
    ]  # fmt: skip


_gemm_lowrank_tuned = triton.autotune(
    configs=[
        triton.Config(
            {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": GROUP_M},
            num_warps=warps,
            num_stages=stages,
        )
        for bm, bn, bk, warps, stages in GPU_CONFIGS
    ],
    key=["M", "N", "K", "RANK", "HAS_BIAS", "HAS_MASK"],
    prune_configs_by={"early_config_prune": _prune},
)(_gemm_lowrank_kernel)


def gemm_lowrank(
    x: torch.Tensor,
    wt: torch.Tensor,
    low_left: torch.Tensor,
    low_right: torch.Tensor,
    scale: float,
    bias: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    *,
    blocks: dict[str, int] | None = None,
) -> torch.Tensor:
    """``x @ wt + scale * (low_left @ low_right) [* mask] + bias`` for 2-D operands.

    Shapes: x (M, K), wt (K, N), low_left (M, R), low_right (R, N), mask (M, N), bias (N,).
    Any strides (a transposed view costs nothing). Accumulates in fp32, returns x's dtype.
    ``blocks`` (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M) fixes the tiles instead of the default
    (autotuned on CUDA, small under the interpreter): for reproducing one configuration.
    """
    m, k = x.shape
    n = wt.shape[1]
    rank = low_left.shape[1]
    out = torch.empty((m, n), device=x.device, dtype=x.dtype)
    block_r = max(16, min(64, triton.next_power_of_2(rank)))
    mask_arg = mask if mask is not None else out
    bias_arg = bias if bias is not None else out
    if blocks is not None:
        kernel = _gemm_lowrank_kernel
    elif x.is_cuda:
        kernel, blocks = _gemm_lowrank_tuned, {}
    else:
        kernel, blocks = _gemm_lowrank_kernel, INTERPRETER_BLOCKS

    def grid(meta: dict) -> tuple[int]:
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

    kernel[grid](
        x, wt, low_left, low_right, bias_arg, mask_arg, out,
        m, n, k, rank, float(scale),
        x.stride(0), x.stride(1), wt.stride(0), wt.stride(1),
        low_left.stride(0), low_left.stride(1), low_right.stride(0), low_right.stride(1),
        mask_arg.stride(0), mask_arg.stride(1), out.stride(0), out.stride(1),
        HAS_BIAS=bias is not None, HAS_MASK=mask is not None, UPCAST=upcast_tiles(x),
        PRECISION=dot_precision(x), BLOCK_R=block_r, **blocks,
    )  # fmt: skip
    return out
