"""Multi-adapter LoRA: one batch, many adapters, each row served by its own (Punica/S-LoRA).

    delta[m] = s_k * B_k (A_k x[m])   with k = ids[m]   (k = -1: no adapter, delta = 0)

The adapters live in stacks A (N, r_max, in) and B (N, out, r_max); smaller ranks are
zero-padded, which contributes nothing and receives zero gradient. The base GEMM stays one
GEMM for the whole batch (the caller adds ``x W^T + b``).

The reference groups rows by adapter (SGMV): rows are sorted by id and packed into
(adapters present, rows per adapter, in), and two batched matmuls apply every adapter to
its own rows. When every adapter of the stack is present, the stacks are used as they are,
without gathering a copy per row. The Triton backend (:mod:`fused_kernels.multi_lora_triton`)
groups the same way without packing: each program takes a block of one adapter's rows
through the sorted order, loads that adapter's factors once and multiplies on tensor cores,
in the forward pass, for dx and for the weight gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .amp import autocast_dtype, autocast_off, cast_floating
from .dispatch import backend_for


@dataclass(frozen=True)
class Segments:
    """Rows grouped by adapter id: the packing plan shared by forward and backward."""

    order: Tensor  # row indices with id >= 0, sorted by id
    unique: Tensor  # adapter ids present, ascending
    counts: Tensor  # rows of each adapter present
    slots: Tensor | None  # position of each sorted row in the packed layout (None if dense)
    width: int  # rows of the largest group
    n_rows: int  # rows in the batch, with or without an adapter
    dense: bool  # every group has `width` rows: packing is a plain reshape
    whole_stack: bool  # unique == arange(N): stacks need no gather
    identity: bool  # rows are already grouped in order: packing is a view
    single: int | None = None  # the one adapter serving every row, if that is the case


def make_segments(ids: Tensor, n_adapters: int) -> Segments:
    """Group the rows of ``ids`` (one adapter id per row, -1 for none) by adapter.

    Called once per batch on the serving path, so the usual case (every row has an adapter
    and rows already come in adapter order) skips the sort and the identity checks.
    """
    n_rows = ids.shape[0]
    low = 0
    if n_rows:
        low, high = (int(v) for v in torch.aminmax(ids))
        if low < -1 or high >= n_adapters:
            raise ValueError(
                f"adapter ids must lie in [-1, {n_adapters - 1}] (-1: no adapter) for "
                f"{n_adapters} adapters; got min {low}, max {high}."
            )
    in_order = n_rows > 0 and low >= 0 and bool((ids[1:] >= ids[:-1]).all())
    if in_order:
        order, sorted_ids = torch.arange(n_rows, device=ids.device), ids
    else:
        order = torch.argsort(ids, stable=True)
        if low < 0:
            order = order[ids[order] >= 0]
        sorted_ids = ids[order]
    unique, counts = torch.unique_consecutive(sorted_ids, return_counts=True)
    width = int(counts.max()) if counts.numel() else 0
    dense = bool(counts.numel()) and bool((counts == width).all())
    slots = None
    if not dense:
        starts = torch.cumsum(counts, 0) - counts
        group = torch.repeat_interleave(torch.arange(len(unique), device=ids.device), counts)
        position = torch.arange(len(order), device=ids.device) - starts[group]
        slots = group * width + position
    # unique is strictly increasing within [0, N-1], so holding N ids means all of them; and
    # the sorted order is the identity exactly when the rows came in order.
    whole = len(unique) == n_adapters
    identity = dense and in_order
    single = int(unique[0]) if identity and len(unique) == 1 else None
    return Segments(order, unique, counts, slots, width, n_rows, dense, whole, identity, single)


def pack(rows: Tensor, seg: Segments) -> Tensor:
    """(M, F) rows -> (U, width, F) groups (zero-padded when groups differ in size)."""
    if seg.identity:
        return rows.view(len(seg.unique), seg.width, rows.shape[1])
    picked = rows.index_select(0, seg.order)
    if seg.dense:
        return picked.view(len(seg.unique), seg.width, rows.shape[1])
    packed = rows.new_zeros(len(seg.unique) * seg.width, rows.shape[1])
    packed.index_copy_(0, seg.slots, picked)
    return packed.view(len(seg.unique), seg.width, rows.shape[1])


def unpack(groups: Tensor, seg: Segments, n_rows: int) -> Tensor:
    """(U, width, F) groups -> (M, F) rows; rows without an adapter get zeros."""
    flat = groups.reshape(-1, groups.shape[-1])
    if seg.identity:
        return flat
    values = flat if seg.dense else flat.index_select(0, seg.slots)
    if len(seg.order) == n_rows:  # every row is written: no need to zero first
        out = groups.new_empty(n_rows, groups.shape[-1])
    else:
        out = groups.new_zeros(n_rows, groups.shape[-1])
    out.index_copy_(0, seg.order, values)
    return out


def _select(stack: Tensor, seg: Segments) -> Tensor:
    """The stack rows of the adapters present: the stack itself when all are, a view (no
    copy, the stack's own memory layout) when one serves every row, else a gathered copy."""
    if seg.whole_stack:
        return stack
    if seg.single is not None:
        return stack.narrow(0, seg.single, 1)
    return stack.index_select(0, seg.unique)


def _scatter(grads: Tensor, stack: Tensor, seg: Segments) -> Tensor:
    if seg.whole_stack:
        return grads
    full = torch.zeros_like(stack)
    full.index_copy_(0, seg.unique, grads)
    return full


def _shrink(x, stack_a, stack_b, scalings, seg):
    """First half of the reference update, per group: (packed x, h = s X A^T, A_u, B_u, s_u)."""
    xs = pack(x, seg)
    a, b = _select(stack_a, seg), _select(stack_b, seg)
    s = _select(scalings, seg)
    s = (s if s.dtype == x.dtype else s.to(x.dtype)).view(-1, 1, 1)
    h = torch.bmm(xs, a.transpose(1, 2)).mul_(s)
    return xs, h, a, b, s


def _forward(x, stack_a, stack_b, scalings, seg):
    """Reference update and what its backward needs: (delta, (packed x, h, A_u, B_u, s_u))."""
    saved = _shrink(x, stack_a, stack_b, scalings, seg)
    h, b = saved[1], saved[3]
    delta = unpack(torch.bmm(h, b.transpose(1, 2)), seg, x.shape[0])
    return delta, saved


def _delta(x, stack_a, stack_b, scalings, backend, seg):
    """The update alone (no autograd), on either backend."""
    if seg.width == 0:
        return x.new_zeros(x.shape[0], stack_b.shape[1])
    if backend == "triton":
        from .multi_lora_triton import sgmv

        return sgmv(x, seg, stack_a, stack_b, scalings)
    return _forward(x, stack_a, stack_b, scalings, seg)[0]


class MultiLoraDelta(torch.autograd.Function):
    """Per-row LoRA update with per-row adapters; backward derived per adapter group.

    For a group of rows X_k (c, in) served by adapter k with H_k = s_k X_k A_k^T (c, r) and
    output D_k = H_k B_k^T (c, out), and upstream gradient G_k (c, out):

        dL/dB_k = G_k^T H_k                  (out, r)
        U_k     = G_k B_k                    (c, r)     gradient reaching H_k
        dL/dA_k = s_k U_k^T X_k              (r, in)
        dL/dX_k = s_k U_k A_k                (c, in)

    Adapters absent from the batch get zero gradient; rows with id -1 get dX = 0.
    """

    @staticmethod
    def forward(ctx, x, ids, stack_a, stack_b, scalings, backend, segments):
        seg = segments if segments is not None else make_segments(ids, stack_a.shape[0])
        ctx.seg, ctx.n_rows, ctx.backend = seg, x.shape[0], backend
        ctx.empty = seg.width == 0
        if ctx.empty:
            ctx.save_for_backward(stack_a, stack_b)
            return x.new_zeros(x.shape[0], stack_b.shape[1])
        if backend == "triton":
            ctx.save_for_backward(x, scalings, stack_a, stack_b)
            return _delta(x, stack_a, stack_b, scalings, backend, seg)
        delta, saved = _forward(x, stack_a, stack_b, scalings, seg)
        ctx.save_for_backward(*saved, stack_a, stack_b)
        return delta

    @staticmethod
    def backward(ctx, grad):
        if ctx.empty:
            stack_a, stack_b = ctx.saved_tensors
            zeros = (torch.zeros_like(stack_a), torch.zeros_like(stack_b))
            return None, None, *zeros, None, None, None
        seg = ctx.seg
        if ctx.backend == "triton":
            from .multi_lora_triton import multi_lora_backward

            x, scalings, stack_a, stack_b = ctx.saved_tensors
            needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[2], ctx.needs_input_grad[3])
            grad_x, grad_a, grad_b = multi_lora_backward(
                grad.contiguous(), x, stack_a, stack_b, scalings, seg, needs
            )
            return grad_x, None, grad_a, grad_b, None, None, None
        xs, h, a, b, s, stack_a, stack_b = ctx.saved_tensors
        gs = pack(grad.contiguous(), seg)
        grad_b = torch.bmm(gs.transpose(1, 2), h)
        u = torch.bmm(gs, b)
        grad_a = torch.bmm(u.transpose(1, 2), xs).mul_(s)
        grad_x = unpack(torch.bmm(u, a).mul_(s), seg, ctx.n_rows)
        return (
            grad_x,
            None,
            _scatter(grad_a, stack_a, seg),
            _scatter(grad_b, stack_b, seg),
            None,
            None,
            None,
        )


