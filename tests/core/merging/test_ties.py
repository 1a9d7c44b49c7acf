"""TIES: trim, elect sign, disjoint mean, on hand-made tensors."""

from __future__ import annotations

import pytest
import torch

from core.merging import ties
from core.merging.ties import disjoint_mean


def _sd(values: list[float]) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor(values)}


def test_ties_on_hand_made_tensors() -> None:
    base = _sd([0.0, 0.0, 0.0, 0.0, 0.0])
    t1 = _sd([3.0, -1.0, 0.5, 2.0, 4.0])
    t2 = _sd([-2.0, -2.0, 0.1, 1.0, 1.5])
    t3 = _sd([1.0, 0.2, 0.3, -3.0, 3.0])
    # density 0.4 keeps the 2 largest magnitudes per model:
    #   t1 -> [3, 0, 0, 0, 4]; t2 -> [-2, -2, 0, 0, 0]; t3 -> [0, 0, 0, -3, 3]
    # elected signs (sign of the sum): [+, -, 0, -, +]
    # disjoint means: [3, -2, 0, -3, (4 + 3) / 2]
    out = ties(base, [t1, t2, t3], density=0.4)
    torch.testing.assert_close(out["w"], torch.tensor([3.0, -2.0, 0.0, -3.0, 3.5]))
    scaled = ties(base, [t1, t2, t3], density=0.4, scaling=0.5)
    torch.testing.assert_close(scaled["w"], 0.5 * out["w"])


def test_ties_adds_to_a_nonzero_base() -> None:
    base = _sd([1.0, -1.0])
    out = ties(base, [_sd([2.0, -1.0]), _sd([3.0, 0.0])], density=1.0)
    # task vectors [1, 0] and [2, 1]: signs [+, +]; means [1.5, 1]
    torch.testing.assert_close(out["w"], torch.tensor([2.5, 0.0]))


def test_ties_weights_enter_election_and_mean() -> None:
    base = _sd([0.0])
    # weighted values +1 * 2 and -1.5 * 1: sum +0.5 -> sign +; mean over agreeing: 2 / 2 = 1
    out = ties(base, [_sd([1.0]), _sd([-1.5])], density=1.0, weights=[2.0, 1.0])
    torch.testing.assert_close(out["w"], torch.tensor([1.0]))


def test_ties_density_per_model() -> None:
    base = _sd([0.0, 0.0, 0.0, 0.0])
    t1 = _sd([4.0, 3.0, 2.0, 1.0])
    out = ties(base, [t1, t1], density=[0.25, 1.0])
    # model 1 keeps only 4; model 2 keeps all: means [4, 3, 2, 1]
    torch.testing.assert_close(out["w"], torch.tensor([4.0, 3.0, 2.0, 1.0]))
    out = ties(base, [t1, t1], density=[0.25, 0.5])
    torch.testing.assert_close(out["w"], torch.tensor([4.0, 3.0, 0.0, 0.0]))


def test_density_zero_keeps_the_base() -> None:
    base = _sd([1.0, 2.0])
    assert torch.equal(ties(base, [_sd([5.0, 5.0])], density=0.0)["w"], base["w"])


def test_disjoint_mean_ignores_zeros_and_disagreement() -> None:
    values = [torch.tensor([1.0, 0.0, -1.0]), torch.tensor([3.0, 0.0, 2.0])]
    torch.testing.assert_close(disjoint_mean(values, [1.0, 1.0]), torch.tensor([2.0, 0.0, 2.0]))


@pytest.mark.parametrize("bad", [{"density": 1.5}, {"density": -0.1}, {"weights": [1.0, 0.0]}])
def test_bad_values_are_named(bad: dict) -> None:
    base = _sd([0.0])
    with pytest.raises(ValueError, match=r"density|weight"):
        ties(base, [_sd([1.0]), _sd([2.0])], **bad)
