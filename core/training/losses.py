"""Training losses beyond plain cross-entropy.

Anchored SFT (ASFT; Zhu et al., 2025) for token models: Dynamic Fine-Tuning's reweighted
token loss plus a small KL anchor to a reference model.

- **DFT** reweights each target token's negative log-likelihood by its own (stop-gradient)
  probability: ``-sg(p(y_t)) * log p(y_t)``. Confident tokens keep their weight, tokens the
  model finds unlikely are down-weighted, which tightens the RL bound that SFT optimizes
  but lets the distribution drift.
- **Anchoring** adds ``kl_weight * KL(p_theta(.|ctx) || p_ref(.|ctx))`` per position
  against a frozen reference (the model before fine-tuning), which stops the drift.

Both are averaged over the labelled positions (``labels != ignore_index``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["anchored_sft_loss", "dft_loss", "token_kl"]


def _flatten(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    if logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"logits of shape {tuple(logits.shape)} do not match labels of shape "
            f"{tuple(labels.shape)}; expected logits (..., vocab) and labels (...). Shift "
            "them first for next-token prediction."
        )
    return logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1)


def dft_loss(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Dynamic Fine-Tuning token loss ``mean_t -sg(p(y_t)) log p(y_t)`` over labelled tokens."""
    flat, target = _flatten(logits, labels)
    valid = target != ignore_index
    if not valid.any():
        return flat.sum() * 0.0
    logp = F.log_softmax(flat[valid], dim=-1).gather(-1, target[valid, None]).squeeze(-1)
    return -(logp.detach().exp() * logp).mean()


def token_kl(
    logits: Tensor, ref_logits: Tensor, labels: Tensor, ignore_index: int = -100
) -> Tensor:
    """``mean_t KL(softmax(logits_t) || softmax(ref_logits_t))`` over labelled positions."""
    if logits.shape != ref_logits.shape:
        raise ValueError(
            f"reference logits of shape {tuple(ref_logits.shape)} must match the model's "
            f"{tuple(logits.shape)}; run the reference on the same batch."
        )
    flat, target = _flatten(logits, labels)
    ref = ref_logits.reshape(-1, ref_logits.shape[-1]).float().detach()
    valid = target != ignore_index
    if not valid.any():
        return flat.sum() * 0.0
    logp, logq = F.log_softmax(flat[valid], -1), F.log_softmax(ref[valid], -1)
    return (logp.exp() * (logp - logq)).sum(-1).mean()


def anchored_sft_loss(
    logits: Tensor,
    labels: Tensor,
    ref_logits: Tensor | None = None,
    kl_weight: float = 0.05,
    ignore_index: int = -100,
) -> Tensor:
    """ASFT: ``dft_loss + kl_weight * token_kl(model || reference)``.

    Args:
        logits: ``(..., vocab)`` outputs of the model being trained.
        labels: ``(...)`` target ids, ``ignore_index`` where unlabelled.
        ref_logits: Outputs of the frozen reference on the same batch; ``None`` (or
            ``kl_weight == 0``) gives plain DFT.
        kl_weight: Strength of the anchor.
    """
    if kl_weight < 0:
        raise ValueError(f"anchored_sft_loss kl_weight={kl_weight} must be >= 0.")
    loss = dft_loss(logits, labels, ignore_index)
    if ref_logits is None or kl_weight == 0:
        return loss
    return loss + kl_weight * token_kl(logits, ref_logits, labels, ignore_index)
