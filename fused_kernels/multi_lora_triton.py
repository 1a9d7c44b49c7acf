"""Triton kernels of the multi-adapter LoRA, all grouped by adapter (SGMV, Punica/S-LoRA).

Rows are taken in the order of :func:`fused_kernels.multi_lora.make_segments` (sorted by adapter
id, rows without an adapter left out). One program owns a block of one adapter's rows, so
it loads that adapter's factors once per block of up to ``BLOCK_M`` rows and multiplies
them with ``tl.dot`` on tensor cores, instead of once per row; rows are gathered and
scattered through the order, so nothing is packed or copied.

Forward (:func:`sgmv`): shrink h = A_k x (M, r) in fp32, then expand s_k B_k h into the
output, or added straight into the base output (``out=``, the serving path).

Backward (:func:`multi_lora_backward`), with k = ids[m] and g the upstream gradient:

    h[m]  = s_k A_k x[m]         shrink               u[m] = B_k^T g[m]     shrink
    dx[m] = s_k A_k^T u[m]       expand
    dB_k  = sum_{m in k} g[m] h[m]^T       dA_k = s_k sum_{m in k} u[m] x[m]^T   (segment_outer)

Transposed stacks are views with other strides; the kernels take strides, so A^T and B^T
cost nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl

from .triton_dtypes import dot_precision, upcast_tiles

if TYPE_CHECKING:
    from .multi_lora import Segments


@triton.jit
def _group_block(order_ptr, starts_ptr, counts_ptr, groups_ptr, BLOCK_M: tl.constexpr):
    """This program's block of rows: program axis 0 is the adapter group, axis 1 the block.

    Returns (adapter id, row indices, which of them are real rows, whether the group has no
    rows left for this block)."""
    group = tl.program_id(0)
    count = tl.load(counts_ptr + group)
    rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    live = rm < count
    rows = tl.load(order_ptr + tl.load(starts_ptr + group) + rm, mask=live, other=0)
    return tl.load(groups_ptr + group), rows, live, tl.program_id(1) * BLOCK_M >= count


@triton.jit
def _shrink_kernel(
    x_ptr, w_ptr, s_ptr, out_ptr, order_ptr, starts_ptr, counts_ptr, groups_ptr,
    IN, RANK,
    stride_xm, stride_xi, stride_wk, stride_wr, stride_wi, stride_om,
    HAS_SCALE: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr,
):  # fmt: skip
    """out[m] = (s_k) W_k x[m] (fp32) for one block of adapter group k's rows; W_k (RANK, IN)."""
    k, rows, live, idle = _group_block(order_ptr, starts_ptr, counts_ptr, groups_ptr, BLOCK_M)
    if idle:
        return
    rr = tl.arange(0, BLOCK_R)
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for i0 in range(0, IN, BLOCK_I):
        ri = i0 + tl.arange(0, BLOCK_I)
        x = tl.load(
            x_ptr + rows[:, None] * stride_xm + ri[None, :] * stride_xi,
            mask=live[:, None] & (ri[None, :] < IN),
            other=0.0,
        )
        w = tl.load(  # W_k^T tile (BLOCK_I, BLOCK_R)
            w_ptr + k * stride_wk + ri[:, None] * stride_wi + rr[None, :] * stride_wr,
            mask=(ri[:, None] < IN) & (rr[None, :] < RANK),
            other=0.0,
        )
        if UPCAST:
            x = x.to(tl.float32)
            w = w.to(tl.float32)
        acc += tl.dot(x, w.to(x.dtype), input_precision=PRECISION, out_dtype=tl.float32)
    if HAS_SCALE:
        acc = acc * tl.load(s_ptr + k).to(tl.float32)
    tl.store(
        out_ptr + rows[:, None] * stride_om + rr[None, :],
        acc,
        mask=live[:, None] & (rr[None, :] < RANK),
    )


@triton.jit
def _expand_kernel(
    h_ptr, w_ptr, s_ptr, out_ptr, order_ptr, starts_ptr, counts_ptr, groups_ptr,
    OUT, RANK,
    stride_hm, stride_wk, stride_wo, stride_wr, stride_om, stride_on,
    ACCUMULATE: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_O: tl.constexpr,
):  # fmt: skip
    """out[m, tile] (+)= s_k W_k[tile] h[m] for one block of group k's rows; W_k (OUT, RANK).

    h is fp32; on a GPU it is rounded to W's dtype for the tensor-core dot, as an unfused
    16-bit implementation rounds its (rows x r) intermediate.
    """
    k, rows, live, idle = _group_block(order_ptr, starts_ptr, counts_ptr, groups_ptr, BLOCK_M)
    if idle:
        return
    ro = tl.program_id(2) * BLOCK_O + tl.arange(0, BLOCK_O)
    rr = tl.arange(0, BLOCK_R)
    h = tl.load(
        h_ptr + rows[:, None] * stride_hm + rr[None, :],
        mask=live[:, None] & (rr[None, :] < RANK),
        other=0.0,
    )
    w = tl.load(  # W_k[tile]^T (BLOCK_R, BLOCK_O)
        w_ptr + k * stride_wk + rr[:, None] * stride_wr + ro[None, :] * stride_wo,
        mask=(rr[:, None] < RANK) & (ro[None, :] < OUT),
        other=0.0,
    )
    if UPCAST:
        w = w.to(tl.float32)
    acc = tl.dot(h.to(w.dtype), w, input_precision=PRECISION, out_dtype=tl.float32)
    acc = acc * tl.load(s_ptr + k).to(tl.float32)
    where = out_ptr + rows[:, None] * stride_om + ro[None, :] * stride_on
    keep = live[:, None] & (ro[None, :] < OUT)
    if ACCUMULATE:
        acc += tl.load(where, mask=keep, other=0.0).to(tl.float32)
    tl.store(where, acc.to(out_ptr.dtype.element_ty), mask=keep)


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


