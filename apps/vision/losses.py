"""The contrastive objectives of the image-text methods (LiT alignment, FLYP, m2-mix).

- :func:`contrastive_loss`: CLIP's symmetric loss; with labels, every caption of an image's
  class counts as a positive (captions repeat within a batch when they name classes).
- :func:`geodesic_mixup_loss`: m2-mix (So et al., 2023), hard negatives mixed on the
  geodesic between the two modalities (:func:`slerp`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["contrastive_loss", "geodesic_mixup_loss", "slerp"]


def contrastive_loss(
    image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor | float, labels: Tensor | None = None
) -> Tensor:
    """Symmetric CLIP loss; with ``labels``, pairs of the same class all count as positives.

    ``image_emb`` and ``text_emb`` are (B, D) normalized embeddings of matched pairs. The
    target of row i is uniform over the columns j with ``labels[j] == labels[i]`` (just j=i
    without labels, CLIP's loss exactly).
    """
    logits = logit_scale * image_emb @ text_emb.t()
    if labels is None:
        target = torch.eye(len(image_emb), device=logits.device)
    else:
        target = (labels[:, None] == labels[None, :]).float()
    target = target / target.sum(1, keepdim=True)
    loss_i = -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
    loss_t = -(target * F.log_softmax(logits.t(), dim=1)).sum(1).mean()
    return 0.5 * (loss_i + loss_t)


def slerp(a: Tensor, b: Tensor, lam: Tensor) -> Tensor:
    """Spherical interpolation between unit vectors: ``lam=0`` gives ``a``, ``lam=1`` ``b``."""
    cos = (a * b).sum(-1, keepdim=True).clamp(-1 + 1e-6, 1 - 1e-6)
    theta = torch.acos(cos)
    lam = lam.view(-1, 1)
    out = (torch.sin((1 - lam) * theta) * a + torch.sin(lam * theta) * b) / torch.sin(theta)
    return F.normalize(out, dim=-1)


def geodesic_mixup_loss(
    image_emb: Tensor, text_emb: Tensor, labels: Tensor, scale: Tensor | float, lam: Tensor
) -> Tensor:
    """m2-mix (So et al., 2023): hard negatives on the geodesic between the two modalities.

    ``m_i = slerp(image_i, text_i, lam_i)`` lies between a matched pair. Each image is scored
    against every caption (positives: captions of its class) plus the mixed embeddings of
    other classes as extra negatives; the same for each caption against the images.
    """
    mixed = slerp(image_emb, text_emb, lam)
    other = labels[:, None] != labels[None, :]
    target = (~other).float()
    target = target / target.sum(1, keepdim=True)

    def one_side(q: Tensor, keys: Tensor) -> Tensor:
        pos = scale * q @ keys.t()
        neg = (scale * q @ mixed.t()).masked_fill(~other, float("-inf"))
        logp = F.log_softmax(torch.cat([pos, neg], 1), dim=1)[:, : len(keys)]
        return -(target * logp).sum(1).mean()

    return 0.5 * (one_side(image_emb, text_emb) + one_side(text_emb, image_emb))
