"""Uniform and greedy soups, WiSE-FT endpoints."""

from __future__ import annotations

import pytest
import torch

from core.merging import greedy_soup, greedy_soup_search, uniform_soup, wise_ft

from .helpers import make_inputs


def test_uniform_soup_is_the_weighted_mean() -> None:
    _, models, _ = make_inputs()
    out = uniform_soup(models, weights=[1.0, 1.0, 2.0])
    for key, value in out.items():
        if value.is_floating_point():
            expected = (models[0][key] + models[1][key] + 2 * models[2][key]) / 4
            torch.testing.assert_close(value, expected)


def _target_score(target: dict[str, torch.Tensor]):
    return lambda sd: -float(((sd["w"] - target["w"]) ** 2).sum())


def test_greedy_soup_skips_a_model_that_hurts() -> None:
    target = {"w": torch.tensor([1.0, 2.0])}
    e = torch.tensor([0.5, -0.5])
    models = [{"w": target["w"] + e}, {"w": target["w"] - e}, {"w": target["w"] + 10 * e}]
    result = greedy_soup_search(models, _target_score(target))
    assert result.ingredients == [0, 1]
    torch.testing.assert_close(result.state_dict["w"], target["w"])
    assert result.soup_score == 0.0
    assert [added for _, _, added in result.history] == [True, True, False]
    assert torch.equal(greedy_soup(models, _target_score(target))["w"], result.state_dict["w"])


@pytest.mark.parametrize("seed", range(5))
def test_greedy_soup_never_lowers_the_held_out_score(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    target = {"w": torch.randn(8, generator=gen)}
    models = [{"w": torch.randn(8, generator=gen) * (i + 1)} for i in range(6)]
    score = _target_score(target)
    result = greedy_soup_search(models, score)
    assert score(result.state_dict) >= max(score(m) for m in models)
    assert result.soup_score == pytest.approx(score(result.state_dict))
    accepted = [s for _, s, added in result.history if added]
    assert accepted == sorted(accepted)  # each addition kept or raised the score


def test_greedy_soup_needs_a_score_fn() -> None:
    with pytest.raises(ValueError, match="score_fn"):
        greedy_soup_search([{"w": torch.zeros(1)}], score_fn=None)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_wise_ft_endpoints_equal_the_inputs(dtype: torch.dtype) -> None:
    zeroshot, models, _ = make_inputs(n_models=1, dtype=dtype)
    at_zero = wise_ft(zeroshot, models[0], alpha=0.0)
    at_one = wise_ft(zeroshot, models[0], alpha=1.0)
    for key in zeroshot:
        assert torch.equal(at_zero[key], zeroshot[key]), key
        assert torch.equal(at_one[key], models[0][key]), key


def test_wise_ft_interpolates() -> None:
    zeroshot, models, _ = make_inputs(n_models=1)
    mid = wise_ft(zeroshot, [models[0]], alpha=0.25)
    for key, value in zeroshot.items():
        if value.is_floating_point():
            torch.testing.assert_close(mid[key], 0.75 * value + 0.25 * models[0][key])


def test_wise_ft_takes_one_model() -> None:
    zeroshot, models, _ = make_inputs(n_models=2)
    with pytest.raises(ValueError, match="exactly 1"):
        wise_ft(zeroshot, models)