def _check_inputs(x: Tensor, ids: Tensor, stack_a: Tensor, stack_b: Tensor) -> None:
    if ids.shape != x.shape[:1]:
        raise ValueError(
            f"ids must hold one adapter id per row: got {tuple(ids.shape)} for {x.shape[0]} rows."
        )
    if ids.is_floating_point() or ids.is_complex():
        raise ValueError(f"ids must be an integer tensor, got {ids.dtype}; pass ids.long().")
    if stack_a.shape[0] != stack_b.shape[0] or stack_a.shape[1] != stack_b.shape[2]:
        raise ValueError(
            f"stacks do not match: A {tuple(stack_a.shape)} should be (N, r, in) and "
            f"B {tuple(stack_b.shape)} (N, out, r)."
        )
    if x.dim() != 2 or x.shape[1] != stack_a.shape[2]:
        raise ValueError(
            f"x has shape {tuple(x.shape)}; expected (rows, {stack_a.shape[2]}) to match "
            f"stack A {tuple(stack_a.shape)} (N, r, in). Flatten leading dims first."
        )


def _check_dtypes(x: Tensor, stack_a: Tensor, stack_b: Tensor) -> None:
    if len({x.dtype, stack_a.dtype, stack_b.dtype}) > 1:
        raise ValueError(
            f"x ({x.dtype}), stack A ({stack_a.dtype}) and stack B ({stack_b.dtype}) must "
            "share one dtype; cast the stacks to the activations' dtype, or run under "
            "torch.autocast."
        )


