"""Fused linear cross-entropy: the loss of ``hidden @ W^T (+ b)`` without the full logits.

Rows are processed in chunks: for each chunk the logits block is computed, turned into
per-row losses and, in place, into d(loss)/d(logits), and multiplied back into the hidden
and weight gradients before the next chunk. Peak memory is one chunk of logits instead of
(rows x vocab) logits plus their softmax and gradient (the Liger-Kernel idea).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .amp import autocast_dtype, autocast_off, cast_floating
from .dispatch import backend_for

REDUCTIONS = ("mean", "sum", "none")


def linear_cross_entropy_reference(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> Tensor:
    """The truth, unfused: ``F.cross_entropy(hidden @ W^T + b, labels)`` in fp32."""
    logits = torch.nn.functional.linear(hidden, weight, bias).float()
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, weight.shape[0]), labels.reshape(-1), ignore_index=ignore_index,
        label_smoothing=label_smoothing, reduction=reduction,
    )  # fmt: skip
    return loss.reshape(labels.shape) if reduction == "none" else loss


CHUNK_FACTOR = 8


def default_chunk_size(rows: int, hidden: int, vocab: int) -> int:
    """Rows per chunk so that one logits chunk is about 8x the size of the hidden states.

    Smaller chunks save little more memory but make the GEMMs too thin to run fast.
    """
    size = max(1, math.ceil(CHUNK_FACTOR * rows * hidden / vocab))
    return min(rows, 1 << (size - 1).bit_length())


def _row_step(backend: str):
    if backend == "triton":
        from .cross_entropy_triton import cross_entropy_rows
    else:
        from .cross_entropy_reference import cross_entropy_rows
    return cross_entropy_rows


def _chunked_pass(ctx_like: dict, grad_scale: Tensor | float | None):
    """Loop over row chunks: losses, and (when ``grad_scale`` is given) all gradients."""
    hidden, weight, bias, labels = (ctx_like[k] for k in ("hidden", "weight", "bias", "labels"))
    step = _row_step(ctx_like["backend"])
    rows = hidden.shape[0]
    losses = torch.empty(rows, device=hidden.device, dtype=torch.float32)
    want = ctx_like["needs"]
    grad_h = torch.empty_like(hidden) if grad_scale is not None and want[0] else None
    grad_w = (
        torch.zeros(weight.shape, device=weight.device, dtype=torch.float32)
        if grad_scale is not None and want[1]
        else None
    )
    grad_b = (
        torch.zeros(weight.shape[0], device=weight.device, dtype=torch.float32)
        if grad_scale is not None and bias is not None and want[2]
        else None
    )
    chunk = ctx_like["chunk_size"]
    for start in range(0, rows, chunk):
        sl = slice(start, min(start + chunk, rows))
        h = hidden[sl]
        logits = (h @ weight.T if bias is None else torch.addmm(bias, h, weight.T)).float()
        scale = grad_scale[sl] if isinstance(grad_scale, Tensor) else grad_scale
        losses[sl] = step(
            logits, labels[sl], ctx_like["ignore_index"], ctx_like["smoothing"], scale
        )
        if grad_scale is None:
            continue
        if grad_h is not None:
            grad_h[sl] = (logits.to(weight.dtype) @ weight).to(hidden.dtype)
        if grad_w is not None:
            grad_w.addmm_(logits.T, h.float())
        if grad_b is not None:
            grad_b += logits.sum(dim=0)
    return losses, grad_h, grad_w, grad_b


class FusedLinearCrossEntropy(torch.autograd.Function):
    """Cross-entropy of a linear layer's output, computed chunk by chunk.

    With z = h W^T + b (one row), p = softmax(z) and t the smoothed one-hot target
    (t_j = e / V + (1 - e) [j == y]), the row loss is lse(z) - t . z and

        dL/dz = p - t,    dL/dh = (dL/dz) W,    dL/dW = (dL/dz)^T h,    dL/db = dL/dz,

    each scaled by the upstream gradient (divided by the number of non-ignored rows for
    ``mean``). For ``mean`` and ``sum`` the upstream gradient is a scalar, so the gradients
    are formed during the forward pass while each chunk's logits are at hand, and backward
    only rescales them; for ``none`` backward recomputes each chunk with per-row scales.
    """

    @staticmethod
    def forward(
        ctx, hidden, weight, bias, labels, ignore_index, smoothing, reduction, chunk_size, backend
    ):
        needs = (
            hidden.requires_grad,
            weight.requires_grad,
            bias is not None and bias.requires_grad,
        )
        state = {
            "hidden": hidden.detach(), "weight": weight.detach(),
            "bias": None if bias is None else bias.detach(), "labels": labels,
            "ignore_index": ignore_index, "smoothing": smoothing, "chunk_size": chunk_size,
            "backend": backend, "needs": needs,
        }  # fmt: skip
        valid = (labels != ignore_index).sum()
        ctx.reduction = reduction
        ctx.param_dtype = weight.dtype
        if reduction == "none" or not any(needs):
            losses, *_ = _chunked_pass(state, None)
            ctx.state = state
        else:
            scale = 1.0 / max(int(valid), 1) if reduction == "mean" else 1.0
            losses, gh, gw, gb = _chunked_pass(state, scale)
            ctx.save_for_backward(*(g if g is not None else torch.empty(0) for g in (gh, gw, gb)))
        if reduction == "none":
            return losses.to(hidden.dtype)
        total = losses.sum()
        if reduction == "mean":
            total = total / valid  # nan when every label is ignored, like PyTorch
        return total.to(hidden.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.reduction == "none":
            _, gh, gw, gb = _chunked_pass(ctx.state, grad_out.float())
        else:
            gh, gw, gb = (t if t.numel() else None for t in ctx.saved_tensors)
            gh = gh * grad_out if gh is not None else None
            gw = gw * grad_out if gw is not None else None
            gb = gb * grad_out if gb is not None else None
        gw = gw.to(ctx.param_dtype) if gw is not None else None
        gb = gb.to(ctx.param_dtype) if gb is not None else None
        return gh, gw, gb, None, None, None, None, None, None


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """``F.cross_entropy(hidden @ weight.T + bias, labels)`` without materialising the logits.

    ``hidden`` is (..., H) and ``labels`` (...,) with ``ignore_index`` marking rows that do
    not count; ``reduction`` is ``mean`` (over counted rows), ``sum`` or ``none``.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} must be one of {', '.join(REDUCTIONS)}.")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing={label_smoothing!r} must lie in [0, 1].")
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(
            f"hidden has shape {tuple(hidden.shape)} but labels {tuple(labels.shape)}; labels "
            "need one entry per row of hidden (shift them before the call for causal LMs)."
        )
    if hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"hidden size {hidden.shape[-1]} does not match weight {tuple(weight.shape)} "
            "(expected (vocab, hidden))."
        )
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be class indices (integers), got {labels.dtype}.")
    dtype = autocast_dtype(hidden)
    if dtype is not None:
        # As autocast runs the unfused pair: the linear in its dtype, the loss in fp32.
        hidden, weight, bias = cast_floating(dtype, hidden, weight, bias)
        with autocast_off(hidden):
            loss = linear_cross_entropy(
                hidden, weight, labels, bias, ignore_index, label_smoothing, reduction, chunk_size
            )
        return loss.float()
    if hidden.dtype != weight.dtype or (bias is not None and bias.dtype != weight.dtype):
        raise ValueError(
            f"hidden ({hidden.dtype}), weight ({weight.dtype}) and bias must share one dtype; "
            "cast them, or run under torch.autocast."
        )
    _check_label_range(labels, weight.shape[0], ignore_index)
    out_shape = labels.shape
    hidden2 = hidden.reshape(-1, hidden.shape[-1])
    labels2 = labels.reshape(-1)
    chunk = chunk_size or default_chunk_size(*hidden2.shape, weight.shape[0])
    loss = FusedLinearCrossEntropy.apply(
        hidden2, weight, bias, labels2, ignore_index, float(label_smoothing), reduction, chunk,
        backend_for(hidden2),
    )  # fmt: skip
    return loss.reshape(out_shape) if reduction == "none" else loss


def _check_label_range(labels: Tensor, vocab: int, ignore_index: int) -> None:
    """Every counted label must name a vocabulary row; the Triton kernel would read past
    the logits otherwise, and the reference fail with a bare index error."""
    if labels.numel() == 0:
        return
    low, high = torch.aminmax(labels.masked_fill(labels == ignore_index, 0))
    if int(low) < 0 or int(high) >= vocab:
        raise ValueError(
            f"labels must lie in [0, {vocab - 1}] (vocab {vocab}) or equal ignore_index="
            f"{ignore_index}; got min {int(low)}, max {int(high)}. Check the tokenizer's "
            "vocabulary against the output layer, and mark padding with ignore_index."
        )
