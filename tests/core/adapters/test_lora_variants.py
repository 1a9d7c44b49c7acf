"""LoRA's variants: chosen by the config, and one scale rule used by every LoRA code path."""

from __future__ import annotations

import math

import pytest
import torch

from core.adapters import AdapterBank, LoraConfig, inject, save_adapter
from core.adapters.lora_init import LORA_INITS
from core.adapters.lora_variants import DORA, LORA_SCALE, PLAIN, RSLORA_SCALE
from core.merging import read_lora_adapter

from .models import MODEL_CASES


@pytest.mark.parametrize(
    ("rule", "alpha", "r", "expected"),
    [(LORA_SCALE, 16, 4, 4.0), (RSLORA_SCALE, 16, 4, 8.0), (RSLORA_SCALE, 3, 9, 1.0)],
)
def test_scale_rules(rule, alpha: float, r: int, expected: float) -> None:
    assert rule.scaling(alpha, r) == expected


@pytest.mark.parametrize("rule", [LORA_SCALE, RSLORA_SCALE])
@pytest.mark.parametrize("r", [1, 3, 8, 17])
def test_alpha_factor_keeps_the_scale_when_the_rank_changes(rule, r: int) -> None:
    for factor in (2, 3):
        kept = rule.scaling(5.0 * rule.alpha_factor(factor), factor * r)
        assert kept == pytest.approx(rule.scaling(5.0, r), rel=1e-12)


def test_the_config_chooses_the_variants() -> None:
    assert LoraConfig().variant is PLAIN and LoraConfig(use_dora=True).variant is DORA
    assert LoraConfig().scale_rule is LORA_SCALE
    assert LoraConfig(use_rslora=True).scale_rule is RSLORA_SCALE
    for name, init in LORA_INITS.items():
        assert LoraConfig(init=name).init_variant is init
    model = MODEL_CASES["mlp"].build()
    inject(model, LoraConfig(r=2, use_dora=True, target_modules=["0"]))
    unit = model[0].adapters["default"]
    assert unit.variant is DORA and hasattr(unit, "lora_magnitude_vector")


def test_every_lora_path_uses_the_config_scale(tmp_path) -> None:
    """The injected unit, the bank's stacks and adapter merging all take s from the config."""
    config = LoraConfig(
        r=4,
        alpha=6.0,
        use_rslora=True,
        target_modules=["0", "2"],
        rank_pattern={"2": 3},
        alpha_pattern={"2": 5.0},
    )
    expected = {m: config.scaling_for(m)[1] for m in ("0", "2")}
    assert expected == {"0": 6.0 / 2.0, "2": 5.0 / math.sqrt(3)}
    model = MODEL_CASES["mlp"].build()
    inject(model, config)
    assert {m: model.get_submodule(m).adapters["default"].scaling for m in expected} == expected
    save_adapter(model, tmp_path / "a")
    merged = read_lora_adapter(tmp_path / "a")
    assert {m: f.scaling for m, f in merged.modules.items()} == expected
    bank = AdapterBank(MODEL_CASES["mlp"].build(), config, names=["x", "y"])
    for m, s in expected.items():
        assert bank.stack_layers[m].scaling_values == [s, s]
        assert torch.equal(bank.stack_layers[m].scalings, torch.tensor([s, s]))


@pytest.mark.parametrize("rslora", [False, True])
def test_svd_inits_save_as_plain_lora_with_the_same_scale(tmp_path, rslora: bool) -> None:
    config = LoraConfig(r=3, alpha=6.0, init="pissa", use_rslora=rslora, target_modules=["0"])
    model = MODEL_CASES["mlp"].build()
    inject(model, config)
    save_adapter(model, tmp_path / "a")
    saved = read_lora_adapter(tmp_path / "a")
    assert saved.config.r == 6 and saved.config.init == "default"
    assert saved.modules["0"].scaling == pytest.approx(config.scaling_for("0")[1], rel=1e-12)