def multi_lora_delta(
    x: Tensor,
    ids: Tensor,
    stack_a: Tensor,
    stack_b: Tensor,
    scalings: Tensor,
    segments: Segments | None = None,
) -> Tensor:
    """``s_k B_k A_k x[m]`` for every row m with k = ids[m] (zero where ids[m] == -1).

    Shapes: x (M, in), ids (M,) integer, stack_a (N, r, in), stack_b (N, out, r),
    scalings (N,). Returns (M, out). ``segments`` (from :func:`make_segments` on the same
    ids) can be passed in to share the grouping across the layers of a model. Any strides
    work; a ``stack_b`` whose (N, r, out) transpose is contiguous is read fastest.
    """
    _check_inputs(x, ids, stack_a, stack_b)
    dtype = autocast_dtype(x)
    if dtype is not None:
        x, stack_a, stack_b = cast_floating(dtype, x, stack_a, stack_b)
        with autocast_off(x):
            return multi_lora_delta(x, ids, stack_a, stack_b, scalings, segments)
    _check_dtypes(x, stack_a, stack_b)
    ids = ids.long()
    backend = backend_for(x)
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or stack_a.requires_grad or stack_b.requires_grad
    )
    if not needs_grad:  # serving: skip the autograd machinery and what it would keep
        seg = segments if segments is not None else make_segments(ids, stack_a.shape[0])
        return _delta(x, stack_a, stack_b, scalings, backend, seg)
    return MultiLoraDelta.apply(x, ids, stack_a, stack_b, scalings, backend, segments)


