"""DR-Tune: semantic calibration recovers a rotation and class centers; head-only gradient."""

from __future__ import annotations

import pytest
import torch

from core.regularizers import DRTune, semantic_calibration

from .toys import EncoderHead, blobs, sgd_steps


def test_calibration_undoes_a_rotation_and_a_translation() -> None:
    gen = torch.Generator().manual_seed(0)
    pre = torch.randn(30, 5, generator=gen)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=gen))
    cur = pre @ q + torch.tensor([1.0, -2.0, 0.0, 3.0, 0.5])
    labels = torch.arange(30) % 3
    calibrated = semantic_calibration(pre, cur, labels, rotate=True, shift=False)
    torch.testing.assert_close(calibrated, cur, atol=1e-4, rtol=1e-4)


def test_class_center_shift_matches_each_class_center() -> None:
    gen = torch.Generator().manual_seed(1)
    pre, cur = torch.randn(24, 4, generator=gen), torch.randn(24, 4, generator=gen)
    labels = torch.arange(24) % 4
    out = semantic_calibration(pre, cur, labels, rotate=True, shift=True)
    for c in range(4):
        sel = labels == c
        torch.testing.assert_close(out[sel].mean(0), cur[sel].mean(0), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="one shape"):
        semantic_calibration(pre, cur[:, :2], labels)


def test_penalty_is_head_loss_on_calibrated_pretrained_features_with_head_only_gradient() -> None:
    model = EncoderHead()
    x, y = blobs()
    reg = DRTune(weight=2.0)
    reg.update(model)
    z0 = model.encoder(x).detach()
    sgd_steps(model, x, y)
    reg.observe((x, y))
    penalty = reg.penalty(model)
    expected_features = semantic_calibration(z0, model.encoder(x).detach(), y)
    expected = 2.0 * torch.nn.functional.cross_entropy(model.head(expected_features), y)
    torch.testing.assert_close(penalty, expected, atol=1e-5, rtol=1e-5)
    model.zero_grad()
    penalty.backward()
    assert model.head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.encoder.parameters())


def test_missing_submodules_and_missing_batch_are_clear_errors() -> None:
    with pytest.raises(AttributeError, match="encoder='backbone'"):
        DRTune(encoder="backbone").update(EncoderHead())
    reg = DRTune()
    reg.update(EncoderHead())
    with pytest.raises(RuntimeError, match=r"observe\(batch\)"):
        reg.penalty(EncoderHead())
