"""Fields of adapter_config.json: unknown ones warn, misspelled ones are errors naming both.

The installed PEFT is the oracle for which fields are real: configs it writes must load
without a warning, and no real PEFT field may look like a misspelling of another.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import pytest
import torch

from core.adapters import (
    ADAPTER_REGISTRY,
    LoraConfig,
    SsfConfig,
    config_from_dict,
    inject,
    load_adapter,
    save_adapter,
)
from core.adapters.config import PEFT_BASE_FIELDS, UnknownFieldWarning, misspelling_of
from core.adapters.io import CONFIG_NAME, read_adapter
from core.adapters.lora import PEFT_LORA_FIELDS

from .models import MODEL_CASES


def _saved(tmp_path: Path) -> Path:
    model = MODEL_CASES["mlp"].build()
    inject(model, LoraConfig(r=2, alpha=6.0, target_modules=["0", "2"]))
    with torch.no_grad():
        model[0].adapters["default"].lora_B.weight.normal_()
    save_adapter(model, tmp_path / "a")
    return tmp_path / "a"


def _edit(path: Path, **changes: object) -> None:
    data = json.loads((path / CONFIG_NAME).read_text())
    for key, value in changes.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    (path / CONFIG_NAME).write_text(json.dumps(data))


def _rename(path: Path, old: str, new: str) -> None:
    data = json.loads((path / CONFIG_NAME).read_text())
    data[new] = data.pop(old)
    (path / CONFIG_NAME).write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("old", "typo"),
    [
        ("lora_alpha", "lora_alpah"),
        ("lora_alpha", "Lora_Alpha"),
        ("lora_dropout", "lora-dropout"),
        ("use_rslora", "use_rslroa"),
        ("target_modules", "target_module"),
    ],
)
def test_a_misspelled_field_is_an_error_naming_both(tmp_path: Path, old: str, typo: str) -> None:
    path = _saved(tmp_path)
    _rename(path, old, typo)
    with pytest.raises(
        ValueError,
        match=rf"^'{typo}' in {path / CONFIG_NAME} looks like a misspelling of '{old}'; fix the "
        "field name.$",
    ):
        load_adapter(MODEL_CASES["mlp"].build(), path)


def test_an_unknown_field_warns_and_is_ignored(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    expected = read_adapter(path)[0]
    _edit(path, colour="blue", my_notes={"run": 3})
    with pytest.warns(UnknownFieldWarning, match=r"adapter_config\.json: unknown field\(s\) "):
        config, _ = read_adapter(path)
    assert config == expected and config.alpha == 6.0


def test_warning_names_the_fields_and_the_file(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    _edit(path, colour="blue")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read_adapter(path)
    messages = [str(w.message) for w in caught if w.category is UnknownFieldWarning]
    assert len(messages) == 1
    assert str(path / CONFIG_NAME) in messages[0] and "['colour']" in messages[0]


def test_our_names_in_a_peft_style_config_warn(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    _edit(path, alpha=99.0)  # this library's name; the file uses PEFT's lora_alpha
    with pytest.warns(UnknownFieldWarning, match=r"\['alpha'\] are ignored.*PEFT's names"):
        config, _ = read_adapter(path)
    assert config.alpha == 6.0


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"method": "lora", "alpah": 32}, r"'alpah' in the adapter config .* of 'alpha'"),
        ({"method": "lora", "R": 4}, r"'R' in the adapter config .* of 'r'"),
        ({"method": "ssf", "init_sdt": 0.1}, r"'init_sdt' .* of 'init_std'"),
        ({"method": "bottleneck", "bottleneck_dm": 4}, r"'bottleneck_dm' .* 'bottleneck_dim'"),
    ],
)
def test_misspellings_in_registry_style_dicts(data: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        config_from_dict(data)


def test_unknown_and_other_naming_in_registry_style_dicts() -> None:
    with pytest.warns(UnknownFieldWarning, match=r"unknown field\(s\) \['colour'\].*'lora'"):
        assert config_from_dict({"method": "lora", "r": 4, "colour": 1}).r == 4
    with pytest.warns(UnknownFieldWarning, match=r"\['lora_dropout'\] are ignored"):
        config = config_from_dict({"method": "lora", "dropout": 0.2, "lora_dropout": 0.1})
    assert config.dropout == 0.2


def test_a_field_two_edits_from_any_name_only_warns() -> None:
    """A field a newer PEFT may add (here: made up) must not be taken for a misspelling."""
    with pytest.warns(UnknownFieldWarning, match="use_xyzlora"):
        config_from_dict({"method": "lora", "r": 4, "lora_alpha": 8, "use_xyzlora": False})


def test_no_real_peft_field_looks_like_a_misspelling_of_another() -> None:
    for cls in ADAPTER_REGISTRY.values():
        names = cls.field_names()
        for name in names:
            assert misspelling_of(name, names - {name}) is None, (cls.method, name)


def test_the_peft_field_list_covers_the_installed_peft() -> None:
    peft = pytest.importorskip("peft")
    assert {f.name for f in dataclasses.fields(peft.PeftConfig)} <= PEFT_BASE_FIELDS
    assert {f.name for f in dataclasses.fields(peft.LoraConfig)} <= PEFT_LORA_FIELDS


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"use_dora": True},
        {"use_rslora": True, "rank_pattern": {"0": 4}, "alpha_pattern": {"0": 2.0}},
        {"init_lora_weights": "gaussian", "lora_dropout": 0.1, "modules_to_save": ["4"]},
    ],
)
def test_configs_written_by_peft_load_without_warnings(tmp_path: Path, options: dict) -> None:
    peft = pytest.importorskip("peft")
    model = MODEL_CASES["mlp"].build()
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["0", "2"], **options)
    peft.get_peft_model(model, config).save_pretrained(tmp_path / "peft")
    written = json.loads((tmp_path / "peft" / CONFIG_NAME).read_text())
    assert {"peft_version", "layer_replication", "megatron_config", "eva_config"} <= set(written)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownFieldWarning)
        load_adapter(MODEL_CASES["mlp"].build(), tmp_path / "peft")


@pytest.mark.parametrize("method", sorted(ADAPTER_REGISTRY))
def test_every_method_reads_back_its_own_json_without_warnings(method: str) -> None:
    config = ADAPTER_REGISTRY[method]()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownFieldWarning)
        again = config_from_dict(config.to_json_dict(), where="round trip")
    assert again == config


def test_a_non_mapping_config_is_explained() -> None:
    with pytest.raises(ValueError, match="must be a mapping"):
        config_from_dict(["method", "lora"])  # type: ignore[arg-type]
    assert isinstance(config_from_dict({"method": "ssf"}), SsfConfig)
