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
    """Loss per row of an fp32 ``logits`` block, which is used as scratch space; with
    ``grad_scale`` the block ends up holding its gradient.

    Five passes over the block (max, subtract-and-exp in place, sum, rescale in place),
    with no block-sized temporary: ``torch.logsumexp`` would allocate one and a later
    softmax would exponentiate a second time.
    """
    vocab = logits.shape[1]
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    target = logits.gather(1, safe[:, None]).squeeze(1)
    smooth_term = smoothing * logits.mean(dim=1) if smoothing else None
    top = logits.amax(dim=1, keepdim=True)
    exp = logits.sub_(top).exp_()  # in place: the block now holds exp(z - max)
    total = exp.sum(dim=1, keepdim=True)
    lse = (top + total.log()).squeeze(1)
    loss = lse - (1 - smoothing) * target
    if smooth_term is not None:
        loss = loss - smooth_term
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    if grad_scale is not None:
        scale = valid.to(logits.dtype)
        scale = scale * grad_scale if isinstance(grad_scale, Tensor) else scale * float(grad_scale)
        exp.mul_((scale / total.squeeze(1))[:, None])  # softmax times the row's scale
        if smoothing:
            exp.sub_((smoothing / vocab) * scale[:, None])
        rows = torch.arange(logits.shape[0], device=logits.device)
        exp[rows, safe] -= (1 - smoothing) * scale
    return loss
