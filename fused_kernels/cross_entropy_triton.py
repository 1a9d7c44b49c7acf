"""Triton kernel of the fused linear cross-entropy's row step (see ``cross_entropy_reference``).

One program per row: a first sweep over the vocabulary keeps a running max and sum of
exponentials (online softmax), the label's logit and the logits' sum; a second sweep writes
the gradient over the logits in place. Only the row's block of logits is ever in memory.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _ce_rows_kernel(
    logits_ptr, labels_ptr, loss_ptr, scale_ptr,
    V, stride_row, ignore_index, smoothing, scalar_scale,
    HAS_ROW_SCALE: tl.constexpr, WRITE_GRAD: tl.constexpr, BLOCK_V: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    base = logits_ptr + row * stride_row
    label = tl.load(labels_ptr + row)
    valid = label != ignore_index
    running_max = -float("inf")
    running_sum = 0.0
    target = 0.0
    total = 0.0
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        z = tl.load(base + cols, mask=cols < V, other=-float("inf")).to(tl.float32)
        block_max = tl.max(z, axis=0)
        new_max = tl.maximum(running_max, block_max)
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(
            tl.exp(z - new_max), axis=0
        )
        running_max = new_max
        target += tl.sum(tl.where(cols == label, z, 0.0), axis=0)
        total += tl.sum(tl.where(cols < V, z, 0.0), axis=0)
    lse = running_max + tl.log(running_sum)
    loss = lse - (1.0 - smoothing) * target - smoothing * total / V
    loss = tl.where(valid, loss, 0.0)
    tl.store(loss_ptr + row, loss)
    if WRITE_GRAD:
        if HAS_ROW_SCALE:  # noqa: SIM108 (constexpr branch: only one side is compiled)
            scale = tl.load(scale_ptr + row).to(tl.float32)
        else:
            scale = scalar_scale
        scale = tl.where(valid, scale, 0.0)
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            z = tl.load(base + cols, mask=cols < V, other=0.0).to(tl.float32)
            grad = tl.exp(z - lse) - smoothing / V
            grad = tl.where(cols == label, grad - (1.0 - smoothing), grad)
            tl.store(base + cols, grad * scale, mask=cols < V)


def cross_entropy_rows(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int,
    smoothing: float,
    grad_scale: torch.Tensor | float | None,
) -> torch.Tensor:
    """Same contract as the reference: per-row loss; with ``grad_scale``, grads in place."""
    rows, vocab = logits.shape
    assert logits.stride(1) == 1, "logits rows must be contiguous"
    loss = torch.empty(rows, device=logits.device, dtype=torch.float32)
    row_scale = isinstance(grad_scale, torch.Tensor)
    scale_arg = grad_scale.float().contiguous() if row_scale else loss
    block = min(4096, triton.next_power_of_2(vocab))
    _ce_rows_kernel[(rows,)](
        logits, labels.contiguous(), loss, scale_arg,
        vocab, logits.stride(0), int(ignore_index), float(smoothing),
        0.0 if row_scale or grad_scale is None else float(grad_scale),
        HAS_ROW_SCALE=row_scale, WRITE_GRAD=grad_scale is not None, BLOCK_V=block,
    )  # fmt: skip
    return loss
