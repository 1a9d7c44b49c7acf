"""The ops under autocast (``precision="bf16-mixed"``): results within bf16 tolerance of the
fp32 truth, output dtypes as autocast gives the unfused ops, gradients in each input's own
dtype, and a Lightning fit."""

from __future__ import annotations

import pytest
import torch

from fused_kernels.amp import autocast_dtype, cast_floating
from fused_kernels.cross_entropy import linear_cross_entropy, linear_cross_entropy_reference
from fused_kernels.lora import dora_linear, lora_linear, lora_linear_reference
from fused_kernels.multi_lora import multi_lora_accumulate_, multi_lora_delta, multi_lora_reference

from .backends import BACKENDS, DEVICE, assert_close_for

# Lightning's "bf16-mixed" and "16-mixed"; checked with bf16's (looser) tolerance.
HALF = [torch.bfloat16, torch.float16]


def _autocast(dtype: torch.dtype = torch.bfloat16):
    return torch.autocast(torch.device(DEVICE).type, dtype=dtype)


def _grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


def test_autocast_dtype_follows_the_region() -> None:
    x = torch.ones(2, device=DEVICE)
    assert autocast_dtype(x) is None
    with _autocast():
        assert autocast_dtype(x) == torch.bfloat16
        with torch.autocast(torch.device(DEVICE).type, enabled=False):
            assert autocast_dtype(x) is None


def test_autocast_dtype_of_a_device_autocast_does_not_know() -> None:
    assert autocast_dtype(torch.empty(2, device="meta")) is None


def test_cast_floating_leaves_none_and_integers() -> None:
    ids, none, x = torch.arange(3), None, torch.ones(2)
    cast = cast_floating(torch.bfloat16, ids, none, x)
    assert cast[0] is ids and cast[1] is None and cast[2].dtype == torch.bfloat16


@pytest.mark.parametrize("half", HALF)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_mask", [False, True])
def test_lora_linear_under_autocast(backend: str, with_mask: bool, half, force_backend) -> None:
    force_backend(backend)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 33, generator=gen).to(DEVICE).requires_grad_()
    weight, bias = torch.randn(17, 33, generator=gen), torch.randn(17, generator=gen)
    weight, bias = weight.to(DEVICE), bias.to(DEVICE)
    a = (torch.randn(4, 33, generator=gen) * 0.3).to(DEVICE).requires_grad_()
    b = (torch.randn(17, 4, generator=gen) * 0.3).to(DEVICE).requires_grad_()
    mask = (torch.rand(7, 33, generator=gen) > 0.2).float().div(0.8).to(DEVICE)
    mask = mask if with_mask else None
    with _autocast(half):
        ours = lora_linear(x, weight, bias, a, b, 2.0, mask)
        unfused = lora_linear_reference(x, weight, bias, a, b, 2.0, mask)
    truth = lora_linear_reference(x, weight, bias, a, b, 2.0, mask)
    assert ours.dtype == unfused.dtype == half
    assert_close_for(torch.bfloat16, ours, truth, "y")
    upstream = torch.randn(ours.shape, generator=gen).to(DEVICE)
    got = _grads((ours.float() * upstream).sum(), (x, a, b))
    want = _grads((truth * upstream).sum(), (x, a, b))
    for g, w, leaf, name in zip(got, want, (x, a, b), "xab", strict=True):
        assert g.dtype == leaf.dtype == torch.float32
        assert_close_for(torch.bfloat16, g, w, f"d{name}")


