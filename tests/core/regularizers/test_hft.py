"""Half Fine-Tuning: groups per granularity, the mask, freezing and restoring, stages."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.regularizers import HalfFineTuning, parameter_groups

NAMES = [
    "embed.weight",
    "layers.0.attn.q.weight",
    "layers.0.attn.q.bias",
    "layers.0.mlp.up.weight",
    "layers.1.attn.q.weight",
    "layers.1.mlp.up.weight",
    "head.weight",
]


def test_groups_at_each_granularity() -> None:
    assert list(parameter_groups(NAMES, "layer")) == ["embed", "layers.0", "layers.1", "head"]
    assert list(parameter_groups(NAMES, "module")) == [
        "embed",
        "layers.0.attn.q",
        "layers.0.mlp.up",
        "layers.1.attn.q",
        "layers.1.mlp.up",
        "head",
    ]
    assert list(parameter_groups(NAMES, "tensor")) == NAMES
    with pytest.raises(ValueError, match="granularity='block'"):
        parameter_groups(NAMES, "block")


class Stack(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList([nn.Linear(4, 4) for _ in range(6)])
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.head(x)


def test_mask_freezes_half_of_the_groups_reproducibly_and_changes_per_stage() -> None:
    model = Stack()
    hft = HalfFineTuning(granularity="layer", always_train=["head"], seed=3)
    frozen = hft.frozen_groups(model)
    assert len(frozen) == 3 and all(g.startswith("layers.") for g in frozen)
    assert frozen == HalfFineTuning(
        granularity="layer", always_train=["head"], seed=3
    ).frozen_groups(model)
    stages = {tuple(hft.frozen_groups(model, stage=s)) for s in range(6)}
    assert len(stages) > 1
    mask = hft.mask(model)
    assert mask["head.weight"] and sum(not v for v in mask.values()) == 6  # 3 layers x 2


def test_training_changes_only_the_unfrozen_half_and_end_restores_requires_grad() -> None:
    model = Stack()
    model.layers[0].bias.requires_grad_(False)  # the user's own freeze must survive
    hft = HalfFineTuning(granularity="module", seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    hft.on_train_start(model)
    mask = hft.mask(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.randn(8, 4)).pow(2).sum().backward()
    opt.step()
    for name, p in model.named_parameters():
        changed = not torch.equal(p, before[name])
        assert changed == (mask[name] and name != "layers.0.bias"), name
    hft.on_train_end(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(before) - {"layers.0.bias"}


def test_update_moves_to_the_next_stage() -> None:
    model = Stack()
    hft = HalfFineTuning(seed=1)
    first = hft.frozen_groups(model)
    hft.on_train_start(model)
    hft.update(model)
    assert hft.stage == 1 and all(p.requires_grad for p in model.parameters())
    assert hft.frozen_groups(model) == hft.frozen_groups(model, stage=1)
    assert first == hft.frozen_groups(model, stage=0)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"fraction=1\.0"):
        HalfFineTuning(fraction=1.0)
    with pytest.raises(ValueError, match="granularity='row'"):
        HalfFineTuning(granularity="row")
