"""Per-step warm-up + cosine schedule (core/training/schedules.py), against its closed form."""

from __future__ import annotations

import math

import pytest
import torch

from core.training.schedules import warmup_cosine, with_warmup_cosine


def test_warmup_cosine_closed_form():
    assert warmup_cosine(0, 10, 110) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 110) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, 110) == pytest.approx(1.0)
    # halfway through the decay: floor + (1 - floor) / 2
    assert warmup_cosine(60, 10, 110, floor=0.2) == pytest.approx(0.6)
    assert warmup_cosine(110, 10, 110, floor=0.2) == pytest.approx(0.2)
    assert warmup_cosine(500, 10, 110, floor=0.2) == pytest.approx(0.2)
    assert warmup_cosine(35, 10, 110, floor=0.0) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 0.25))
    )


def test_with_warmup_cosine_steps_the_optimizer_lr_per_step():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.5)
    config = with_warmup_cosine({"optimizer": optimizer}, warmup=4, total=20, floor=0.1)
    assert config["lr_scheduler"]["interval"] == "step" and config["optimizer"] is optimizer
    scheduler = config["lr_scheduler"]["scheduler"]
    seen = []
    for _ in range(25):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [0.5 * warmup_cosine(s, 4, 20, 0.1) for s in range(25)]
    assert seen == pytest.approx(expected)
    with pytest.raises(TypeError, match="optimizer"):
        with_warmup_cosine(object(), 1, 10)
