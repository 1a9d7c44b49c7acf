"""Every adapter method through the same checks on every model family (PEFT's test matrix idea).

The methods come from the registry (``core.adapters.METHODS``): a newly registered method
runs here with its config's defaults, and ``VARIANTS`` adds the configurations worth
covering on their own (LoRA's variants, smaller sizes). Checks: output unchanged at init,
merge/unmerge restores weights, merged == unmerged output, save/load round trip, disabled
adapter == base output, only adapter parameters get gradients, and a few optimizer steps
reduce a loss. Each check is a ``check_*`` function, so a test can run the whole matrix on a
method it registers itself (``test_registry.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from core.adapters import (
    METHODS,
    AdapterConfig,
    BottleneckConfig,
    CompacterConfig,
    LolduConfig,
    LoraConfig,
    NotMergeableError,
    SsfConfig,
    adapter_layers,
    adapter_tensors,
    disable_adapters,
    inject,
    load_adapter,
    merge,
    save_adapter,
    trainable_parameters,
    unmerge,
)
from core.adapters.lora_init import LORA_INITS

from .models import MODEL_CASES, ModelCase


@dataclass(frozen=True)
class Variant:
    """One configuration of a method in the matrix.

    ``config(targets)`` builds it; ``conv``: also adapt the model's conv layers (``None``:
    when the method's registration supports them); ``mergeable``: what merging must do
    (``None``: what the built units say).
    """

    config: Callable[[list[str]], AdapterConfig]
    conv: bool | None = None
    mergeable: bool | None = None


# Configurations beyond a method's defaults, by method; a registered method missing here
# runs once, with its config's defaults.
VARIANTS: dict[str, dict[str, Variant]] = {
    "lora": {
        "lora": Variant(lambda t: LoraConfig(r=4, alpha=8, target_modules=t), True, True),
        "lora_gaussian": Variant(
            lambda t: LoraConfig(r=4, init="gaussian", target_modules=t), True, True
        ),
        "rslora": Variant(
            lambda t: LoraConfig(r=4, alpha=8, use_rslora=True, target_modules=t), True, True
        ),
        "dora": Variant(
            lambda t: LoraConfig(r=4, alpha=8, use_dora=True, target_modules=t), True, True
        ),
        "pissa": Variant(
            lambda t: LoraConfig(r=4, alpha=4, init="pissa", target_modules=t), True, True
        ),
        "corda_ipm": Variant(
            lambda t: LoraConfig(r=4, init="corda", target_modules=t), False, True
        ),
        "corda_kpm": Variant(
            lambda t: LoraConfig(r=4, init="corda", corda_mode="kpm", target_modules=t),
            False,
            True,
        ),
    },
    "ssf": {"ssf": Variant(lambda t: SsfConfig(target_modules=t), True, True)},
    "bottleneck": {
        "bottleneck": Variant(
            lambda t: BottleneckConfig(bottleneck_dim=8, target_modules=t), False, False
        )
    },
    "compacter": {
        "compacter": Variant(
            lambda t: CompacterConfig(bottleneck_dim=8, phm_dim=4, target_modules=t), False, False
        )
    },
    "loldu": {"loldu": Variant(lambda t: LolduConfig(r=4, target_modules=t), False, True)},
}


def matrix_variants() -> dict[str, Variant]:
    """Every registered method's variants, by id, read from the registry when called."""
    variants: dict[str, Variant] = {}
    for name, method in METHODS.items():
        default = {name: Variant(lambda t, cls=method.config: cls(target_modules=t))}
        variants.update(VARIANTS.get(name, default))
    return variants


def _targets(variant: Variant, case: ModelCase, model: nn.Module) -> list[str]:
    """The case's linear layers, plus its conv layers where the variant adapts them."""
    conv = variant.conv
    if conv is None:
        supports = METHODS[variant.config([]).method].supports
        conv = all(supports(model.get_submodule(name)) for name in case.conv_targets)
    return case.linear_targets + (case.conv_targets if conv else [])


def _setup(variant: Variant, case: ModelCase) -> tuple[nn.Module, nn.Module, torch.Tensor, bool]:
    """(base model, model with the adapter, input, whether merging must work)."""
    base = case.build()
    model = case.build()
    x = case.make_input()
    config = variant.config(_targets(variant, case, base))
    inject(model, config, calibration=[x] if config.needs_calibration else None)
    mergeable = variant.mergeable
    if mergeable is None:
        mergeable = all(layer.adapters["default"].mergeable for _, layer in adapter_layers(model))
    return base, model, x, mergeable


