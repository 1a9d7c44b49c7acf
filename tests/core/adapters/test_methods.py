"""Method-specific facts: SSF merging into norms, Compacter sharing, LoLDU budget, activation."""

from __future__ import annotations

import torch
from torch import nn

from core.adapters import (
    CompacterConfig,
    LolduConfig,
    LoraConfig,
    SsfConfig,
    active_adapters,
    delete_adapter,
    inject,
    merge,
    set_active,
    trainable_parameters,
    unmerge,
)
from core.adapters.compacter import kronecker_sum

from .models import MODEL_CASES


def test_ssf_merges_into_layernorm_and_biasless_linear() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8, bias=False), nn.LayerNorm(8), nn.Linear(8, 3))
    inject(model, SsfConfig(init="paper", init_std=0.3, target_modules=["0", "1"]))
    x = torch.randn(4, 6)
    expected = model(x)
    merge(model)
    assert model[0].base_layer.bias is not None
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    unmerge(model)
    assert model[0].base_layer.bias is None
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


def test_compacter_rules_are_shared_across_layers() -> None:
    model = MODEL_CASES["llama"].build()
    inject(
        model, CompacterConfig(bottleneck_dim=8, phm_dim=4, target_modules=["o_proj", "down_proj"])
    )
    units = [m.adapters["default"] for m in model.modules() if hasattr(m, "adapters")]
    assert len(units) == 4
    assert all(u.adapter_down.rules is units[0].adapter_down.rules for u in units)
    # Shared rules counted once among the trainable parameters.
    params = trainable_parameters(model)
    assert sum(p is units[0].adapter_down.rules for p in params.values()) == 1


def test_kronecker_sum_matches_torch_kron() -> None:
    rules, factors = torch.randn(3, 3, 3), torch.randn(3, 2, 5)
    expected = sum(torch.kron(rules[i], factors[i]) for i in range(3))
    torch.testing.assert_close(kronecker_sum(rules, factors), expected)


def test_loldu_trains_r_plus_one_numbers_per_layer() -> None:
    model = MODEL_CASES["mlp"].build()
    inject(model, LolduConfig(r=4, target_modules=["0", "2"]))
    assert sum(p.numel() for p in trainable_parameters(model).values()) == 2 * (4 + 1)


def test_set_active_switches_adapters_and_their_gradients() -> None:
    model = MODEL_CASES["mlp"].build()
    x = torch.randn(3, 12)
    inject(model, LoraConfig(r=2, target_modules=["0"]), name="a")
    inject(model, LoraConfig(r=2, target_modules=["0"]), name="b")
    assert active_adapters(model) == ["a"]
    with torch.no_grad():
        model[0].adapters["b"].lora_B.weight.fill_(0.5)
    out_a = model(x)
    set_active(model, "b")
    assert not torch.allclose(model(x), out_a)
    assert not model[0].adapters["a"].lora_B.weight.requires_grad
    assert model[0].adapters["b"].lora_B.weight.requires_grad
    delete_adapter(model, "b")
    delete_adapter(model, "a")
    assert isinstance(model[0], nn.Linear)
