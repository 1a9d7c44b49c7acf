"""The causal language-modelling loss, optionally through the fused linear cross-entropy.

With ``fused=True`` the (tokens x vocab) logits are never materialised: the decoder's last
hidden states go straight into :func:`fused_kernels.cross_entropy.linear_cross_entropy` with the
output head's weight. With ``fused=False`` it is the usual logits + cross-entropy, equal to
what a Hugging Face causal LM returns as ``.loss``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from core.adapters import AdapterLayer
from fused_kernels.cross_entropy import linear_cross_entropy


def _decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    decoder = getattr(model, "base_model", None)
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if decoder is None or decoder is model or head is None:
        raise TypeError(
            f"causal_lm_loss needs a Hugging Face causal LM (with .base_model and an output "
            f"head), got {type(model).__name__}; pass fused=False or compute the loss yourself."
        )
    return decoder, head


def causal_lm_loss(
    model: nn.Module,
    input_ids: Tensor,
    labels: Tensor | None = None,
    attention_mask: Tensor | None = None,
    fused: bool = True,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    position_ids: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Mean next-token cross-entropy of a causal LM; ``labels`` default to ``input_ids``.

    Tokens whose label is ``ignore_index`` do not count (prompt tokens, padding).
    ``attention_mask`` may be the usual 2D padding mask or a prepared 4D mask (packed
    sequences, with ``position_ids`` restarting per sequence). ``reduction="none"`` returns
    the ``(batch, length - 1)`` per-token losses (0 where ignored), e.g. for per-task means;
    ``"sum"`` their sum.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction={reduction!r} must be one of mean, sum, none.")
    labels = input_ids if labels is None else labels
    shifted = labels[:, 1:]
    extra = {} if position_ids is None else {"position_ids": position_ids}
    if not fused:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]),
            shifted.reshape(-1),
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            reduction=reduction,
        )
        return loss.reshape(shifted.shape) if reduction == "none" else loss
    decoder, head = _decoder_and_head(model)
    if isinstance(head, AdapterLayer):
        raise ValueError(
            "the output head carries an adapter, which the fused loss does not apply; leave "
            "lm_head out of target_modules or pass fused=False."
        )
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, **extra)
    return linear_cross_entropy(
        hidden.last_hidden_state[:, :-1],
        head.weight,
        shifted,
        bias=getattr(head, "bias", None),
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        reduction=reduction,
    )
