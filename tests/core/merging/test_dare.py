"""DARE: unbiased in expectation, rescale options, sign election, DAREx-q tuning."""

from __future__ import annotations

import pytest
import torch

from core.merging import dare, task_arithmetic, tune_rescale
from core.merging.dare import rescale_factor

from .helpers import make_inputs


def test_expectation_over_seeds_equals_the_task_vector() -> None:
    gen = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(40, generator=gen)}
    finetuned = {"w": base["w"] + torch.randn(40, generator=gen)}
    runs = torch.stack([dare(base, [finetuned], drop_rate=0.5, seed=s)["w"] for s in range(2000)])
    tau = finetuned["w"] - base["w"]
    # per entry std of the mean: |tau| * sqrt(p / (1 - p) / 2000) < 0.03 * |tau|
    torch.testing.assert_close(runs.mean(0) - base["w"], tau, rtol=0.12, atol=0.02)
    dropped = (runs == base["w"]).float().mean()
    assert 0.45 < float(dropped) < 0.55  # about half of the entries dropped


def test_survivors_are_rescaled_and_the_rest_dropped() -> None:
    base = {"w": torch.zeros(1000)}
    ft = {"w": torch.ones(1000)}
    out = dare(base, [ft], drop_rate=0.75, seed=1)["w"]
    assert set(out.unique().tolist()) <= {0.0, 4.0}
    out_q = dare(base, [ft], drop_rate=0.75, seed=1, rescale=0.5)["w"]
    assert torch.equal(out_q != 0, out != 0)  # same mask for the same seed
    assert set(out_q.unique().tolist()) <= {0.0, 2.0}
    out_none = dare(base, [ft], drop_rate=0.75, seed=1, rescale="none")["w"]
    assert set(out_none.unique().tolist()) <= {0.0, 1.0}


def test_no_drop_is_task_arithmetic() -> None:
    base, models, _ = make_inputs()
    ta = task_arithmetic(base, models, scaling=0.3)
    out = dare(base, models, drop_rate=0.0, scaling=0.3)
    for key in base:
        torch.testing.assert_close(out[key], ta[key])


def test_models_get_different_masks() -> None:
    base = {"w": torch.zeros(500)}
    ft = {"w": torch.ones(500)}
    a = dare(base, [ft, ft], drop_rate=0.5, seed=0, weights=[1.0, 0.0])["w"]
    b = dare(base, [ft, ft], drop_rate=0.5, seed=0, weights=[0.0, 1.0])["w"]
    assert not torch.equal(a != 0, b != 0)


def test_sign_election_variant_is_a_disjoint_mean() -> None:
    base = {"w": torch.zeros(3)}
    t1 = {"w": torch.tensor([1.0, 1.0, -1.0])}
    t2 = {"w": torch.tensor([3.0, -2.0, -3.0])}
    out = dare(base, [t1, t2], drop_rate=0.0, sign_election=True)["w"]
    torch.testing.assert_close(out, torch.tensor([2.0, -2.0, -2.0]))


def test_rescale_factor() -> None:
    assert rescale_factor(0.9, "standard") == pytest.approx(10.0)
    assert rescale_factor(0.9, "none") == 1.0
    assert rescale_factor(0.9, 0.2) == pytest.approx(5.0)


@pytest.mark.parametrize(
    "bad", [{"drop_rate": 1.2}, {"rescale": "double"}, {"rescale": 0.0}, {"rescale": 1.5}]
)
def test_bad_values_are_named(bad: dict) -> None:
    base, models, _ = make_inputs()
    with pytest.raises(ValueError, match=r"drop_rate|rescale"):
        dare(base, models, **bad)


def test_tune_rescale_picks_the_best_q() -> None:
    base = {"w": torch.zeros(200)}
    ft = {"w": torch.ones(200)}
    # The score prefers merged entries near 2 (so q = 0.5 at drop rate 0.5... and 1/q = 2).
    result = tune_rescale(
        base,
        [ft],
        score_fn=lambda sd: -float(((sd["w"][sd["w"] != 0] - 2.0) ** 2).mean()),
        drop_rate=0.5,
        candidates=[1.0, 0.5, 0.25],
    )
    assert result.best == 0.5
    assert set(result.scores) == {1.0, 0.5, 0.25}
    assert result.best_score == max(result.scores.values())
