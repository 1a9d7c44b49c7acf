"""Triton kernels of the multi-adapter LoRA: BGMV per row, SGMV per adapter group.

Forward (:func:`bgmv`): one program per (row, output tile) shrinks h = s_k A_k x (r values,
over the input in tiles), then expands the tile B_k[tile] h. Rank is small, so recomputing
h per output tile is cheaper than a second launch.

Backward (:func:`multi_lora_backward`), with k = ids[m] and g the upstream gradient:

    h[m]  = s_k A_k x[m]         shrink (rows)        u[m] = B_k^T g[m]     shrink (rows)
    dx[m] = s_k A_k^T u[m]       expand (rows)
    dB_k  = sum_{m in k} g[m] h[m]^T       dA_k = s_k sum_{m in k} u[m] x[m]^T

The row-wise steps read each row's adapter straight from the stacks (transposed views cost
nothing: the kernels take strides). The weight gradients are one segmented outer-product
reduction (SGMV): one program per (adapter present, output tile) sums over that adapter's
rows, found through the sorted row order, so nothing is packed or scattered.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _row_shrink(
    x_ptr, stride_x, w_ptr, stride_wr, stride_wi, IN, RANK,
    BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr,
):  # fmt: skip
    """W x for one row: (RANK,) fp32, with ``w_ptr`` at the row's adapter, W (RANK, IN)."""
    rr = tl.arange(0, BLOCK_R)
    h = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for i0 in range(0, IN, BLOCK_I):
        ri = i0 + tl.arange(0, BLOCK_I)
        x = tl.load(x_ptr + ri * stride_x, mask=ri < IN, other=0.0).to(tl.float32)
        w = tl.load(
            w_ptr + rr[:, None] * stride_wr + ri[None, :] * stride_wi,
            mask=(rr[:, None] < RANK) & (ri[None, :] < IN),
            other=0.0,
        ).to(tl.float32)
        h += tl.sum(w * x[None, :], axis=1)
    return h


@triton.jit
def _row_expand(h, w_ptr, stride_wo, stride_wr, ro, OUT, RANK, BLOCK_R: tl.constexpr):
    """W[ro] h for one row's output tile ``ro``, with ``w_ptr`` at its adapter, W (OUT, RANK)."""
    rr = tl.arange(0, BLOCK_R)
    w = tl.load(
        w_ptr + ro[:, None] * stride_wo + rr[None, :] * stride_wr,
        mask=(ro[:, None] < OUT) & (rr[None, :] < RANK),
        other=0.0,
    ).to(tl.float32)
    return tl.sum(w * h[None, :], axis=1)


@triton.jit
def _bgmv_kernel(
    x_ptr, ids_ptr, a_ptr, b_ptr, s_ptr, out_ptr,
    IN, OUT, RANK,
    stride_xm, stride_ak, stride_ar, stride_ai, stride_bk, stride_bo, stride_br, stride_om,
    BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_O: tl.constexpr,
):  # fmt: skip
    """out[m, tile] = B_k[tile] (s_k A_k x[m]); zeros where ids[m] < 0."""
    row = tl.program_id(0)
    k = tl.load(ids_ptr + row)
    ro = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    out = tl.zeros((BLOCK_O,), dtype=tl.float32)
    if k >= 0:
        h = _row_shrink(
            x_ptr + row * stride_xm, 1, a_ptr + k * stride_ak, stride_ar, stride_ai, IN, RANK,
            BLOCK_R, BLOCK_I,
        )  # fmt: skip
        h = h * tl.load(s_ptr + k).to(tl.float32)
        out = _row_expand(h, b_ptr + k * stride_bk, stride_bo, stride_br, ro, OUT, RANK, BLOCK_R)
    tl.store(out_ptr + row * stride_om + ro, out.to(out_ptr.dtype.element_ty), mask=ro < OUT)


