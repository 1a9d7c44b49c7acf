"""Model Breadcrumbs: the middle magnitude band survives."""

from __future__ import annotations

import pytest
import torch

from core.merging import breadcrumbs, task_arithmetic

from .helpers import make_inputs


def test_keeps_the_middle_band() -> None:
    base = {"w": torch.zeros(10)}
    tau = torch.tensor([10.0, -9.0, 8.0, -7.0, 6.0, 5.0, -4.0, 3.0, 2.0, -1.0])
    out = breadcrumbs(base, [{"w": tau}], top=0.2, bottom=0.3)["w"]
    # drops 10, -9 (top 20 %) and 3, 2, -1 (bottom 30 %)
    expected = torch.tensor([0.0, 0.0, 8.0, -7.0, 6.0, 5.0, -4.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(out, expected)


def test_sums_masked_vectors_with_weights_and_scaling() -> None:
    base = {"w": torch.ones(4)}
    a = {"w": torch.tensor([1.0, 2.0, 3.0, 4.0]) + 1}
    b = {"w": torch.tensor([-4.0, -3.0, -2.0, -1.0]) + 1}
    out = breadcrumbs(base, [a, b], top=0.25, bottom=0.25, scaling=0.5, weights=[1.0, 2.0])["w"]
    # a keeps [_, 2, 3, _], b keeps [_, -3, -2, _]
    torch.testing.assert_close(out, 1 + 0.5 * torch.tensor([0.0, 2.0 - 6.0, 3.0 - 4.0, 0.0]))


def test_no_masking_is_task_arithmetic() -> None:
    base, models, _ = make_inputs()
    out = breadcrumbs(base, models, top=0.0, bottom=0.0, scaling=0.4)
    ta = task_arithmetic(base, models, scaling=0.4)
    for key in base:
        torch.testing.assert_close(out[key], ta[key])


def test_dropping_everything_keeps_the_base() -> None:
    base, models, _ = make_inputs()
    out = breadcrumbs(base, models, top=1.0, bottom=0.0)
    for key in base:
        torch.testing.assert_close(out[key], base[key])


def test_fractions_must_leave_something() -> None:
    base, models, _ = make_inputs()
    with pytest.raises(ValueError, match="sum must be <= 1"):
        breadcrumbs(base, models, top=0.6, bottom=0.5)
