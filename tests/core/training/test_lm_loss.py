"""causal_lm_loss: the fused path equals the unfused one and Hugging Face's own loss."""

from __future__ import annotations

import pytest
import torch

from core.adapters import LoraConfig, inject, trainable_parameters
from core.training.lm_loss import causal_lm_loss
from tests.core.adapters.models import MODEL_CASES


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_fused_equals_unfused_and_hf(family: str) -> None:
    case = MODEL_CASES[family]
    model = case.build()
    inject(model, LoraConfig(r=4, target_modules=case.linear_targets))
    with torch.no_grad():
        for p in trainable_parameters(model).values():
            p.add_(0.1 * torch.randn_like(p))
    ids = case.make_input()
    labels = ids.clone()
    labels[:, :2] = -100  # a prompt that does not count

    grads = {}
    losses = {}
    for fused in (True, False):
        model.zero_grad()
        loss = causal_lm_loss(model, ids, labels, fused=fused)
        loss.backward()
        losses[fused] = loss.detach()
        grads[fused] = {n: p.grad.clone() for n, p in trainable_parameters(model).items()}
    hf_loss = model(input_ids=ids, labels=labels).loss
    torch.testing.assert_close(losses[True], losses[False], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(losses[True], hf_loss.detach(), atol=1e-5, rtol=1e-5)
    for name, g in grads[True].items():
        torch.testing.assert_close(g, grads[False][name], atol=1e-5, rtol=1e-4, msg=name)


def test_rejects_non_lm_and_adapted_head() -> None:
    with pytest.raises(TypeError, match="causal LM"):
        causal_lm_loss(MODEL_CASES["mlp"].build(), torch.zeros(1, 3, dtype=torch.long))
    model = MODEL_CASES["llama"].build()
    inject(model, LoraConfig(r=2, target_modules=["lm_head"]))
    with pytest.raises(ValueError, match="output head carries an adapter"):
        causal_lm_loss(model, torch.zeros(1, 3, dtype=torch.long))
