"""Every adapter method through the same checks on every model family (PEFT's test matrix idea).

Checks: output unchanged at init, merge/unmerge restores weights, merged == unmerged
output, save/load round trip, disabled adapter == base output, only adapter parameters get
gradients, and a few optimizer steps reduce a loss.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from core.adapters import (
    BottleneckConfig,
    CompacterConfig,
    LolduConfig,
    LoraConfig,
    NotMergeableError,
    SsfConfig,
    adapter_tensors,
    disable_adapters,
    inject,
    load_adapter,
    merge,
    save_adapter,
    trainable_parameters,
    unmerge,
)

from .models import MODEL_CASES, ModelCase

# method id -> (config factory given target list, uses conv targets too, mergeable)
METHODS = {
    "lora": (lambda t: LoraConfig(r=4, alpha=8, target_modules=t), True, True),
    "lora_gaussian": (lambda t: LoraConfig(r=4, init="gaussian", target_modules=t), True, True),
    "rslora": (lambda t: LoraConfig(r=4, alpha=8, use_rslora=True, target_modules=t), True, True),
    "dora": (lambda t: LoraConfig(r=4, alpha=8, use_dora=True, target_modules=t), True, True),
    "pissa": (lambda t: LoraConfig(r=4, alpha=4, init="pissa", target_modules=t), True, True),
    "corda_ipm": (lambda t: LoraConfig(r=4, init="corda", target_modules=t), False, True),
    "corda_kpm": (
        lambda t: LoraConfig(r=4, init="corda", corda_mode="kpm", target_modules=t),
        False,
        True,
    ),
    "ssf": (lambda t: SsfConfig(target_modules=t), True, True),
    "bottleneck": (lambda t: BottleneckConfig(bottleneck_dim=8, target_modules=t), False, False),
    "compacter": (
        lambda t: CompacterConfig(bottleneck_dim=8, phm_dim=4, target_modules=t),
        False,
        False,
    ),
    "loldu": (lambda t: LolduConfig(r=4, target_modules=t), False, True),
}


def _setup(method: str, case: ModelCase) -> tuple[nn.Module, nn.Module, torch.Tensor, bool]:
    factory, with_conv, mergeable = METHODS[method]
    targets = case.linear_targets + (case.conv_targets if with_conv else [])
    base = case.build()
    model = case.build()
    x = case.make_input()
    calibration = [x] if method.startswith("corda") else None
    inject(model, factory(targets), calibration=calibration)
    return base, model, x, mergeable


def _perturb(model: nn.Module, seed: int = 0) -> None:
    """Move every adapter parameter away from its init so the checks are not vacuous."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in trainable_parameters(model).values():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


CASES = [(m, c) for m in METHODS for c in MODEL_CASES]


@pytest.mark.parametrize(("method", "case_name"), CASES)
def test_output_unchanged_at_init(method: str, case_name: str) -> None:
    case = MODEL_CASES[case_name]
    base, model, x, _ = _setup(method, case)
    torch.testing.assert_close(case.run(model, x), case.run(base, x), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize(("method", "case_name"), CASES)
def test_merge_unmerge(method: str, case_name: str) -> None:
    case = MODEL_CASES[case_name]
    _, model, x, mergeable = _setup(method, case)
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


@pytest.mark.parametrize(("method", "case_name"), CASES)
def test_save_load_round_trip(method: str, case_name: str, tmp_path) -> None:
    case = MODEL_CASES[case_name]
    _, model, x, _ = _setup(method, case)
    _perturb(model)
    expected = case.run(model, x)
    save_adapter(model, tmp_path / "adapter")
    fresh = case.build()
    load_adapter(fresh, tmp_path / "adapter")
    torch.testing.assert_close(case.run(fresh, x), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("method", "case_name"), CASES)
def test_disabled_adapter_gives_base_output(method: str, case_name: str) -> None:
    case = MODEL_CASES[case_name]
    base, model, x, mergeable = _setup(method, case)
    _perturb(model)
    assert not torch.allclose(case.run(model, x), case.run(base, x), atol=1e-4)
    if mergeable:
        merge(model)
    with disable_adapters(model):
        torch.testing.assert_close(case.run(model, x), case.run(base, x), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize(("method", "case_name"), CASES)
def test_only_adapter_parameters_train(method: str, case_name: str) -> None:
    case = MODEL_CASES[case_name]
    _, model, x, _ = _setup(method, case)
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


@pytest.mark.parametrize(("method", "case_name"), CASES)
def test_optimizer_steps_reduce_loss(method: str, case_name: str) -> None:
    case = MODEL_CASES[case_name]
    _, model, x, _ = _setup(method, case)
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


def test_matrix_covers_every_registered_method() -> None:
    from core.adapters import ADAPTER_REGISTRY

    covered = {copy.copy(factory(["x"])).method for factory, _, _ in METHODS.values()}
    assert covered == set(ADAPTER_REGISTRY)