def _perturb(model: nn.Module, seed: int = 0) -> None:
    """Move every adapter parameter away from its init so the checks are not vacuous."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in trainable_parameters(model).values():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------- checks
def check_output_unchanged_at_init(variant: Variant, case: ModelCase, tmp_path: Path) -> None:
    base, model, x, _ = _setup(variant, case)
    torch.testing.assert_close(case.run(model, x), case.run(base, x), atol=2e-5, rtol=1e-4)


def check_merge_unmerge(variant: Variant, case: ModelCase, tmp_path: Path) -> None:
    _, model, x, mergeable = _setup(variant, case)
    _perturb(model)
    before = _weights(model)
    expected = case.run(model, x)
    if not mergeable:
        with pytest.raises(NotMergeableError):
            merge(model)
        for k, v in _weights(model).items():
            torch.testing.assert_close(v, before[k], atol=0, rtol=0)
        return
    merge(model)
    changed = any(not torch.equal(v, before[k]) for k, v in _weights(model).items())
    assert changed, "merge did not change any base weight"
    torch.testing.assert_close(case.run(model, x), expected, atol=1e-4, rtol=1e-4)
    unmerge(model)
    for k, v in _weights(model).items():
        torch.testing.assert_close(v, before[k], atol=1e-5, rtol=0, msg=f"weight {k} not restored")
    torch.testing.assert_close(case.run(model, x), expected, atol=1e-5, rtol=1e-5)


def check_save_load_round_trip(variant: Variant, case: ModelCase, tmp_path: Path) -> None:
    _, model, x, _ = _setup(variant, case)
    _perturb(model)
    expected = case.run(model, x)
    save_adapter(model, tmp_path / "adapter")
    fresh = case.build()
    load_adapter(fresh, tmp_path / "adapter")
    torch.testing.assert_close(case.run(fresh, x), expected, atol=1e-5, rtol=1e-4)


def check_disabled_adapter_gives_base_output(
    variant: Variant, case: ModelCase, tmp_path: Path
) -> None:
    base, model, x, mergeable = _setup(variant, case)
    _perturb(model)
    assert not torch.allclose(case.run(model, x), case.run(base, x), atol=1e-4)
    if mergeable:
        merge(model)
    with disable_adapters(model):
        torch.testing.assert_close(case.run(model, x), case.run(base, x), atol=2e-5, rtol=1e-4)


def check_only_adapter_parameters_train(variant: Variant, case: ModelCase, tmp_path: Path) -> None:
    _, model, x, _ = _setup(variant, case)
    _perturb(model)
    case.run(model, x).float().pow(2).mean().backward()
    adapter_ids = {id(p) for p in adapter_tensors(model, "default").values()}
    assert adapter_ids, "no adapter parameters"
    for name, p in model.named_parameters():
        if id(p) in adapter_ids:
            assert p.requires_grad, name
        else:
            assert p.grad is None, f"base parameter {name} received a gradient"
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for p in trainable_parameters(model).values()
    )


def check_optimizer_steps_reduce_loss(variant: Variant, case: ModelCase, tmp_path: Path) -> None:
    _, model, x, _ = _setup(variant, case)
    model.train()
    with torch.no_grad():
        target = torch.randn_like(case.run(model, x).float())
    optimizer = torch.optim.Adam(trainable_parameters(model).values(), lr=1e-2)
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = (case.run(model, x).float() - target).pow(2).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


CHECKS = [
    check_output_unchanged_at_init,
    check_merge_unmerge,
    check_save_load_round_trip,
    check_disabled_adapter_gives_base_output,
    check_only_adapter_parameters_train,
    check_optimizer_steps_reduce_loss,
]


# ------------------------------------------------------------------------------- the matrix
CASES = [(v, c) for v in matrix_variants() for c in MODEL_CASES]


@pytest.mark.parametrize(("variant", "case_name"), CASES)
def test_output_unchanged_at_init(variant: str, case_name: str, tmp_path: Path) -> None:
    check_output_unchanged_at_init(matrix_variants()[variant], MODEL_CASES[case_name], tmp_path)


@pytest.mark.parametrize(("variant", "case_name"), CASES)
def test_merge_unmerge(variant: str, case_name: str, tmp_path: Path) -> None:
    check_merge_unmerge(matrix_variants()[variant], MODEL_CASES[case_name], tmp_path)


@pytest.mark.parametrize(("variant", "case_name"), CASES)
def test_save_load_round_trip(variant: str, case_name: str, tmp_path: Path) -> None:
    check_save_load_round_trip(matrix_variants()[variant], MODEL_CASES[case_name], tmp_path)


@pytest.mark.parametrize(("variant", "case_name"), CASES)
def test_disabled_adapter_gives_base_output(variant: str, case_name: str, tmp_path: Path) -> None:
    check_disabled_adapter_gives_base_output(
        matrix_variants()[variant], MODEL_CASES[case_name], tmp_path
    )


@pytest.mark.parametrize(("variant", "case_name"), CASES)
def test_only_adapter_parameters_train(variant: str, case_name: str, tmp_path: Path) -> None:
    check_only_adapter_parameters_train(
        matrix_variants()[variant], MODEL_CASES[case_name], tmp_path
    )


@pytest.mark.parametrize(("variant", "case_name"), CASES)
def test_optimizer_steps_reduce_loss(variant: str, case_name: str, tmp_path: Path) -> None:
    check_optimizer_steps_reduce_loss(matrix_variants()[variant], MODEL_CASES[case_name], tmp_path)


def test_matrix_covers_every_registered_method_and_lora_variant() -> None:
    variants = matrix_variants()
    configs = [v.config(["x"]) for v in variants.values()]
    assert {c.method for c in configs} == set(METHODS)
    lora = [c for c in configs if isinstance(c, LoraConfig)]
    assert {c.init for c in lora} == set(LORA_INITS)
    assert {(c.use_dora, c.use_rslora) for c in lora} >= {
        (False, False),
        (True, False),
        (False, True),
    }
    assert {c.corda_mode for c in lora if c.needs_calibration} == {"ipm", "kpm"}
