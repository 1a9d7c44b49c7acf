"""The adapter-method registry: one registration makes a method work everywhere.

A throwaway method, registered here and unregistered after each test, goes through the whole
test matrix, inject, save/load, ``config_from_dict`` and an ``AdapterBank``; a second one
that needs calibration data gets it from ``inject`` because its config says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from torch import Tensor, nn

from core.adapters import (
    ADAPTER_REGISTRY,
    METHODS,
    AdapterBank,
    AdapterConfig,
    AdapterMethod,
    AdapterUnit,
    BuildContext,
    LoraConfig,
    config_from_dict,
    get_config_class,
    get_method,
    inject,
    load_adapter,
    register_method,
    save_adapter,
    unregister_method,
)
from core.adapters.layer import layer_dims, per_channel, set_weight_matrix, weight_matrix
from core.adapters.targeting import is_linear_like

from .models import MODEL_CASES
from .test_matrix import CHECKS, matrix_variants


@dataclass
class ScaleConfig(AdapterConfig):
    """Test method: a trainable per-output-channel scale after each linear layer."""

    method: ClassVar[str] = "test_scale"
    peft_type: ClassVar[str] = "TEST_SCALE"
    start: float = 1.0


class ScaleUnit(AdapterUnit):
    """``out * g``; merges into the layer as W' = diag(g) W, b' = g b."""

    method = "test_scale"
    mergeable = True

    def __init__(self, base: nn.Module, config: ScaleConfig) -> None:
        super().__init__()
        out_f, _ = layer_dims(base)
        like = {"dtype": base.weight.dtype, "device": base.weight.device}
        self.test_scale = nn.Parameter(torch.full((out_f,), config.start, **like))

    def forward(self, x: Tensor, out: Tensor, base: nn.Module) -> Tensor:
        return out * per_channel(self.test_scale, out, -1)

    def _scale(self, base: nn.Module, factor: Tensor) -> None:
        with torch.no_grad():
            set_weight_matrix(base, weight_matrix(base) * factor[:, None])
            if getattr(base, "bias", None) is not None:
                base.bias.mul_(factor)

    def merge(self, base: nn.Module) -> None:
        self._scale(base, self.test_scale)

    def unmerge(self, base: nn.Module) -> None:
        self._scale(base, 1.0 / self.test_scale)


def build_scale_unit(
    base: nn.Module, module_name: str, config: ScaleConfig, context: BuildContext
) -> ScaleUnit:
    return ScaleUnit(base, config)


@pytest.fixture
def scale_method() -> Iterator[AdapterMethod]:
    method = register_method(ScaleConfig, supports=is_linear_like, build=build_scale_unit)
    try:
        yield method
    finally:
        unregister_method(ScaleConfig.method)


@pytest.mark.parametrize("case_name", sorted(MODEL_CASES))
def test_a_registered_method_runs_through_the_whole_matrix(
    scale_method: AdapterMethod, case_name: str, tmp_path: Path
) -> None:
    variants = matrix_variants()
    assert ScaleConfig.method in variants  # picked up from the registry, defaults and all
    for check in CHECKS:
        check(variants[ScaleConfig.method], MODEL_CASES[case_name], tmp_path / check.__name__)


def test_a_registered_method_is_known_by_name_everywhere(
    scale_method: AdapterMethod, tmp_path: Path
) -> None:
    assert ADAPTER_REGISTRY["test_scale"] is ScaleConfig
    assert get_method("TEST_SCALE") is scale_method  # by PEFT peft_type too
    assert config_from_dict({"method": "test_scale", "start": 2.0}) == ScaleConfig(start=2.0)
    model = MODEL_CASES["mlp"].build()
    inject(model, ScaleConfig(start=1.5, target_modules=["0"]))
    save_adapter(model, tmp_path / "a")
    fresh = MODEL_CASES["mlp"].build()
    load_adapter(fresh, tmp_path / "a")
    assert torch.equal(fresh[0].adapters["default"].test_scale, torch.full((32,), 1.5))


def test_a_registered_method_without_stacking_is_routed_per_unit(
    scale_method: AdapterMethod,
) -> None:
    model = MODEL_CASES["mlp"].build()
    x = torch.randn(3, 12)
    expected = model(x)
    bank = AdapterBank(model, ScaleConfig(start=2.0, target_modules=["4"]), names=["a", "b"])
    assert not bank.stacked
    routed = bank(x, adapter_ids=torch.tensor([0, -1, 1]))
    torch.testing.assert_close(routed[[0, 2]], 2 * expected[[0, 2]])
    torch.testing.assert_close(routed[1], expected[1])


def test_unregistering_forgets_the_method() -> None:
    register_method(ScaleConfig, supports=is_linear_like, build=build_scale_unit)
    unregister_method("test_scale")
    assert "test_scale" not in METHODS and "test_scale" not in ADAPTER_REGISTRY
    assert "test_scale" not in matrix_variants()
    with pytest.raises(ValueError, match="Unknown adapter method 'test_scale'"):
        config_from_dict({"method": "test_scale"})
    with pytest.raises(ValueError, match="Unknown adapter method 'test_scale'"):
        inject(MODEL_CASES["mlp"].build(), ScaleConfig(target_modules=["0"]))


def test_registration_refuses_taken_names_and_bad_configs(scale_method: AdapterMethod) -> None:
    with pytest.raises(ValueError, match="'test_scale' is already registered"):
        register_method(ScaleConfig, supports=is_linear_like, build=build_scale_unit)

    @dataclass
    class SamePeftType(AdapterConfig):
        method: ClassVar[str] = "test_other"
        peft_type: ClassVar[str] = "test_scale"

    with pytest.raises(ValueError, match="peft_type 'test_scale' is already used"):
        register_method(SamePeftType, supports=is_linear_like, build=build_scale_unit)

    class NotADataclass(AdapterConfig):
        method: ClassVar[str] = "test_plain"
        peft_type: ClassVar[str] = "TEST_PLAIN"

    @dataclass
    class UpperCase(AdapterConfig):
        method: ClassVar[str] = "Test_Upper"
        peft_type: ClassVar[str] = "TEST_UPPER"

    @dataclass
    class NoPeftType(AdapterConfig):
        method: ClassVar[str] = "test_untagged"

    for bad in (NotADataclass, UpperCase, NoPeftType):
        with pytest.raises(ValueError, match="lower-case `method` name"):
            register_method(bad, supports=is_linear_like, build=build_scale_unit)
    assert set(METHODS) == {*ADAPTER_REGISTRY} and "test_other" not in METHODS


def test_every_builtin_method_is_registered_with_its_config_class() -> None:
    for name, method in METHODS.items():
        assert method.name == name == method.config.method
        assert get_config_class(name) is method.config is ADAPTER_REGISTRY[name]
    assert get_method("lora").stacking is not None  # the bank's multi-adapter kernel path


# ------------------------------------------------------------------ calibration capability
@dataclass
class CalibratedConfig(AdapterConfig):
    """Test method whose units are built from the input covariance of their layer."""

    method: ClassVar[str] = "test_calibrated"
    peft_type: ClassVar[str] = "TEST_CALIBRATED"

    @property
    def needs_calibration(self) -> bool:
        return True


@pytest.fixture
def calibrated_method() -> Iterator[list[tuple[str, BuildContext]]]:
    seen: list[tuple[str, BuildContext]] = []

    def build(
        base: nn.Module, module_name: str, config: CalibratedConfig, context: BuildContext
    ) -> ScaleUnit:
        seen.append((module_name, context))
        return ScaleUnit(base, ScaleConfig())

    register_method(CalibratedConfig, supports=is_linear_like, build=build)
    try:
        yield seen
    finally:
        unregister_method(CalibratedConfig.method)


def test_inject_calibrates_the_configs_that_need_it(
    calibrated_method: list[tuple[str, BuildContext]],
) -> None:
    model = MODEL_CASES["mlp"].build()
    with pytest.raises(ValueError, match="test_calibrated needs calibration data"):
        inject(model, CalibratedConfig(target_modules=["0", "2"]))
    assert calibrated_method == []  # refused before building anything
    batches = [torch.randn(4, 12), torch.randn(5, 12)]
    inject(model, CalibratedConfig(target_modules=["0", "2"]), calibration=batches)
    names = [name for name, _ in calibrated_method]
    assert names == ["0", "2"]
    context = calibrated_method[0][1]
    expected = sum(b.double().T @ b.double() for b in batches)
    torch.testing.assert_close(context.covariances["0"], expected)
    hidden = [torch.relu(model[0].base_layer(b)).double() for b in batches]
    torch.testing.assert_close(context.covariances["2"], sum(h.T @ h for h in hidden))
    calibrated_method.clear()
    inject(MODEL_CASES["mlp"].build(), CalibratedConfig(target_modules=["0"]), structure_only=True)
    assert calibrated_method[0][1].structure_only and not calibrated_method[0][1].covariances


def test_capabilities_come_from_the_config() -> None:
    assert LoraConfig(init="corda").needs_calibration and LoraConfig(init="corda").rewrites_base
    assert LoraConfig(init="pissa").rewrites_base and not LoraConfig(init="pissa").needs_calibration
    assert LoraConfig().stackable and not LoraConfig(use_dora=True).stackable
    assert get_config_class("loldu")().rewrites_base
    for name in ("ssf", "bottleneck", "compacter"):
        config = get_config_class(name)()
        assert not (config.needs_calibration or config.rewrites_base or config.stackable)
