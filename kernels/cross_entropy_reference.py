"""PyTorch reference of the row step of the fused linear cross-entropy.

For a block of logits rows it returns each row's loss and, on request, overwrites the
block with d(loss)/d(logits) (times a per-row or scalar scale). With label smoothing e over
V classes the loss of a row with logits z and label y is

    loss = lse(z) - (1 - e) z_y - e * mean(z)

(PyTorch's definition: (1 - e) * NLL + e * mean over classes of -log p), whose gradient is

    d loss / d z_j = softmax(z)_j - e / V - (1 - e) [j == y].

Rows whose label is ``ignore_index`` have loss 0 and gradient 0.
"""

from __future__ import annotations

import torch
from torch import Tensor


def cross_entropy_rows(
    logits: Tensor,
    labels: Tensor,
    ignore_index: int,
    smoothing: float,
    grad_scale: Tensor | float | None,
) -> Tensor:
    """Loss per row of an fp32 ``logits`` block; with ``grad_scale`` the block becomes its grad."""
    vocab = logits.shape[1]
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    lse = torch.logsumexp(logits, dim=1)
    target = logits.gather(1, safe[:, None]).squeeze(1)
    loss = lse - (1 - smoothing) * target
    if smoothing:
        loss = loss - smoothing * logits.mean(dim=1)
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    if grad_scale is not None:
        logits.sub_(lse[:, None]).exp_()
        if smoothing:
            logits.sub_(smoothing / vocab)
        rows = torch.arange(logits.shape[0], device=logits.device)
        logits[rows, safe] -= 1 - smoothing
        scale = valid.to(logits.dtype)
        scale = scale * grad_scale if isinstance(grad_scale, Tensor) else scale * float(grad_scale)
        logits.mul_(scale[:, None])
    return loss
