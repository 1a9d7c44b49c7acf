"""Bad inputs raise errors that name the input and the fix, and leave nothing half-done."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from core.adapters import (
    LoraConfig,
    adapter_names,
    config_from_dict,
    get_config_class,
    inject,
    load_adapter,
    save_adapter,
)

from .models import MODEL_CASES


def _mlp() -> nn.Module:
    return MODEL_CASES["mlp"].build()


def _saved_adapter(folder: Path, r: int = 2, targets: tuple[str, ...] = ("0",)) -> nn.Module:
    """The MLP with a LoRA adapter (rank ``r`` on ``targets``), saved to ``folder``."""
    model = _mlp()
    inject(model, LoraConfig(r=r, target_modules=list(targets)))
    save_adapter(model, folder)
    return model


def _edit_saved_config(folder: Path, **changes: Any) -> None:
    """Change fields of the ``adapter_config.json`` saved in ``folder``."""
    path = folder / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_unknown_method_name_lists_close_matches() -> None:
    with pytest.raises(ValueError, match=r"Unknown adapter method 'lorra'.*'lora'"):
        get_config_class("lorra")
    with pytest.raises(ValueError, match="no 'method' key"):
        config_from_dict({"r": 4})


def test_target_matching_nothing_lists_close_names() -> None:
    model = MODEL_CASES["llama"].build()
    with pytest.raises(ValueError, match=r"matched no module.*q_proj"):
        inject(model, LoraConfig(target_modules=["q_projj"]))
    assert adapter_names(model) == []


def test_target_regex_and_suffix_selection() -> None:
    model = MODEL_CASES["llama"].build()
    inject(model, LoraConfig(r=2, target_modules=r".*layers\.0\.self_attn\.(q|k)_proj"), name="re")
    inject(model, LoraConfig(r=2, target_modules=["mlp.up_proj"]), name="suffix")
    layers = {n for n, m in model.named_modules() if hasattr(m, "adapters")}
    assert layers == {
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.self_attn.k_proj",
        "model.layers.0.mlp.up_proj",
        "model.layers.1.mlp.up_proj",
    }


def test_default_targets_skip_the_output_head() -> None:
    model = MODEL_CASES["llama"].build()
    inject(model, LoraConfig(r=2))
    assert not hasattr(model.lm_head, "adapters")
    assert hasattr(model.model.layers[0].mlp.down_proj, "adapters")


def test_unsupported_module_type_is_named() -> None:
    model = MODEL_CASES["vit"].build()
    with pytest.raises(ValueError, match=r"cannot adapt .*norm1 \(LayerNorm\)"):
        inject(model, LoraConfig(target_modules=["norm1"]))


def test_rank_larger_than_layer() -> None:
    with pytest.raises(ValueError, match=r"rank r=64 is larger than layer '4'.*out_features=5"):
        inject(_mlp(), LoraConfig(r=64, target_modules=["4"]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"r": 0}, "r=0 must be > 0"),
        ({"dropout": 1.5}, "dropout=1.5"),
        ({"init": "olora"}, "init='olora' is not one of"),
        ({"init": "pissa", "use_dora": True}, "cannot be combined"),
    ],
)
def test_bad_config_values(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        inject(_mlp(), LoraConfig(**kwargs))


def test_duplicate_adapter_name() -> None:
    model = _mlp()
    inject(model, LoraConfig(r=2, target_modules=["0"]))
    with pytest.raises(ValueError, match="already has an adapter named 'default'"):
        inject(model, LoraConfig(r=2, target_modules=["0"]))


def test_shape_mismatch_names_tensor_and_both_shapes(tmp_path) -> None:
    _saved_adapter(tmp_path / "a", r=4, targets=("0", "2"))
    _edit_saved_config(tmp_path / "a", r=2)  # the saved tensors are rank 4
    fresh = _mlp()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(
        ValueError, match=r"'0\.lora_A\.weight'.*shape \(4, 12\).*expects \(2, 12\)"
    ):
        load_adapter(fresh, tmp_path / "a")
    # Nothing half-loaded: the model is back to its original structure and weights.
    assert adapter_names(fresh) == []
    for k, v in fresh.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_adapter_for_another_model_names_missing_tensors(tmp_path) -> None:
    _saved_adapter(tmp_path / "a")
    _edit_saved_config(tmp_path / "a", target_modules=["0", "2"])
    with pytest.raises(ValueError, match=r"missing tensors \['2\.lora_A\.weight'"):
        load_adapter(_mlp(), tmp_path / "a")


def test_truncated_safetensors_file(tmp_path) -> None:
    _saved_adapter(tmp_path / "a")
    weights = tmp_path / "a" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-20])
    fresh = _mlp()
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors' is corrupt or truncated"):
        load_adapter(fresh, tmp_path / "a")
    assert adapter_names(fresh) == []


def test_missing_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_adapter(_mlp(), tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"adapter_config\.json' is missing"):
        load_adapter(_mlp(), tmp_path / "empty")


def test_save_is_atomic_and_overwrites(tmp_path) -> None:
    model = _saved_adapter(tmp_path / "a")
    with torch.no_grad():
        model[0].adapters["default"].lora_B.weight.fill_(1.0)
    save_adapter(model, tmp_path / "a")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no temp dirs left behind
    fresh = _mlp()
    load_adapter(fresh, tmp_path / "a")
    assert torch.all(fresh[0].adapters["default"].lora_B.weight == 1.0)


def test_save_unknown_adapter_name(tmp_path) -> None:
    model = _mlp()
    inject(model, LoraConfig(r=2, target_modules=["0"]))
    with pytest.raises(ValueError, match=r"no adapter named 'other'.*\['default'\]"):
        save_adapter(model, tmp_path / "a", name="other")
    assert not (tmp_path / "a").exists()
