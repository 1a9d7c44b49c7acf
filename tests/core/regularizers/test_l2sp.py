"""L2-SP: squared distance of the backbone to its snapshot; the head is free by default."""

from __future__ import annotations

import pytest
import torch

from core.regularizers import L2SP

from .toys import EncoderHead


def _shift(module: torch.nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(value)


def test_penalty_is_half_alpha_squared_distance_on_the_backbone_only() -> None:
    model = EncoderHead()
    reg = L2SP(alpha=0.4)
    reg.update(model)
    assert set(reg.anchor.keys()) == {"encoder.0.weight", "encoder.0.bias"}
    _shift(model.head, 3.0)  # the head moves freely
    assert reg.penalty(model).item() == 0.0
    _shift(model.encoder, 0.5)
    n = sum(p.numel() for p in model.encoder.parameters())
    torch.testing.assert_close(reg.penalty(model), torch.tensor(0.5 * 0.4 * n * 0.25))


def test_beta_adds_plain_l2_on_the_head_and_head_patterns_are_configurable() -> None:
    model = EncoderHead()
    reg = L2SP(alpha=1.0, beta=2.0)
    reg.update(model)
    head_sq = sum(p.pow(2).sum() for p in model.head.parameters())
    torch.testing.assert_close(reg.penalty(model), head_sq)  # 0.5 * beta * ||head||^2
    everything = L2SP(alpha=1.0, head=[])
    everything.update(model)
    assert "head.weight" in everything.anchor


def test_update_moves_the_anchor_to_the_current_weights() -> None:
    model = EncoderHead()
    reg = L2SP(alpha=1.0)
    reg.update(model)
    _shift(model.encoder, 1.0)
    assert reg.penalty(model).item() > 0
    reg.update(model)
    assert reg.penalty(model).item() == 0.0


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="alpha=-1"):
        L2SP(alpha=-1)
    with pytest.raises(ValueError, match="no backbone parameter"):
        L2SP(include=["decoder"]).update(EncoderHead())
    reg = L2SP()
    reg.update(EncoderHead())
    with pytest.raises(KeyError, match=r"encoder\.0\.weight"):
        reg.penalty(torch.nn.Linear(2, 2))
