"""LoRA specifics against closed forms: scaling, DoRA, PiSSA and CorDA decompositions, conv."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.adapters import LoraConfig, inject, load_adapter, merge, save_adapter
from core.adapters.lora_init import corda_factors, pissa_factors


def _linear(out_f: int = 10, in_f: int = 6) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(in_f, out_f)


def _unit(model: nn.Module, path: str = "0"):
    return model.get_submodule(path).adapters["default"]


@pytest.mark.parametrize(("rslora", "expected"), [(False, 16 / 4), (True, 16 / 2)])
def test_scaling(rslora: bool, expected: float) -> None:
    model = nn.Sequential(_linear())
    inject(model, LoraConfig(r=4, alpha=16, use_rslora=rslora))
    assert _unit(model).scaling == pytest.approx(expected)


def test_lora_output_is_w0x_plus_scaled_bax() -> None:
    model = nn.Sequential(_linear())
    w0, b0 = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    inject(model, LoraConfig(r=3, alpha=6))
    unit = _unit(model)
    with torch.no_grad():
        unit.lora_B.weight.normal_()
    x = torch.randn(4, 6)
    a, b = unit.lora_A.weight, unit.lora_B.weight
    torch.testing.assert_close(model(x), x @ w0.T + b0 + 2.0 * x @ a.T @ b.T)


def test_dora_matches_its_definition() -> None:
    model = nn.Sequential(_linear())
    w0, b0 = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    inject(model, LoraConfig(r=2, alpha=2, use_dora=True))
    unit = _unit(model)
    torch.testing.assert_close(unit.lora_magnitude_vector, w0.norm(dim=1))
    with torch.no_grad():
        unit.lora_B.weight.normal_()
        unit.lora_magnitude_vector.mul_(1.5)
    w = w0 + unit.lora_B.weight @ unit.lora_A.weight
    w_dora = unit.lora_magnitude_vector[:, None] * w / w.norm(dim=1, keepdim=True)
    x = torch.randn(5, 6)
    torch.testing.assert_close(model(x), x @ w_dora.T + b0, atol=1e-5, rtol=1e-5)


def test_pissa_takes_top_singular_triplets_and_keeps_w0() -> None:
    model = nn.Sequential(_linear(12, 8))
    w0 = model[0].weight.detach().clone()
    inject(model, LoraConfig(r=3, alpha=6, init="pissa"))
    unit = _unit(model)
    adapter = unit.scaling * unit.lora_B.weight @ unit.lora_A.weight
    u, s, vh = torch.linalg.svd(w0)
    torch.testing.assert_close(adapter, u[:, :3] @ torch.diag(s[:3]) @ vh[:3], atol=1e-5, rtol=0)
    residual = model[0].base_layer.weight
    torch.testing.assert_close(residual + adapter, w0, atol=1e-5, rtol=0)
    # The residual holds exactly the remaining singular values.
    torch.testing.assert_close(torch.linalg.svdvals(residual)[:5], s[3:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["ipm", "kpm"])
def test_corda_decomposition(mode: str) -> None:
    torch.manual_seed(1)
    w = torch.randn(8, 6)
    x = torch.randn(50, 6) @ torch.randn(6, 6)
    cov = x.T @ x
    a, b = corda_factors(w, cov, r=2, scaling=1.0, mode=mode, damping=0.0)
    u, s, vh = torch.linalg.svd((w @ cov).double(), full_matrices=False)
    idx = slice(0, 2) if mode == "ipm" else slice(4, 6)
    # B A reproduces the chosen components of W = U S V^T C^-1.
    expected = u[:, idx] @ torch.diag(s[idx]) @ vh[idx] @ torch.linalg.inv(cov.double())
    torch.testing.assert_close((b @ a).double(), expected, atol=1e-4, rtol=1e-4)
    # All components together reproduce W exactly.
    a_all, b_all = corda_factors(w, cov, r=6, scaling=1.0, mode=mode, damping=0.0)
    torch.testing.assert_close(b_all @ a_all, w, atol=1e-4, rtol=1e-4)


def test_corda_inject_uses_calibration_covariance() -> None:
    model = nn.Sequential(_linear(8, 6))
    w0 = model[0].weight.detach().clone()
    batches = [torch.randn(16, 6) for _ in range(3)]
    inject(model, LoraConfig(r=2, alpha=2, init="corda", corda_damping=0.0), calibration=batches)
    cov = sum(b.T @ b for b in batches)
    a, b = corda_factors(w0, cov, r=2, scaling=1.0, mode="ipm", damping=0.0)
    unit = _unit(model)
    torch.testing.assert_close(unit.lora_A.weight, a, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(unit.lora_B.weight, b, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="calibration"):
        inject(nn.Sequential(_linear()), LoraConfig(init="corda", r=2))


def test_pissa_factor_scaling() -> None:
    w = torch.randn(7, 5)
    a, b = pissa_factors(w, r=5, scaling=2.0)
    torch.testing.assert_close(2.0 * b @ a, w, atol=1e-5, rtol=1e-5)


def test_conv2d_lora_merges_into_kernel(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=2, dilation=2), nn.ReLU(), nn.Conv2d(8, 4, 1))
    x = torch.randn(2, 3, 9, 9)
    inject(model, LoraConfig(r=2, alpha=4, target_modules=["0", "2"]))
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.adapters["default"].lora_B.weight.normal_()
    expected = model(x)
    save_adapter(model, tmp_path / "conv")
    merge(model)
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    torch.manual_seed(0)
    fresh = nn.Sequential(nn.Conv2d(3, 8, 3, padding=2, dilation=2), nn.ReLU(), nn.Conv2d(8, 4, 1))
    load_adapter(fresh, tmp_path / "conv")
    torch.testing.assert_close(fresh(x), expected, atol=1e-5, rtol=1e-5)


def test_conv2d_lora_loads_in_peft(tmp_path) -> None:
    peft = pytest.importorskip("peft")

    def build() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3))

    x = torch.randn(2, 3, 7, 7)
    ours = build()
    inject(ours, LoraConfig(r=2, alpha=4, target_modules=["0", "2"]))
    with torch.no_grad():
        for layer in (ours[0], ours[2]):
            layer.adapters["default"].lora_B.weight.normal_()
    save_adapter(ours, tmp_path / "conv")
    loaded = peft.PeftModel.from_pretrained(build(), tmp_path / "conv").eval()
    torch.testing.assert_close(loaded(x), ours(x), atol=1e-5, rtol=1e-5)
