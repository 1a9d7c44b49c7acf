"""The diagonal Fisher of a continuous-action policy, for EWC (``core.regularizers.EWC``).

The core's estimator assumes a categorical output (classifier logits, token models). The
L1 chunk head (OpenVLA-OFT) regresses actions with an L1 loss: the negative log-likelihood
of a Laplace distribution with unit scale, ``log p(a | x) = -sum_k |a_k - mu_k(x)| + const``
over the unpadded steps ``k`` of the chunk (normalised actions). Its score is
``sum_k sign(a_k - mu_k) d mu_k / d theta``, so:

- ``"sampled"`` (the true Fisher, one Monte Carlo draw per sample): ``a ~ p(. | x)`` makes
  each ``sign(a_k - mu_k)`` an independent fair +-1, and the estimate is the squared
  gradient of ``sum_k s_k mu_k`` with random signs ``s``; its expectation over the signs is
  ``sum_k (d mu_k / d theta)^2`` (the cross terms vanish);
- ``"expected"``: that expectation exactly, one backward pass per action element (chunk x
  action_dim times the cost; for tests and small models);
- ``"true"``: the demonstration's action as the label (the empirical Fisher).

Every estimate is a mean over samples of *per-sample* squared gradients (one backward pass
per sample; the text tower's string inputs rule out ``vmap``), with the policy in eval mode.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from core.regularizers.snapshot import eval_mode

from .policy import VLAPolicy

FisherLabels = Literal["sampled", "expected", "true"]
FISHER_LABELS = ("sampled", "expected", "true")


def policy_fisher(
    policy: VLAPolicy,
    batches: Iterable[dict[str, Any]],
    params: dict[str, nn.Parameter],
    generator: torch.Generator | None = None,
    *,
    labels: FisherLabels = "sampled",
    max_samples: int | None = None,
) -> dict[str, Tensor]:
    """Diagonal Fisher ``{name: F}`` of ``params`` over the samples of ``batches``.

    ``batches`` are training batches (normalised, as the data module gives them); the
    signature is ``core.regularizers.EWC``'s ``fisher_fn`` (see the module docstring for
    ``labels``). ``max_samples`` stops after that many samples.
    """
    if labels not in FISHER_LABELS:
        raise ValueError(f"labels={labels!r}: choose one of {FISHER_LABELS}")
    if policy.head.name != "l1_chunk":
        raise ValueError(
            f"policy_fisher models the l1_chunk head's Laplace likelihood; this policy's head "
            f"is {policy.head.name!r}. Use the l1_chunk head for EWC, or write the Fisher of "
            "its likelihood."
        )
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples={max_samples} must be >= 1 or None")
    names, tensors = list(params), list(params.values())
    total = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    device = policy.device
    seen = 0
    with eval_mode(policy), torch.enable_grad():
        for batch in batches:
            pad = batch.get("action_pad")
            for i in range(len(batch["instruction"])):
                if max_samples is not None and seen >= max_samples:
                    break
                feats = policy.features(
                    batch["image"][i : i + 1].to(device),
                    batch["proprio"][i : i + 1].to(device),
                    batch["instruction"][i : i + 1],
                )
                mu = policy.head(feats)[0]  # (chunk, A)
                valid = torch.ones(mu.shape[0], dtype=torch.bool, device=device)
                if pad is not None:
                    valid = ~pad[i].to(device)
                for score in _scores(mu, valid, batch["action"][i].to(device), labels, generator):
                    grads = torch.autograd.grad(
                        score, tensors, retain_graph=True, allow_unused=True
                    )
                    for name, g in zip(names, grads, strict=True):
                        if g is not None:
                            total[name] += g.detach().float().pow(2)
                seen += 1
            if max_samples is not None and seen >= max_samples:
                break
    if not seen:
        raise ValueError("policy_fisher: the batches held no samples; pass the task's data")
    return {n: t / seen for n, t in total.items()}


def _scores(
    mu: Tensor,
    valid: Tensor,
    action: Tensor,
    labels: str,
    generator: torch.Generator | None,
) -> list[Tensor]:
    """The scalars whose squared gradients, summed, are one sample's Fisher estimate."""
    kept = mu[valid]  # (steps, A)
    if labels == "expected":
        return list(kept.reshape(-1))
    if labels == "true":
        target = action.to(mu.dtype)[valid]
        return [-(kept - target).abs().sum()]
    signs = torch.randint(0, 2, kept.shape, generator=generator).to(kept) * 2 - 1
    return [(signs * kept).sum()]


__all__ = ["FISHER_LABELS", "policy_fisher"]