def multi_lora_accumulate_(
    out: Tensor,
    x: Tensor,
    ids: Tensor,
    stack_a: Tensor,
    stack_b: Tensor,
    scalings: Tensor,
    segments: Segments | None = None,
) -> Tensor:
    """Serving: ``out += multi_lora_delta(x, ids, ...)`` in place, without autograd.

    No (M, out) update is allocated, written and added where it can be avoided: the Triton
    expand kernel adds into ``out`` itself. On the reference backend, one adapter serving
    the whole batch is two plain matmuls, the second adding into ``out`` (``addmm_``); rows
    already grouped by adapter in order (for example one adapter per sample with ids 0, 1,
    2, ...) take batched matmuls, the second accumulating into ``out`` (``baddbmm_``).
    Otherwise it adds :func:`multi_lora_delta`. ``out`` is (M, out); returns it.
    """
    if torch.is_grad_enabled() and (
        x.requires_grad or stack_a.requires_grad or stack_b.requires_grad or out.requires_grad
    ):
        raise RuntimeError(
            "multi_lora_accumulate_ works in place for serving; under autograd use "
            "out + multi_lora_delta(...) instead (or wrap the call in torch.no_grad())."
        )
    _check_inputs(x, ids, stack_a, stack_b)
    if out.shape != (x.shape[0], stack_b.shape[1]):
        raise ValueError(
            f"out has shape {tuple(out.shape)}; expected ({x.shape[0]}, {stack_b.shape[1]})."
        )
    if autocast_dtype(x) is not None or {x.dtype, stack_a.dtype, stack_b.dtype} != {out.dtype}:
        # Autocast or mixed dtypes: form the update in the op's own dtype, add with promotion.
        return out.add_(multi_lora_delta(x, ids, stack_a, stack_b, scalings, segments))
    seg = segments if segments is not None else make_segments(ids.long(), stack_a.shape[0])
    return accumulate_grouped_(out, x, stack_a, stack_b, scalings, seg, backend_for(x))


def accumulate_grouped_(
    out: Tensor,
    x: Tensor,
    stack_a: Tensor,
    stack_b: Tensor,
    scalings: Tensor,
    segments: Segments,
    backend: str,
) -> Tensor:
    """The in-place update of :func:`multi_lora_accumulate_` without its checks.

    For a caller that serves many layers per batch and has already made sure, once per
    batch, of what that function checks on every call: no autograd and no autocast; ``out``
    (M, out) and ``x`` (M, in) share the stacks' dtype; ``segments`` comes from
    :func:`make_segments` on this batch's ids; ``backend`` from
    :func:`fused_kernels.dispatch.backend_for`. ``AdapterBank`` calls it from every stacked layer.
    """
    seg = segments
    if seg.width == 0:
        return out
    if backend == "triton":  # the expand kernel adds into out itself
        from .multi_lora_triton import sgmv

        return sgmv(x, seg, stack_a, stack_b, scalings, out=out)
    if seg.single is not None:  # one adapter for the whole batch: two plain matmuls
        k = seg.single
        return out.addmm_(x @ stack_a[k].T, stack_b[k].T, alpha=float(scalings[k]))
    if seg.identity and out.is_contiguous():
        _, h, _, b, _ = _shrink(x, stack_a, stack_b, scalings, seg)
        out.view(len(seg.unique), seg.width, out.shape[1]).baddbmm_(h, b.transpose(1, 2))
        return out
    return out.add_(_delta(x, stack_a, stack_b, scalings, backend, seg))


def multi_lora_reference(
    x: Tensor, ids: Tensor, stack_a: Tensor, stack_b: Tensor, scalings: Tensor
) -> Tensor:
    """The truth, row by row in plain autograd (slow; for tests)."""
    rows = []
    for m in range(x.shape[0]):
        k = int(ids[m])
        if k < 0:
            rows.append(x.new_zeros(stack_b.shape[1]))
        else:
            rows.append(scalings[k] * (stack_b[k] @ (stack_a[k] @ x[m])))
    return torch.stack(rows) if rows else x.new_zeros(0, stack_b.shape[1])
