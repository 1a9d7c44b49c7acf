"""Direct alignment losses against hand computations (DPO, IPO, hinge)."""

import math

import pytest
import torch

from core.training.preference import dpo_loss


def _pairs():
    # margin h = (pc - rc) - (pr - rr): pair 0: (-1 - -2) - (-3 - -2) = 2; pair 1: 0 - 1 = -1
    pc = torch.tensor([-1.0, -4.0], requires_grad=True)
    pr = torch.tensor([-3.0, -5.0], requires_grad=True)
    rc = torch.tensor([-2.0, -4.0])
    rr = torch.tensor([-2.0, -6.0])
    return pc, pr, rc, rr


def _logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_dpo_sigmoid_matches_hand_computation():
    pc, pr, rc, rr = _pairs()
    out = dpo_loss(pc, pr, rc, rr, beta=0.5)
    expected = -(_logsig(0.5 * 2) + _logsig(0.5 * -1)) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.chosen_rewards.tolist() == pytest.approx([0.5, 0.0])
    assert out.rejected_rewards.tolist() == pytest.approx([-0.5, 0.5])
    out.loss.backward()
    # d/dpc of -log sigmoid(b h)/n = -b * sigmoid(-b h) / n
    sig = [1 / (1 + math.exp(0.5 * h)) for h in (2.0, -1.0)]  # sigmoid(-b h)
    assert pc.grad.tolist() == pytest.approx([-0.5 * s / 2 for s in sig], rel=1e-6)
    assert pr.grad.tolist() == pytest.approx([0.5 * s / 2 for s in sig], rel=1e-6)


def test_conservative_dpo_label_smoothing():
    pc, pr, rc, rr = _pairs()
    eps = 0.1
    out = dpo_loss(pc, pr, rc, rr, beta=1.0, label_smoothing=eps)
    per = [-(1 - eps) * _logsig(h) - eps * _logsig(-h) for h in (2.0, -1.0)]
    assert out.loss.item() == pytest.approx(sum(per) / 2, rel=1e-6)


def test_ipo_and_hinge():
    pc, pr, rc, rr = _pairs()
    beta = 0.25
    ipo = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="ipo").loss.item()
    assert ipo == pytest.approx(((2 - 2) ** 2 + (-1 - 2) ** 2) / 2)
    hinge = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="hinge").loss.item()
    assert hinge == pytest.approx((max(0, 1 - 0.5) + max(0, 1 + 0.25)) / 2)


def test_reference_gets_no_gradient_and_bad_inputs_are_named():
    pc, pr, _, _ = _pairs()
    rc = torch.tensor([-2.0, -4.0], requires_grad=True)
    rr = torch.tensor([-2.0, -6.0], requires_grad=True)
    dpo_loss(pc, pr, rc, rr).loss.backward()
    assert rc.grad is None and rr.grad is None
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(pc, pr, rc, rr, beta=0)
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(pc, pr, rc, rr, loss_type="kto")
    with pytest.raises(ValueError, match="shape"):
        dpo_loss(pc, pr[:1], rc, rr)
