"""Round trips with the installed Hugging Face PEFT, the reference for LoRA numerics and format."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from core.adapters import LoraConfig, inject, load_adapter, save_adapter, trainable_parameters

from .models import MODEL_CASES

peft = pytest.importorskip("peft")

VARIANTS = {
    "lora": {},
    "rslora": {"use_rslora": True},
    "dora": {"use_dora": True},
    "dora_rslora": {"use_dora": True, "use_rslora": True},
}
FAMILIES = {"llama": ["q_proj", "v_proj", "down_proj"], "gpt2": ["c_attn", "c_fc"]}


def _randomize(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(0.2 * torch.randn(p.shape, generator=gen))


def _peft_config(targets: list[str], family: str, **variant) -> peft.LoraConfig:
    return peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=targets, fan_in_fan_out=family == "gpt2", **variant
    )


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_peft_saved_adapter_loads_here(family: str, variant: str, tmp_path) -> None:
    case = MODEL_CASES[family]
    x = case.make_input()
    peft_model = peft.get_peft_model(
        case.build(), _peft_config(FAMILIES[family], family, **VARIANTS[variant])
    )
    _randomize(peft_model, seed=3)
    peft_model.eval()
    expected = peft_model(x).logits
    peft_model.save_pretrained(tmp_path / "peft")

    ours = case.build()
    load_adapter(ours, tmp_path / "peft")
    torch.testing.assert_close(case.run(ours, x), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_our_adapter_loads_in_peft(family: str, variant: str, tmp_path) -> None:
    case = MODEL_CASES[family]
    x = case.make_input()
    ours = case.build()
    inject(ours, LoraConfig(r=4, alpha=8, target_modules=FAMILIES[family], **VARIANTS[variant]))
    _randomize(ours, seed=4)
    expected = case.run(ours, x)
    save_adapter(ours, tmp_path / "ours")

    loaded = peft.PeftModel.from_pretrained(case.build(), tmp_path / "ours").eval()
    torch.testing.assert_close(loaded(x).logits, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_same_keys_and_config_fields_as_peft(family: str, tmp_path) -> None:
    case = MODEL_CASES[family]
    config = _peft_config(FAMILIES[family], family, use_dora=True)
    peft.get_peft_model(case.build(), config).save_pretrained(tmp_path / "peft")
    ours = case.build()
    inject(ours, LoraConfig(r=4, alpha=8, use_dora=True, target_modules=FAMILIES[family]))
    save_adapter(ours, tmp_path / "ours")

    peft_tensors = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    our_tensors = load_file(tmp_path / "ours" / "adapter_model.safetensors")
    assert sorted(our_tensors) == sorted(peft_tensors)
    for key, tensor in our_tensors.items():
        assert tensor.shape == peft_tensors[key].shape, key

    peft_json = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    our_json = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert set(our_json) <= set(peft_json), set(our_json) - set(peft_json)
    for key in ("peft_type", "r", "lora_alpha", "lora_dropout", "use_dora", "use_rslora"):
        assert our_json[key] == peft_json[key], key
    assert sorted(our_json["target_modules"]) == sorted(peft_json["target_modules"])


def test_pissa_adapter_loads_in_peft_on_the_original_base(tmp_path) -> None:
    """A PiSSA adapter is saved as a plain LoRA delta, usable on the untouched base."""
    case = MODEL_CASES["llama"]
    x = case.make_input()
    ours = case.build()
    inject(ours, LoraConfig(r=4, alpha=4, init="pissa", target_modules=FAMILIES["llama"]))
    _randomize(ours, seed=5)
    expected = case.run(ours, x)
    save_adapter(ours, tmp_path / "pissa")
    saved = json.loads((tmp_path / "pissa" / "adapter_config.json").read_text())
    assert saved["r"] == 8 and saved["init_lora_weights"] is True

    loaded = peft.PeftModel.from_pretrained(case.build(), tmp_path / "pissa").eval()
    torch.testing.assert_close(loaded(x).logits, expected, atol=1e-5, rtol=1e-4)


def test_peft_pissa_adapter_loads_here(tmp_path) -> None:
    """PEFT's own PiSSA save (init_lora_weights='pissa') re-derives the residual on load."""
    case = MODEL_CASES["llama"]
    x = case.make_input()
    config = peft.LoraConfig(
        r=4, lora_alpha=4, init_lora_weights="pissa", target_modules=["q_proj"]
    )
    peft_model = peft.get_peft_model(case.build(), config)
    _randomize(peft_model, seed=6)
    expected = peft_model.eval()(x).logits
    peft_model.save_pretrained(tmp_path / "peft_pissa")

    ours = case.build()
    load_adapter(ours, tmp_path / "peft_pissa")
    torch.testing.assert_close(case.run(ours, x), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("variant", ["lora", "dora"])
def test_numerics_match_peft_forward_and_gradients(variant: str) -> None:
    """Same weights in both libraries give the same output and the same adapter gradients."""
    case = MODEL_CASES["llama"]
    x = case.make_input()
    peft_model = peft.get_peft_model(
        case.build(), _peft_config(["q_proj", "v_proj"], "llama", **VARIANTS[variant])
    )
    _randomize(peft_model, seed=7)
    ours = case.build()
    inject(ours, LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"], **VARIANTS[variant]))
    peft_params = {
        n.removeprefix("base_model.model.").replace(".default", ""): p
        for n, p in peft_model.named_parameters()
        if p.requires_grad
    }
    our_params = {
        n.replace(".adapters.default", "").replace(
            "lora_magnitude_vector", "lora_magnitude_vector.weight"
        ): p
        for n, p in trainable_parameters(ours).items()
    }
    assert sorted(our_params) == sorted(peft_params)
    with torch.no_grad():
        for n, p in our_params.items():
            p.copy_(peft_params[n])
    peft_model(x).logits.pow(2).mean().backward()
    case.run(ours, x).pow(2).mean().backward()
    for n, p in our_params.items():
        torch.testing.assert_close(p.grad, peft_params[n].grad, atol=1e-6, rtol=1e-4, msg=n)


def _mlp_with_head() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def test_modules_to_save_round_trip_with_peft(tmp_path) -> None:
    """A fully trained head travels inside the adapter file, readable by both libraries."""
    x = torch.randn(4, 6)
    ours = _mlp_with_head()
    inject(ours, LoraConfig(r=2, target_modules=["0"], modules_to_save=["2"]))
    assert {n for n in trainable_parameters(ours)} >= {"2.weight", "2.bias"}
    with torch.no_grad():
        ours[2].weight.add_(1.0)
        ours[0].adapters["default"].lora_B.weight.normal_()
    save_adapter(ours, tmp_path / "ours")
    in_peft = peft.PeftModel.from_pretrained(_mlp_with_head(), tmp_path / "ours").eval()
    torch.testing.assert_close(in_peft(x), ours(x), atol=1e-6, rtol=1e-5)

    peft_model = peft.get_peft_model(
        _mlp_with_head(), peft.LoraConfig(r=2, target_modules=["0"], modules_to_save=["2"])
    )
    _randomize(peft_model, seed=8)
    with torch.no_grad():
        peft_model.base_model.model[2].modules_to_save["default"].weight.add_(1.0)
    peft_model.save_pretrained(tmp_path / "peft")
    here = _mlp_with_head()
    load_adapter(here, tmp_path / "peft")
    torch.testing.assert_close(here(x), peft_model.eval()(x), atol=1e-6, rtol=1e-5)
