"""Replay buffers (reservoir, task-balanced), replay as a loss term, the DMT recipe."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from core.regularizers import Replay, ReservoirBuffer, TaskBalancedBuffer, dmt_stages

from .toys import EncoderHead, batches, blobs


def _stream(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n)


def test_reservoir_keeps_capacity_and_is_uniform_over_the_stream() -> None:
    x, y = _stream(400)
    kept = torch.zeros(400)
    for seed in range(300):
        buf = ReservoirBuffer(capacity=40, seed=seed)
        for start in range(0, 400, 37):  # uneven batches
            buf.add(x[start : start + 37], y[start : start + 37])
        assert len(buf) == 40 and buf.num_seen.item() == 400
        assert len(set(buf.y.tolist())) == 40  # no duplicates
        torch.testing.assert_close(buf.x[:, 0], buf.y.float())  # x and y stay paired
        kept[buf.y] += 1
    rate = kept / 300  # each item kept with probability 40/400 = 0.1
    assert abs(rate[:200].mean().item() - 0.1) < 0.01
    assert abs(rate[200:].mean().item() - 0.1) < 0.01


def test_reservoir_is_deterministic_for_a_seed() -> None:
    x, y = _stream(100)
    a, b = ReservoirBuffer(10, seed=1), ReservoirBuffer(10, seed=1)
    a.add(x, y)
    b.add(x, y)
    assert torch.equal(a.y, b.y)


def test_task_balanced_buffer_splits_capacity_evenly_and_shrinks_old_tasks() -> None:
    buf = TaskBalancedBuffer(capacity=10, seed=0)
    x, y = _stream(90)
    buf.add(x[:30], y[:30], task="a")
    assert len(buf) == 10 and buf.task_names == ["a"]
    first = set(buf.y.tolist())
    buf.add(x[30:60], y[30:60], task="b")
    buf.add(x[60:], y[60:], task="c")
    counts = torch.bincount(buf.tasks, minlength=3).tolist()
    assert counts == [4, 3, 3] and buf.quota(3) == [4, 3, 3]
    a_left = {v for v, t in zip(buf.y.tolist(), buf.tasks.tolist(), strict=True) if t == 0}
    assert a_left <= first  # shrinking keeps a subset of what task a had
    assert all(
        30 <= v < 60 for v, t in zip(buf.y.tolist(), buf.tasks.tolist(), strict=True) if t == 1
    )


def test_buffers_round_trip_through_their_state_dict() -> None:
    buf = TaskBalancedBuffer(capacity=6, seed=0)
    x, y = _stream(20)
    buf.add(x[:10], y[:10], task="first")
    buf.add(x[10:], y[10:], task="second")
    fresh = TaskBalancedBuffer(capacity=6, seed=0)
    fresh.load_state_dict(buf.state_dict())
    assert torch.equal(fresh.y, buf.y) and fresh.task_names == ["first", "second"]
    assert isinstance(buf.as_dataset(), TensorDataset)


def test_replay_penalty_is_the_loss_on_a_replayed_batch() -> None:
    model = EncoderHead()
    x, y = blobs(40)
    reg = Replay(capacity=40, batch_size=16, weight=0.5, seed=0)
    reg.update(model, batches(x, y), task="t0")
    assert len(reg.buffer) == 40
    draws = torch.Generator().manual_seed(0)  # the regularizer's own draw stream
    xr, yr = reg.buffer.sample(16, draws)
    torch.testing.assert_close(reg.penalty(model), 0.5 * F.cross_entropy(model(xr), yr))


def test_replay_offers_at_most_max_per_task() -> None:
    x, y = blobs(40)
    reg = Replay(capacity=100, max_per_task=10)
    reg.update(EncoderHead(), batches(x, y, 16))
    assert len(reg.buffer) == 10


def test_dmt_stages_are_specialist_then_general_plus_a_share() -> None:
    specialist = TensorDataset(torch.arange(100))
    general = TensorDataset(torch.arange(1000, 1050))
    stage1, stage2 = dmt_stages(specialist, general, specialist_share=0.1, seed=0)
    assert stage1 is specialist and len(stage2) == 50 + 10
    mixed = [int(stage2[i][0]) for i in range(len(stage2))]
    assert sum(v < 100 for v in mixed) == 10
    assert len(dmt_stages(specialist, general, 0.001)[1]) == 51  # at least one sample
    with pytest.raises(ValueError, match="specialist_share=2"):
        dmt_stages(specialist, general, 2)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="capacity=0"):
        ReservoirBuffer(0)
    with pytest.raises(ValueError, match="policy='fifo'"):
        Replay(policy="fifo")
    with pytest.raises(ValueError, match="empty replay buffer"):
        ReservoirBuffer(3).sample(2)
    with pytest.raises(ValueError, match="needs data"):
        Replay().update(EncoderHead())
    with pytest.raises(ValueError, match="3 samples but y has 2"):
        ReservoirBuffer(3).add(torch.zeros(3, 1), torch.zeros(2))
