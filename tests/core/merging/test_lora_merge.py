"""Adapter-level merging (cat / SVD / linear / TIES on deltas) and folding into the base.

PEFT's ``add_weighted_adapter`` is the oracle for cat, svd and linear; the model's own
forward with the adapter attached is the oracle for folding an adapter into the base.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from core.adapters import LoraConfig, SsfConfig, inject, load_adapter, save_adapter
from core.merging import (
    merge_adapter_into_base,
    merge_lora_adapters,
    read_lora_adapter,
    save_lora_adapter,
    ties,
)


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 16)
        self.fc2 = nn.Linear(16, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _base() -> MLP:
    torch.manual_seed(0)
    return MLP().eval()


def _trained_adapter(path: Path, config: LoraConfig, seed: int, model_factory=_base) -> Path:
    model = model_factory()
    inject(model, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if (
                "lora_" in name
                or "modules_to_save" in name
                or (config.modules_to_save and name.startswith(tuple(config.modules_to_save)))
            ):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    save_adapter(model, path)
    return path


def _deltas(adapter) -> dict[str, torch.Tensor]:
    return {m: f.delta() for m, f in adapter.modules.items()}


@pytest.fixture
def two_adapters(tmp_path: Path) -> tuple[Path, Path]:
    a = _trained_adapter(tmp_path / "a", LoraConfig(r=2, alpha=4, target_modules=["fc1", "fc2"]), 1)
    b = _trained_adapter(
        tmp_path / "b",
        LoraConfig(r=3, alpha=3, use_rslora=True, target_modules=["fc2", "head"]),
        2,
    )
    return a, b


def test_cat_is_exact(two_adapters: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = (read_lora_adapter(p) for p in two_adapters)
    merged = merge_lora_adapters([a, b], weights=[0.7, -1.5], combination="cat")
    da, db, dm = _deltas(a), _deltas(b), _deltas(merged)
    assert set(dm) == {"fc1", "fc2", "head"}
    torch.testing.assert_close(dm["fc1"], 0.7 * da["fc1"])
    torch.testing.assert_close(dm["fc2"], 0.7 * da["fc2"] - 1.5 * db["fc2"])
    torch.testing.assert_close(dm["head"], -1.5 * db["head"])
    assert merged.modules["fc2"].rank == 5
    # Saved in the PEFT layout, it loads through core.adapters with per-module ranks.
    save_lora_adapter(merged, tmp_path / "m")
    model = load_adapter(_base(), tmp_path / "m")
    x = torch.randn(4, 12)
    folded = _base()
    folded.load_state_dict(merge_adapter_into_base(_base().state_dict(), tmp_path / "m"))
    torch.testing.assert_close(model(x), folded(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rank", [1, 2, 5])
def test_svd_is_the_best_rank_r_approximation(two_adapters: tuple[Path, Path], rank: int) -> None:
    a, b = (read_lora_adapter(p) for p in two_adapters)
    merged = merge_lora_adapters([a, b], weights=[1.0, 2.0], combination="svd", rank=rank)
    full = _deltas(a)["fc2"] + 2.0 * _deltas(b)["fc2"]
    u, s, vh = torch.linalg.svd(full)
    best = (u[:, :rank] * s[:rank]) @ vh[:rank]
    torch.testing.assert_close(_deltas(merged)["fc2"], best, rtol=1e-4, atol=1e-5)
    assert merged.modules["fc2"].rank == rank
    assert merged.modules["fc1"].rank == min(rank, 2)  # fc1 only has rank 2 to give


def test_ties_on_deltas_then_svd(two_adapters: tuple[Path, Path]) -> None:
    a, b = (read_lora_adapter(p) for p in two_adapters)
    merged = merge_lora_adapters(
        [a, b], combination="svd", rank=16, method="ties", density=0.5, scaling=0.8
    )
    zero = {"fc2": torch.zeros(16, 16)}
    expected = ties(zero, [{"fc2": _deltas(a)["fc2"]}, {"fc2": _deltas(b)["fc2"]}], 0.5, 0.8)
    torch.testing.assert_close(_deltas(merged)["fc2"], expected["fc2"], rtol=1e-4, atol=1e-5)


def test_dare_on_deltas_is_seeded(two_adapters: tuple[Path, Path]) -> None:
    kwargs = {"combination": "svd", "rank": 4, "method": "dare", "drop_rate": 0.5}
    one = merge_lora_adapters(list(two_adapters), seed=1, **kwargs)
    two = merge_lora_adapters(list(two_adapters), seed=1, **kwargs)
    other = merge_lora_adapters(list(two_adapters), seed=2, **kwargs)
    assert torch.equal(one.modules["fc2"].a, two.modules["fc2"].a)
    assert not torch.equal(_deltas(one)["fc2"], _deltas(other)["fc2"])


@pytest.mark.parametrize("combination", ["cat", "svd", "linear"])
def test_matches_peft_add_weighted_adapter(tmp_path: Path, combination: str) -> None:
    peft = pytest.importorskip("peft")
    config_b = LoraConfig(r=2, alpha=6, target_modules=["fc1", "fc2"])
    a = _trained_adapter(tmp_path / "a", LoraConfig(r=2, alpha=4, target_modules=["fc1", "fc2"]), 1)
    b = _trained_adapter(tmp_path / "b", config_b, 2)
    weights = [0.6, 1.3]
    ours = merge_lora_adapters([a, b], weights=weights, combination=combination, rank=3)
    model = peft.PeftModel.from_pretrained(_base(), str(a), adapter_name="a")
    model.load_adapter(str(b), adapter_name="b")
    model.add_weighted_adapter(["a", "b"], weights, "m", combination_type=combination, svd_rank=3)
    for module in ("fc1", "fc2"):
        layer = model.base_model.model.get_submodule(module)
        expected = layer.get_delta_weight("m")
        torch.testing.assert_close(_deltas(ours)[module], expected, rtol=1e-4, atol=1e-5)


def test_linear_needs_equal_ranks(two_adapters: tuple[Path, Path]) -> None:
    with pytest.raises(ValueError, match="equal ranks"):
        merge_lora_adapters(list(two_adapters), combination="linear")


def test_bad_requests_are_explained(two_adapters: tuple[Path, Path]) -> None:
    with pytest.raises(ValueError, match="combination"):
        merge_lora_adapters(list(two_adapters), combination="sum")
    with pytest.raises(ValueError, match="needs combination='svd'"):
        merge_lora_adapters(list(two_adapters), combination="cat", method="ties")
    with pytest.raises(ValueError, match="need a method"):
        merge_lora_adapters(list(two_adapters), combination="svd", density=0.3)
    with pytest.raises(ValueError, match="does not merge task vectors"):
        merge_lora_adapters(list(two_adapters), combination="svd", method="uniform_soup")
    with pytest.raises(ValueError, match="weights"):
        merge_lora_adapters(list(two_adapters), weights=[1.0])


def test_modules_to_save_are_averaged(tmp_path: Path) -> None:
    config = LoraConfig(r=2, target_modules=["fc1"], modules_to_save=["head"])
    a = read_lora_adapter(_trained_adapter(tmp_path / "a", config, 1))
    b = read_lora_adapter(_trained_adapter(tmp_path / "b", config, 2))
    assert set(a.extra) == {"head.weight", "head.bias"}
    merged = merge_lora_adapters([a, b], weights=[1.0, 3.0])
    torch.testing.assert_close(
        merged.extra["head.weight"], (a.extra["head.weight"] + 3 * b.extra["head.weight"]) / 4
    )
    folded = merge_adapter_into_base(_base().state_dict(), a)
    assert torch.equal(folded["head.weight"], a.extra["head.weight"])


def test_dora_adapters_cannot_be_combined(tmp_path: Path) -> None:
    config = LoraConfig(r=2, target_modules=["fc1"], use_dora=True)
    a = _trained_adapter(tmp_path / "a", config, 1)
    with pytest.raises(ValueError, match="DoRA"):
        merge_lora_adapters([a, a])


@pytest.mark.parametrize(
    "config",
    [
        LoraConfig(r=2, alpha=4, target_modules=["fc1", "head"]),
        LoraConfig(r=3, alpha=2, use_rslora=True, target_modules=["fc2"]),
        LoraConfig(r=2, target_modules=["fc1", "fc2"], use_dora=True),
    ],
    ids=["lora", "rslora", "dora"],
)
def test_folding_into_the_base_matches_the_adapted_model(tmp_path: Path, config) -> None:
    path = _trained_adapter(tmp_path / "a", config, 3)
    adapted = load_adapter(_base(), path)
    base = _base()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    folded_state = merge_adapter_into_base(base.state_dict(), path)
    for k, v in base.state_dict().items():
        assert torch.equal(v, before[k])  # base not modified
    folded = _base()
    folded.load_state_dict(folded_state)
    x = torch.randn(6, 12)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), adapted(x), rtol=1e-5, atol=1e-5)


def _conv() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()


def test_folding_conv_layers(tmp_path: Path) -> None:
    path = _trained_adapter(tmp_path / "c", LoraConfig(r=2, target_modules=["0", "2"]), 4, _conv)
    adapted = load_adapter(_conv(), path)
    folded = _conv()
    folded.load_state_dict(merge_adapter_into_base(_conv().state_dict(), path))
    x = torch.randn(2, 3, 7, 7)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), adapted(x), rtol=1e-5, atol=1e-5)
    merged = merge_lora_adapters([path, path], weights=[0.5, 0.5], combination="svd", rank=2)
    torch.testing.assert_close(
        _deltas(merged)["0"], _deltas(read_lora_adapter(path))["0"], rtol=1e-4, atol=1e-5
    )


def _gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=32, n_positions=16)
    return GPT2LMHeadModel(config).eval()


def test_folding_gpt2_conv1d_fan_in_fan_out(tmp_path: Path) -> None:
    path = _trained_adapter(
        tmp_path / "g", LoraConfig(r=2, target_modules=["c_attn", "c_proj"]), 5, _gpt2
    )
    assert read_lora_adapter(path).fan_in_fan_out
    adapted = load_adapter(_gpt2(), path)
    folded = _gpt2()
    folded.load_state_dict(merge_adapter_into_base(_gpt2().state_dict(), path))
    ids = torch.randint(0, 32, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(folded(ids).logits, adapted(ids).logits, rtol=1e-4, atol=1e-5)


def test_wrong_base_and_wrong_method_are_explained(tmp_path: Path) -> None:
    path = _trained_adapter(tmp_path / "a", LoraConfig(r=2, target_modules=["fc1"]), 1)
    state = _base().state_dict()
    del state["fc1.weight"]
    with pytest.raises(ValueError, match=r"fc1\.weight"):
        merge_adapter_into_base(state, path)
    state = _base().state_dict()
    state["fc1.weight"] = torch.zeros(16, 13)
    with pytest.raises(ValueError, match=r"fc1\.weight.*shape"):
        merge_adapter_into_base(state, path)
    model = _base()
    inject(model, SsfConfig(target_modules=["fc1"]))
    save_adapter(model, tmp_path / "ssf")
    with pytest.raises(ValueError, match="only LoRA"):
        read_lora_adapter(tmp_path / "ssf")


def test_reading_an_adapter_with_nan_weights_names_the_tensor(two_adapters) -> None:
    from safetensors.torch import load_file, save_file

    weights = two_adapters[0] / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    key = sorted(tensors)[0]
    tensors[key][0, 0] = float("nan")
    save_file(tensors, str(weights))
    with pytest.raises(ValueError, match=rf"{key}.*adapter_model\.safetensors"):
        read_lora_adapter(two_adapters[0])