@triton.jit
def _shrink_kernel(
    x_ptr, ids_ptr, w_ptr, s_ptr, out_ptr,
    IN, RANK,
    stride_xm, stride_xi, stride_wk, stride_wr, stride_wi, stride_om,
    HAS_SCALE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr,
):  # fmt: skip
    """out[m] = (s_k) W_k x[m] with W_k (RANK, IN); zeros where ids[m] < 0; fp32 out."""
    row = tl.program_id(0)
    k = tl.load(ids_ptr + row)
    rr = tl.arange(0, BLOCK_R)
    h = tl.zeros((BLOCK_R,), dtype=tl.float32)
    if k >= 0:
        h = _row_shrink(
            x_ptr + row * stride_xm, stride_xi, w_ptr + k * stride_wk, stride_wr, stride_wi,
            IN, RANK, BLOCK_R, BLOCK_I,
        )  # fmt: skip
        if HAS_SCALE:
            h = h * tl.load(s_ptr + k).to(tl.float32)
    tl.store(out_ptr + row * stride_om + rr, h, mask=rr < RANK)


@triton.jit
def _expand_kernel(
    h_ptr, ids_ptr, w_ptr, s_ptr, out_ptr,
    OUT, RANK,
    stride_hm, stride_wk, stride_wo, stride_wr, stride_om,
    BLOCK_R: tl.constexpr, BLOCK_O: tl.constexpr,
):  # fmt: skip
    """out[m, tile] = s_k W_k[tile] h[m] with W_k (OUT, RANK); zeros where ids[m] < 0."""
    row = tl.program_id(0)
    k = tl.load(ids_ptr + row)
    ro = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    rr = tl.arange(0, BLOCK_R)
    out = tl.zeros((BLOCK_O,), dtype=tl.float32)
    if k >= 0:
        h = tl.load(h_ptr + row * stride_hm + rr, mask=rr < RANK, other=0.0).to(tl.float32)
        h = h * tl.load(s_ptr + k).to(tl.float32)
        out = _row_expand(h, w_ptr + k * stride_wk, stride_wo, stride_wr, ro, OUT, RANK, BLOCK_R)
    tl.store(out_ptr + row * stride_om + ro, out.to(out_ptr.dtype.element_ty), mask=ro < OUT)


@triton.jit
def _segment_outer_kernel(
    left_ptr, right_ptr, order_ptr, starts_ptr, counts_ptr, groups_ptr, s_ptr, out_ptr,
    P, Q,
    stride_lm, stride_lp, stride_rm, stride_rq, stride_ok, stride_op, stride_oq,
    HAS_SCALE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr,
):  # fmt: skip
    """out[k, tile] = (s_k) sum over the rows m of group k of left[m, :]^T right[m, :]."""
    group = tl.program_id(0)
    rp = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    rq = tl.program_id(2) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    start = tl.load(starts_ptr + group)
    count = tl.load(counts_ptr + group)
    k = tl.load(groups_ptr + group)
    acc = tl.zeros((BLOCK_P, BLOCK_Q), dtype=tl.float32)
    for m0 in range(0, count, BLOCK_M):
        rm = m0 + tl.arange(0, BLOCK_M)
        live = rm < count
        rows = tl.load(order_ptr + start + rm, mask=live, other=0)
        lt = tl.load(
            left_ptr + rows[:, None] * stride_lm + rp[None, :] * stride_lp,
            mask=live[:, None] & (rp[None, :] < P),
            other=0.0,
        ).to(tl.float32)
        rt = tl.load(
            right_ptr + rows[:, None] * stride_rm + rq[None, :] * stride_rq,
            mask=live[:, None] & (rq[None, :] < Q),
            other=0.0,
        ).to(tl.float32)
        acc += tl.dot(tl.trans(lt), rt, input_precision="ieee", out_dtype=tl.float32)
    if HAS_SCALE:
        acc = acc * tl.load(s_ptr + k).to(tl.float32)
    tl.store(
        out_ptr + k * stride_ok + rp[:, None] * stride_op + rq[None, :] * stride_oq,
        acc.to(out_ptr.dtype.element_ty),
        mask=(rp[:, None] < P) & (rq[None, :] < Q),
    )


