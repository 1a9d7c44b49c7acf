"""Fisher merging: closed form, floor, and the empirical Fisher estimate."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.merging import fisher_for_merging, fisher_merge, uniform_soup

from .helpers import make_inputs


def test_fisher_weighted_average_closed_form() -> None:
    m1, m2 = {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, 6.0])}
    f1, f2 = {"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([3.0, 2.0])}
    out = fisher_merge([m1, m2], [f1, f2], floor=1e-6)["w"]
    # entry 0: (1*1 + 3*3) / 4 = 2.5; entry 1: (1e-6 * 2 + 2 * 6) / (2 + 1e-6) ~= 6
    torch.testing.assert_close(out, torch.tensor([2.5, 6.0]), rtol=1e-5, atol=1e-5)
    weighted = fisher_merge([m1, m2], [f1, f2], weights=[3.0, 1.0])["w"]
    torch.testing.assert_close(weighted[0], torch.tensor((3 * 1 + 3 * 3) / 6.0))


def test_zero_fishers_fall_back_to_the_weighted_mean() -> None:
    _, models, fishers = make_inputs()
    zeros = [{k: torch.zeros_like(v) for k, v in f.items()} for f in fishers]
    out = fisher_merge(models, zeros, weights=[1.0, 2.0, 3.0])
    soup = uniform_soup(models, weights=[1.0, 2.0, 3.0])
    for key in out:
        torch.testing.assert_close(out[key], soup[key])


def test_fishers_must_match_the_models() -> None:
    _, models, fishers = make_inputs()
    with pytest.raises(ValueError, match="fisher"):
        fisher_merge(models, fishers[:2])
    with pytest.raises(ValueError, match="floor"):
        fisher_merge(models, fishers, floor=0.0)


def test_fisher_for_merging_is_the_mean_squared_gradient() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    model[0].weight.requires_grad_(False)  # frozen parameters get a Fisher too
    batches = [(torch.randn(4, 3), torch.randn(4, 2)) for _ in range(3)]

    def loss_fn(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return ((m(batch[0]) - batch[1]) ** 2).mean()

    fisher = fisher_for_merging(model, batches, loss_fn)
    assert not model[0].weight.requires_grad  # restored
    assert set(fisher) == {k for k, v in model.state_dict().items() if v.is_floating_point()}
    assert torch.equal(fisher["1.running_mean"], torch.zeros(2))
    expected = torch.zeros(2, 3)
    model.eval()  # fisher_for_merging runs the model in eval mode
    for batch in batches:
        w = model[0].weight.detach().clone().requires_grad_(True)
        out = torch.func.functional_call(model, {"0.weight": w}, (batch[0],))
        (grad,) = torch.autograd.grad(((out - batch[1]) ** 2).mean(), w)
        expected += grad**2 / 3
    torch.testing.assert_close(fisher["0.weight"], expected)
    with pytest.raises(ValueError, match="no batches"):
        fisher_for_merging(model, [], loss_fn)
