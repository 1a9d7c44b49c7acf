"""Convergence: many training steps through the fused ops follow the unfused trajectory.

One-step tests (forward and gradients against the reference) can pass while a kernel still
drifts over a run: state that leaks between calls, a gradient that is right in one
direction only, an optimizer that sees a different parameter layout. These tests train a
tiny Llama for a dozen AdamW steps and compare every step's loss and the final weights.
"""

from __future__ import annotations

import peft
import pytest
import torch

from core.adapters import (
    AdapterBank,
    LoraConfig,
    adapter_tensors,
    inject,
    load_adapter,
    trainable_parameters,
)
from core.training.lm_loss import causal_lm_loss
from tests.core.adapters.models import MODEL_CASES

from .backends import BACKENDS

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
STEPS = 12
LR = 2e-2


def _batches(rows: int = 4, length: int = 10, count: int = 3) -> list[tuple[torch.Tensor, ...]]:
    """A few fixed batches of counting sequences (learnable in a few steps) with random
    starts and strides; the first three labels are a prompt that does not count."""
    gen = torch.Generator().manual_seed(3)
    batches = []
    for _ in range(count):
        start = torch.randint(0, 64, (rows, 1), generator=gen)
        stride = torch.randint(1, 3, (rows, 1), generator=gen)
        ids = (start + stride * torch.arange(length)) % 64
        labels = ids.clone()
        labels[:, :3] = -100
        batches.append((ids, labels))
    return batches


def _train(params: list[torch.Tensor], loss_of_batch, batches, lr: float = LR) -> list[float]:
    """``STEPS`` AdamW steps cycling over ``batches``; the loss seen at each step."""
    optimizer = torch.optim.AdamW(params, lr=lr)
    losses = []
    for step in range(STEPS):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_of_batch(*batches[step % len(batches)])
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def _base() -> torch.nn.Module:
    """The tiny Llama with a ten-times larger (frozen) output head: at its default scale
    the logits are too small for a LoRA on the blocks to move the loss in a dozen steps."""
    model = MODEL_CASES["llama"].build()
    with torch.no_grad():
        model.lm_head.weight.mul_(10.0)
    return model


def _ours_and_peft() -> tuple[torch.nn.Module, torch.nn.Module, dict[str, tuple]]:
    """Our LoRA and PEFT's on the same tiny Llama, with the same non-zero starting weights."""
    theirs = peft.get_peft_model(
        _base(), peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS)
    )
    ours = _base()
    inject(ours, LoraConfig(r=4, alpha=8, dropout=0.0, target_modules=TARGETS))
    their_params = {
        n.removeprefix("base_model.model.").replace(".default", ""): p
        for n, p in theirs.named_parameters()
        if p.requires_grad
    }
    pairs = {n: (p, their_params[n]) for n, p in adapter_tensors(ours, "default").items()}
    assert len(pairs) == len(their_params) == 2 * 7 * 2  # A and B, 7 layers, 2 blocks
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for mine, peers in pairs.values():
            mine.copy_(0.1 * torch.randn(mine.shape, generator=gen))
            peers.copy_(mine)
    return ours, theirs, pairs


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_training_follows_peft_step_by_step(backend, force_backend) -> None:
    """Fused LoRA + fused cross-entropy vs PEFT + Hugging Face's loss, twelve AdamW steps."""
    force_backend(backend)
    ours, theirs, pairs = _ours_and_peft()
    batches = _batches()
    our_losses = _train(
        [mine for mine, _ in pairs.values()],
        lambda ids, labels: causal_lm_loss(ours, ids, labels, fused=True),
        batches,
    )
    their_losses = _train(
        [peers for _, peers in pairs.values()],
        lambda ids, labels: theirs(input_ids=ids, labels=labels).loss,
        batches,
    )
    assert their_losses[-1] < 0.9 * their_losses[0]  # the run really trains
    torch.testing.assert_close(
        torch.tensor(our_losses), torch.tensor(their_losses), atol=1e-4, rtol=1e-4
    )
    for name, (mine, peers) in pairs.items():
        torch.testing.assert_close(mine, peers, atol=1e-4, rtol=1e-3, msg=name)


def test_bf16_autocast_training_stays_near_fp32() -> None:
    """Under bf16 autocast the fused ops keep fp32 master weights on the fp32 trajectory
    (at a learning rate gentle enough that bf16 rounding is not amplified into chaos)."""
    runs = {}
    for autocast in (False, True):
        model = _base()
        inject(model, LoraConfig(r=4, alpha=8, dropout=0.0, target_modules=TARGETS))
        params = list(trainable_parameters(model).values())

        def loss_of_batch(ids, labels, model=model, autocast=autocast):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                return causal_lm_loss(model, ids, labels, fused=True)

        runs[autocast] = _train(params, loss_of_batch, _batches(), lr=5e-3)
        assert all(p.dtype == torch.float32 for p in params)
    assert runs[True][-1] < 0.9 * runs[True][0]
    torch.testing.assert_close(
        torch.tensor(runs[True]), torch.tensor(runs[False]), atol=0.0, rtol=3e-2
    )


def test_one_mixed_batch_trains_each_adapter_as_if_alone(tmp_path) -> None:
    """Training three mixed-rank adapters in one routed batch (the multi-adapter op's
    backward) ends at the weights that three separate runs on their own rows reach."""
    configs = {
        name: LoraConfig(r=rank, alpha=2 * rank, dropout=0.0, target_modules=TARGETS)
        for name, rank in (("en", 2), ("sw", 4), ("yo", 8))
    }
    bank = AdapterBank(_base(), configs)
    assert bank.stacked
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():  # each adapter's own factors; the rank padding stays zero
        for name in bank.names:
            for factor in bank.adapter_tensors(name).values():
                factor.copy_(0.1 * torch.randn(factor.shape, generator=gen))
    bank.save(tmp_path / "start")
    batches = _batches(rows=6)
    ids = torch.tensor([2, 0, 1, 1, 0, 2])

    def routed_loss(tokens, labels):
        with bank.route(ids):
            # sum, not mean: each adapter's gradient then does not depend on the batch mix
            return causal_lm_loss(bank.model, tokens, labels, reduction="sum")

    bank_params = [p for p in bank.parameters() if p.requires_grad]
    _train(bank_params, routed_loss, batches)

    for k, name in enumerate(bank.names):
        alone = _base()
        load_adapter(alone, tmp_path / "start" / name)
        rows = ids == k
        mine = [(tokens[rows], labels[rows]) for tokens, labels in batches]
        _train(
            list(trainable_parameters(alone).values()),
            lambda tokens, labels, m=alone: causal_lm_loss(m, tokens, labels, reduction="sum"),
            mine,
        )
        alone_tensors = adapter_tensors(alone, "default")
        for key, trained in bank.adapter_tensors(name).items():
            expected = alone_tensors[key.removeprefix("base_model.model.")]
            torch.testing.assert_close(trained, expected, atol=1e-4, rtol=1e-3, msg=key)