def _block(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


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
    block_o = 64
    grid = (rows, triton.cdiv(fout, block_o))
    _bgmv_kernel[grid](
        x, ids.contiguous(), stack_a, stack_b, scalings.contiguous(), out,
        fin, fout, rank,
        x.stride(0), stack_a.stride(0), stack_a.stride(1), stack_a.stride(2),
        stack_b.stride(0), stack_b.stride(1), stack_b.stride(2), out.stride(0),
        BLOCK_R=_block(rank), BLOCK_I=64, BLOCK_O=block_o,
    )  # fmt: skip
    return out


def bgmv_shrink(
    x: torch.Tensor, ids: torch.Tensor, stack: torch.Tensor, scalings: torch.Tensor | None
) -> torch.Tensor:
    """(M, r) fp32 rows ``s_k stack[k] @ x[m]`` for a (N, r, in) stack (any strides)."""
    rows, fin = x.shape
    rank = stack.shape[1]
    out = torch.empty(rows, rank, device=x.device, dtype=torch.float32)
    scale_arg = scalings.contiguous() if scalings is not None else out
    _shrink_kernel[(rows,)](
        x, ids, stack, scale_arg, out,
        fin, rank,
        x.stride(0), x.stride(1), stack.stride(0), stack.stride(1), stack.stride(2), out.stride(0),
        HAS_SCALE=scalings is not None, BLOCK_R=_block(rank), BLOCK_I=64,
    )  # fmt: skip
    return out


def bgmv_expand(
    h: torch.Tensor, ids: torch.Tensor, stack: torch.Tensor, scalings: torch.Tensor, dtype
) -> torch.Tensor:
    """(M, out) rows ``s_k stack[k] @ h[m]`` for a (N, out, r) stack (any strides)."""
    h = h.contiguous()
    rows, rank = h.shape
    fout = stack.shape[1]
    out = torch.empty(rows, fout, device=h.device, dtype=dtype)
    block_o = 64
    _expand_kernel[(rows, triton.cdiv(fout, block_o))](
        h, ids, stack, scalings.contiguous(), out,
        fout, rank,
        h.stride(0), stack.stride(0), stack.stride(1), stack.stride(2), out.stride(0),
        BLOCK_R=_block(rank), BLOCK_O=block_o,
    )  # fmt: skip
    return out


def segment_outer(
    left: torch.Tensor,
    right: torch.Tensor,
    seg,
    n_adapters: int,
    scalings: torch.Tensor | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """(N, P, Q): for each adapter k present, (s_k) sum of left[m]^T right[m] over its rows.

    ``seg`` is the row grouping of :func:`kernels.multi_lora.make_segments`; adapters with
    no rows get zeros.
    """
    fp, fq = left.shape[1], right.shape[1]
    out = torch.zeros(n_adapters, fp, fq, device=left.device, dtype=dtype)
    if seg.width == 0:
        return out
    counts = seg.counts
    starts = torch.cumsum(counts, 0) - counts
    block_p, block_q = min(64, _block(fp)), min(64, _block(fq))
    grid = (len(seg.unique), triton.cdiv(fp, block_p), triton.cdiv(fq, block_q))
    scale_arg = scalings.contiguous() if scalings is not None else out
    _segment_outer_kernel[grid](
        left, right, seg.order, starts, counts, seg.unique, scale_arg, out,
        fp, fq,
        left.stride(0), left.stride(1), right.stride(0), right.stride(1),
        out.stride(0), out.stride(1), out.stride(2),
        HAS_SCALE=scalings is not None, BLOCK_M=16, BLOCK_P=block_p, BLOCK_Q=block_q,
    )  # fmt: skip
    return out


def multi_lora_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    ids: torch.Tensor,
    stack_a: torch.Tensor,
    stack_b: torch.Tensor,
    scalings: torch.Tensor,
    seg,
    needs: tuple[bool, bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(dx, dA stack, dB stack) of the multi-adapter update; ``needs`` says which to form."""
    n = stack_a.shape[0]
    u = bgmv_shrink(grad, ids, stack_b.transpose(1, 2), None)  # B_k^T g, (M, r)
    grad_x = bgmv_expand(u, ids, stack_a.transpose(1, 2), scalings, x.dtype) if needs[0] else None
    grad_a = segment_outer(u, x, seg, n, scalings, stack_a.dtype) if needs[1] else None
    grad_b = None
    if needs[2]:
        h = bgmv_shrink(x, ids, stack_a, scalings)  # s_k A_k x, recomputed rather than kept
        grad_b = segment_outer(grad, h, seg, n, None, stack_b.dtype)
    return grad_x, grad_a, grad_b
