"""SSF on channels-first norm layers: scale and shift act per channel (dimension 1)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.adapters import SsfConfig, inject, merge


@pytest.mark.parametrize(
    ("norm", "shape"),
    [
        (nn.BatchNorm2d(4), (3, 4, 5, 6)),
        (nn.BatchNorm1d(4), (3, 4, 7)),
        (nn.GroupNorm(2, 4), (3, 4, 5, 6)),
    ],
    ids=["batchnorm2d", "batchnorm1d", "groupnorm"],
)
def test_ssf_on_channels_first_norms(norm: nn.Module, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(norm).eval()
    x = torch.randn(shape)
    plain = model(x)
    inject(model, SsfConfig(target_modules=["0"]))
    layer = model[0]
    unit = next(iter(layer.adapters.values()))
    scale, shift = (p for p in unit.parameters())
    with torch.no_grad():
        scale.copy_(torch.arange(1.0, 5.0))
        shift.copy_(torch.tensor([0.5, -0.5, 1.0, -1.0]))
    view = (1, 4) + (1,) * (len(shape) - 2)
    expected = plain * scale.view(view) + shift.view(view)
    torch.testing.assert_close(model(x), expected)
    merge(model)
    torch.testing.assert_close(model(x), expected)