def test_dora_linear_under_autocast() -> None:
    """DoRA goes through lora_linear; its rescale and norm stay in fp32, as PEFT's do."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(5, 24, generator=gen).to(DEVICE).requires_grad_()
    weight = torch.randn(12, 24, generator=gen).to(DEVICE)
    a = (torch.randn(4, 24, generator=gen) * 0.3).to(DEVICE).requires_grad_()
    b = (torch.randn(12, 4, generator=gen) * 0.3).to(DEVICE).requires_grad_()
    magnitude = torch.rand(12, generator=gen).add(0.5).to(DEVICE).requires_grad_()
    with _autocast():
        ours = dora_linear(x, weight, None, a, b, 2.0, magnitude)
    truth = dora_linear(x, weight, None, a, b, 2.0, magnitude)
    assert_close_for(torch.bfloat16, ours, truth, "y")
    leaves = (x, a, b, magnitude)
    got = _grads(ours.float().square().sum(), leaves)
    want = _grads(truth.square().sum(), leaves)
    for g, w, leaf, name in zip(got, want, leaves, ("x", "A", "B", "m"), strict=True):
        assert g.dtype == leaf.dtype == torch.float32
        assert_close_for(torch.bfloat16, g, w, f"d{name}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_multi_lora_under_autocast(backend: str, force_backend) -> None:
    force_backend(backend)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(9, 33, generator=gen).to(DEVICE).requires_grad_()
    stack_a = (torch.randn(3, 8, 33, generator=gen) * 0.3).to(DEVICE).requires_grad_()
    stack_b = (torch.randn(3, 17, 8, generator=gen) * 0.3).to(DEVICE).requires_grad_()
    scalings = torch.tensor([0.5, 1.0, 2.0], device=DEVICE)
    ids = torch.tensor([2, 0, -1, 1, 1, 0, 2, 2, -1], device=DEVICE)
    with _autocast():
        ours = multi_lora_delta(x, ids, stack_a, stack_b, scalings)
    truth = multi_lora_reference(x, ids, stack_a, stack_b, scalings)
    assert ours.dtype == torch.bfloat16
    assert_close_for(torch.bfloat16, ours, truth, "delta")
    leaves = (x, stack_a, stack_b)
    got = _grads(ours.float().square().sum(), leaves)
    want = _grads(truth.square().sum(), leaves)
    for g, w, leaf, name in zip(got, want, leaves, ("x", "A", "B"), strict=True):
        assert g.dtype == leaf.dtype == torch.float32
        assert_close_for(torch.bfloat16, g, w, f"d{name}")


def test_multi_lora_accumulate_under_autocast_serving() -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 16, generator=gen).to(DEVICE)
    weight = torch.randn(8, 16, generator=gen).to(DEVICE)
    stack_a = torch.randn(4, 2, 16, generator=gen).to(DEVICE)
    stack_b = torch.randn(4, 8, 2, generator=gen).to(DEVICE)
    scalings = torch.ones(4, device=DEVICE)
    ids = torch.arange(4, device=DEVICE)
    with torch.inference_mode(), _autocast():
        out = torch.nn.functional.linear(x, weight)  # bf16, as a base layer's output
        base = out.clone()
        multi_lora_accumulate_(out, x, ids, stack_a, stack_b, scalings)
    truth = multi_lora_reference(x, ids, stack_a, stack_b, scalings)
    assert out.dtype == torch.bfloat16
    assert_close_for(torch.bfloat16, out - base, truth, "update")


@pytest.mark.parametrize("half", HALF)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_linear_cross_entropy_under_autocast(
    backend: str, reduction: str, half, force_backend
) -> None:
    force_backend(backend)
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 7, 33, generator=gen).to(DEVICE).requires_grad_()
    weight = (torch.randn(50, 33, generator=gen) * 0.2).to(DEVICE).requires_grad_()
    labels = torch.randint(0, 50, (2, 7), generator=gen).to(DEVICE)
    labels[0, 3] = -100
    kwargs = {"label_smoothing": 0.1, "reduction": reduction}
    with _autocast(half):
        ours = linear_cross_entropy(hidden, weight, labels, **kwargs)
        unfused = torch.nn.functional.cross_entropy(
            (hidden @ weight.T).transpose(1, 2), labels, **kwargs
        )
    truth = linear_cross_entropy_reference(hidden, weight, labels, **kwargs)
    assert ours.dtype == unfused.dtype == torch.float32
    assert_close_for(torch.bfloat16, ours, truth, "loss")
    got = _grads(ours.sum(), (hidden, weight))
    want = _grads(truth.sum(), (hidden, weight))
    for g, w, name in zip(got, want, ("hidden", "weight"), strict=True):
        assert g.dtype == torch.float32
        assert_close_for(torch.bfloat16, g, w, f"d{name}")


def test_lora_fit_with_bf16_mixed_precision() -> None:
    """The bug this guards: a fused LoRA layer under ``precision="bf16-mixed"`` crashed in
    its in-place update (bf16 base product + fp32 adapter)."""
    from core.adapters import LoraConfig
    from tests.core.training.toys import ToyData, ToyModule, quiet_trainer

    module = ToyModule(adapter=LoraConfig(r=2, target_modules=["fc1", "fc2"]))
    before = {k: v.clone() for k, v in module.named_parameters() if v.requires_grad}
    quiet_trainer(precision="bf16-mixed", max_steps=3).fit(module, datamodule=ToyData())
    after = dict(module.named_parameters())
    assert any("lora_B" in k for k in before)
    assert all(after[name].dtype == torch.float32 for name in before)
    assert any(not torch.equal(after[k], v) for k, v in before.items() if "lora_B" in k)
