"""Anchored SFT: DFT token reweighting and the KL anchor to a reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.training import anchored_sft_loss, dft_loss, token_kl


def _logits(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 5, 7, generator=gen, requires_grad=True)
    labels = torch.randint(0, 7, (2, 5), generator=gen)
    labels[0, :2] = -100
    return logits, labels


def test_dft_value_and_gradient_are_probability_weighted_nll() -> None:
    logits, labels = _logits()
    loss = dft_loss(logits, labels)
    valid = labels != -100
    logp = F.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0][valid]
    torch.testing.assert_close(loss, -(logp.exp() * logp).mean())
    (grad,) = torch.autograd.grad(loss, logits)
    weights = logp.detach().exp()  # stop-gradient: the weight is a constant
    (expected,) = torch.autograd.grad(-(weights * logp).mean(), logits)
    torch.testing.assert_close(grad, expected)


def test_token_kl_is_zero_against_itself_and_matches_the_definition() -> None:
    logits, labels = _logits()
    assert token_kl(logits, logits.detach(), labels).abs().item() < 1e-6
    ref, _ = _logits(1)
    valid = labels != -100
    p, q = F.log_softmax(logits[valid], -1), F.log_softmax(ref[valid], -1)
    torch.testing.assert_close(token_kl(logits, ref, labels), (p.exp() * (p - q)).sum(-1).mean())


def test_anchored_loss_is_dft_plus_weighted_kl() -> None:
    logits, labels = _logits()
    ref, _ = _logits(1)
    expected = dft_loss(logits, labels) + 0.1 * token_kl(logits, ref, labels)
    torch.testing.assert_close(anchored_sft_loss(logits, labels, ref, kl_weight=0.1), expected)
    torch.testing.assert_close(anchored_sft_loss(logits, labels), dft_loss(logits, labels))


def test_bad_shapes_and_weights_are_named() -> None:
    logits, labels = _logits()
    with pytest.raises(ValueError, match="do not match labels"):
        dft_loss(logits, labels[:, :3])
    with pytest.raises(ValueError, match="reference logits"):
        token_kl(logits, logits[:, :3], labels)
    with pytest.raises(ValueError, match="kl_weight=-1"):
        anchored_sft_loss(logits, labels, logits, kl_weight=-1)
    all_ignored = torch.full_like(labels, -100)
    assert dft_loss(logits, all_ignored).item() == 0.0