def _rows_per_program(seg: Segments) -> int:
    """Rows per program: up to 64 of one adapter's rows, at least tl.dot's 16."""
    return min(64, _block(seg.width))


def _groups(seg: Segments) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sorted row order, first position of each group in it, group sizes, adapter ids)."""
    return seg.order, torch.cumsum(seg.counts, 0) - seg.counts, seg.counts, seg.unique


def sgmv_shrink(
    x: torch.Tensor, seg: Segments, stack: torch.Tensor, scalings: torch.Tensor | None
) -> torch.Tensor:
    """(M, r) fp32 rows ``(s_k) stack[k] @ x[m]`` for a (N, r, in) stack (any strides); rows
    without an adapter are zero."""
    rows, fin = x.shape
    rank = stack.shape[1]
    out = torch.zeros(rows, rank, device=x.device, dtype=torch.float32)
    if seg.width == 0:
        return out
    block_m = _rows_per_program(seg)
    scale_arg = scalings.contiguous() if scalings is not None else out
    _shrink_kernel[(len(seg.unique), triton.cdiv(seg.width, block_m))](
        x, stack, scale_arg, out, *_groups(seg),
        fin, rank,
        x.stride(0), x.stride(1), stack.stride(0), stack.stride(1), stack.stride(2), out.stride(0),
        HAS_SCALE=scalings is not None, UPCAST=upcast_tiles(x), PRECISION=dot_precision(x),
        BLOCK_M=block_m, BLOCK_R=_block(rank), BLOCK_I=64,
    )  # fmt: skip
    return out


def sgmv_expand(
    h: torch.Tensor,
    seg: Segments,
    stack: torch.Tensor,
    scalings: torch.Tensor,
    dtype: torch.dtype,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """(M, out) rows ``s_k stack[k] @ h[m]`` for a (N, out, r) stack (any strides).

    With ``out`` given, the rows are added into it in place (rows without an adapter keep
    their values) and it is returned; otherwise a new tensor, zero on those rows.
    """
    h = h.contiguous()
    rows, rank = h.shape
    fout = stack.shape[1]
    accumulate = out is not None
    if out is None:
        fill = torch.empty if len(seg.order) == rows else torch.zeros
        out = fill(rows, fout, device=h.device, dtype=dtype)
    if seg.width == 0:
        return out
    block_m, block_o = _rows_per_program(seg), 64
    grid = (len(seg.unique), triton.cdiv(seg.width, block_m), triton.cdiv(fout, block_o))
    _expand_kernel[grid](
        h, stack, scalings.contiguous(), out, *_groups(seg),
        fout, rank,
        h.stride(0), stack.stride(0), stack.stride(1), stack.stride(2),
        out.stride(0), out.stride(1),
        ACCUMULATE=accumulate, UPCAST=upcast_tiles(stack), PRECISION=dot_precision(stack),
        BLOCK_M=block_m, BLOCK_R=_block(rank), BLOCK_O=block_o,
    )  # fmt: skip
    return out


def sgmv(
    x: torch.Tensor,
    seg: Segments,
    stack_a: torch.Tensor,
    stack_b: torch.Tensor,
    scalings: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-row LoRA updates ``s_k B_k A_k x[m]`` (M, out); added into ``out`` when given."""
    h = sgmv_shrink(x, seg, stack_a, None)
    return sgmv_expand(h, seg, stack_b, scalings, x.dtype, out)


def segment_outer(
    left: torch.Tensor,
    right: torch.Tensor,
    seg: Segments,
    n_adapters: int,
    scalings: torch.Tensor | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """(N, P, Q): for each adapter k present, (s_k) sum of left[m]^T right[m] over its rows.

    ``seg`` is the row grouping of :func:`fused_kernels.multi_lora.make_segments`; adapters with
    no rows get zeros.
    """
    fp, fq = left.shape[1], right.shape[1]
    out = torch.zeros(n_adapters, fp, fq, device=left.device, dtype=dtype)
    if seg.width == 0:
        return out
    block_p, block_q = min(64, _block(fp)), min(64, _block(fq))
    grid = (len(seg.unique), triton.cdiv(fp, block_p), triton.cdiv(fq, block_q))
    scale_arg = scalings.contiguous() if scalings is not None else out
    _segment_outer_kernel[grid](
        left, right, *_groups(seg), scale_arg, out,
        fp, fq,
        left.stride(0), left.stride(1), right.stride(0), right.stride(1),
        out.stride(0), out.stride(1), out.stride(2),
        HAS_SCALE=scalings is not None, BLOCK_M=16, BLOCK_P=block_p, BLOCK_Q=block_q,
    )  # fmt: skip
    return out


def multi_lora_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    stack_a: torch.Tensor,
    stack_b: torch.Tensor,
    scalings: torch.Tensor,
    seg: Segments,
    needs: tuple[bool, bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(dx, dA stack, dB stack) of the multi-adapter update; ``needs`` says which to form."""
    n = stack_a.shape[0]
    u = sgmv_shrink(grad, seg, stack_b.transpose(1, 2), None)  # B_k^T g, (M, r)
    grad_x = sgmv_expand(u, seg, stack_a.transpose(1, 2), scalings, x.dtype) if needs[0] else None
    grad_a = segment_outer(u, x, seg, n, scalings, stack_a.dtype) if needs[1] else None
    grad_b = None
    if needs[2]:
        h = sgmv_shrink(x, seg, stack_a, scalings)  # s_k A_k x, recomputed rather than kept
        grad_b = segment_outer(grad, h, seg, n, None, stack_b.dtype)
    return grad_x, grad_a, grad_b
