"""Every penalty method through the same checks (like the adapter test matrix).

Zero before the first ``update`` (as the training code sees it) and a clear error when
called directly; non-zero after ``update`` once the model moved; state restored into a
fresh object from its state dict (what a Lightning checkpoint carries).
"""

from __future__ import annotations

import pytest
import torch

from core.regularizers import NotReadyError, build
from core.training import compute_penalties

from .toys import EncoderHead, batches, blobs, sgd_steps

# method -> constructor arguments (small and deterministic)
PENALTY_METHODS = {
    "ewc": {"lambda_": 10.0, "labels": "true"},
    "online_ewc": {"lambda_": 10.0, "labels": "sampled", "gamma": 0.5},
    "l2sp": {"alpha": 1.0},
    "lwf": {"weight": 1.0, "temperature": 2.0},
    "replay": {"capacity": 20, "batch_size": 8, "policy": "task_balanced"},
    "drtune": {"weight": 1.0},
}


def _task(seed: int):
    x, y = blobs(48, seed)
    return x, y, batches(x, y)


@pytest.mark.parametrize("method", sorted(PENALTY_METHODS))
def test_penalty_is_zero_before_update_and_positive_after(method: str) -> None:
    model = EncoderHead()
    reg = build(method, **PENALTY_METHODS[method])
    x1, y1, data1 = _task(1)
    x2, y2, _ = _task(2)
    assert not reg.ready
    before = compute_penalties([reg], model, batch=(x1, y1))[reg.name]
    assert before.item() == 0.0
    with pytest.raises(NotReadyError, match=r"before .*update\(\).*after the first task"):
        reg.penalty(model)

    sgd_steps(model, x1, y1)  # task 1
    reg.update(model, data1, task="t1")
    assert reg.ready
    sgd_steps(model, x2, y2)  # task 2 moves the weights away from task 1's
    after = compute_penalties([reg], model, batch=(x2, y2))[reg.name]
    assert after.item() > 0.0
    assert after.requires_grad


@pytest.mark.parametrize("method", sorted(PENALTY_METHODS))
def test_state_dict_round_trip_restores_the_penalty(method: str) -> None:
    model = EncoderHead()
    x, y, data = _task(1)
    reg = build(method, **PENALTY_METHODS[method], seed=0) if method == "replay" else None
    reg = reg or build(method, **PENALTY_METHODS[method])
    reg.update(model, data, task="t1")
    sgd_steps(model, x, y)
    state = {k: v.clone() if torch.is_tensor(v) else v for k, v in reg.state_dict().items()}

    fresh = build(method, **PENALTY_METHODS[method])
    assert not fresh.ready
    fresh.load_state_dict(state)
    assert fresh.ready
    if method == "replay":  # the memory is restored sample for sample
        torch.testing.assert_close(fresh.buffer.x, reg.buffer.x)
        assert fresh.buffer.task_names == ["t1"]
        return
    a = compute_penalties([reg], model, batch=(x, y))[reg.name]
    b = compute_penalties([fresh], model, batch=(x, y))[fresh.name]
    torch.testing.assert_close(a, b)


def test_hft_has_no_penalty_term_and_is_always_ready() -> None:
    hft = build("hft")
    assert hft.ready and not hft.has_penalty
    assert hft.penalty(EncoderHead()).item() == 0.0
