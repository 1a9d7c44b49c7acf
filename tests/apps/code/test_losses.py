"""The task-balanced loss against a hand computation; CoBa's weights."""

from __future__ import annotations

import math

import pytest
import torch

from apps.code.losses import CoBaWeighter, per_task_means, task_balanced_loss


def test_hand_computation_unequal_sizes_and_a_missing_task():
    # Task 0: 3 tokens (1, 2, 3), task 1: 1 token (10), task 2: absent, -1: not a target.
    losses = torch.tensor([[1.0, 2.0, 99.0, 10.0], [3.0, 42.0, 0.0, 7.0]])
    tasks = torch.tensor([[0, 0, -1, 1], [0, -1, -1, -1]])
    loss, means, present = task_balanced_loss(losses, tasks, num_tasks=3)
    # Task means: 2.0 and 10.0; the loss is their mean over the 2 tasks present: 6.0.
    assert means.tolist() == [2.0, 10.0, 0.0]
    assert present.tolist() == [True, True, False]
    assert loss.item() == pytest.approx(6.0)
    # The plain token mean would be (1 + 2 + 3 + 10) / 4 = 4.0: different on purpose.
    weighted, _, _ = task_balanced_loss(losses, tasks, 3, weights=torch.tensor([1.0, 3.0, 5.0]))
    assert weighted.item() == pytest.approx((1 * 2.0 + 3 * 10.0) / 4.0)  # task 2 absent
    only, _, _ = task_balanced_loss(losses, tasks, 3, include=torch.tensor([True, False, True]))
    assert only.item() == pytest.approx(2.0)


def test_gradient_is_per_task_mean():
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
    tasks = torch.tensor([0, 0, 0, 1])
    loss, _, _ = task_balanced_loss(losses, tasks, 2)
    loss.backward()
    # d/dl of (mean(l0, l1, l2) + l3) / 2.
    assert losses.grad.tolist() == pytest.approx([1 / 6, 1 / 6, 1 / 6, 1 / 2])


def test_no_target_token_gives_a_zero_differentiable_loss():
    losses = torch.tensor([1.0, 2.0], requires_grad=True)
    loss, _, present = task_balanced_loss(losses, torch.tensor([-1, -1]), 2)
    assert loss.item() == 0.0 and not present.any()
    loss.backward()
    assert losses.grad.tolist() == [0.0, 0.0]


def test_per_task_means_brute_force():
    g = torch.Generator().manual_seed(0)
    losses = torch.rand(4, 33, generator=g)
    tasks = torch.randint(-1, 5, (4, 33), generator=g)
    sums, counts, means = per_task_means(losses, tasks, 5)
    for t in range(5):
        sel = losses[tasks == t]
        assert counts[t].item() == sel.numel()
        assert sums[t].item() == pytest.approx(sel.sum().item(), rel=1e-6)
        if sel.numel():
            assert means[t].item() == pytest.approx(sel.mean().item(), rel=1e-6)


def test_errors():
    with pytest.raises(ValueError, match="same shape"):
        task_balanced_loss(torch.zeros(3), torch.zeros(4, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="non-negative"):
        task_balanced_loss(torch.zeros(3), torch.zeros(3, dtype=torch.long), 2,
                           weights=torch.tensor([1.0, -1.0]))  # fmt: skip


def test_coba_warmup_and_relative_convergence():
    coba = CoBaWeighter(3, warmup=3, window=4)
    assert coba.observe([2.0, 2.0, 2.0]).tolist() == [1.0, 1.0, 1.0]
    coba.observe([1.8, 1.5, 1.0])
    assert coba.weights.tolist() == [1.0, 1.0, 1.0]  # still warming up
    w = coba.observe([1.7, 1.2, 0.5])
    # All converging (DF = 1 regime): the slowest (task 0) weighs most, the fastest least.
    assert w[0] > w[1] > w[2]
    assert w.mean().item() == pytest.approx(1.0, abs=1e-6)
    assert coba.divergence_factor == pytest.approx(1.0)


def test_coba_divergence_moves_weight_away_from_an_overfitting_task():
    coba = CoBaWeighter(2, warmup=2, window=3, tau=5.0)
    for a, b in [(2.0, 2.0), (1.6, 1.8), (1.3, 1.6), (1.1, 1.45)]:
        coba.observe([a, b])
    calm_df = coba.divergence_factor
    for a, b in [(1.3, 1.3), (1.6, 1.2), (2.0, 1.1)]:  # task 0 turns up: over-fitting
        w = coba.observe([a, b])
    assert coba.divergence_factor < calm_df
    assert w[0] < w[1]  # ACS takes over and protects task 0 from over-fitting further


def test_coba_ignores_tasks_without_validation_data_and_round_trips():
    coba = CoBaWeighter(3, warmup=2, window=3)
    for vals in ([2.0, math.nan, 1.0], [1.5, math.nan, 0.9], [1.2, math.nan, 0.85]):
        w = coba.observe(vals)
    assert w[1].item() == 1.0 and torch.isfinite(w).all()
    again = CoBaWeighter(3, warmup=2, window=3)
    again.load_state_dict(coba.state_dict())
    assert torch.equal(again.weights, coba.weights)
    with pytest.raises(ValueError, match="expected 3"):
        coba.observe([1.0])


def test_task_loss_meter_is_the_exact_token_mean_over_batches():
    from apps.code.metrics import TaskLossMeter, perplexity

    meter = TaskLossMeter()
    # Batch 1: task a has 3 tokens, batch 2: one token; the epoch mean is over all 4.
    meter.update(torch.tensor([1.0, 2.0, 3.0, 9.0]), torch.tensor([0, 0, 0, -1]), ("a", "b"))
    meter.update(torch.tensor([10.0, 4.0]), torch.tensor([0, 1]), ("a", "b"))
    assert meter.means() == {"a": pytest.approx(4.0), "b": pytest.approx(4.0)}
    assert perplexity(0.0) == 1.0 and perplexity(math.log(7.0)) == pytest.approx(7.0)
    meter.reset()
    assert meter.means() == {}
