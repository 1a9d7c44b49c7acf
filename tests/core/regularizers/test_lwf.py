"""LwF: KL to the frozen snapshot on the current batch, teacher in eval mode."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.regularizers import LwF, distillation_kl

from .toys import EncoderHead, blobs, sgd_steps


def test_distillation_kl_matches_the_definition() -> None:
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 4, generator=gen), torch.randn(5, 4, generator=gen)
    T = 3.0
    p = F.softmax(t / T, -1)
    expected = (p * (p.log() - F.log_softmax(s / T, -1))).sum(-1).mean() * T * T
    torch.testing.assert_close(distillation_kl(s, t, T), expected)
    assert distillation_kl(t, t, T).abs().item() < 1e-6


def test_penalty_distills_towards_the_snapshot_and_only_the_student_gets_gradients() -> None:
    model = EncoderHead()
    x, y = blobs()
    reg = LwF(weight=0.5, temperature=2.0)
    reg.update(model)
    teacher = model(x).detach()
    reg.observe((x, y))
    assert reg.penalty(model).abs().item() < 1e-6  # unchanged model: nothing to distill
    sgd_steps(model, x, (y + 1) % 3)
    reg.observe((x, y))
    penalty = reg.penalty(model)
    torch.testing.assert_close(penalty, 0.5 * distillation_kl(model(x), teacher, 2.0))
    penalty.backward()
    assert model.head.weight.grad is not None
    assert all(not t.requires_grad for _, t in reg.teacher.items())


def test_teacher_runs_in_eval_mode_and_leaves_the_mode_alone() -> None:
    model = EncoderHead(dropout=0.5)
    x, _ = blobs()
    reg = LwF()
    reg.update(model)
    model.train()
    a, b = reg.teacher_logits(model, x), reg.teacher_logits(model, x)
    torch.testing.assert_close(a, b)  # no dropout noise
    model.eval()
    torch.testing.assert_close(a, model(x))
    assert not model.training


def test_penalty_without_a_batch_is_a_clear_error() -> None:
    reg = LwF()
    reg.update(EncoderHead())
    with pytest.raises(RuntimeError, match=r"observe\(batch\)"):
        reg.penalty(EncoderHead())
    with pytest.raises(ValueError, match="temperature=0"):
        LwF(temperature=0)
