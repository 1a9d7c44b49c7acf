"""The config base: names that moved out of ``core.adapters.config`` still resolve there."""

from __future__ import annotations

import importlib

import pytest

import core.adapters as adapters
from core.adapters import config as config_module


@pytest.mark.parametrize(
    "name", ["LoraConfig", "SsfConfig", "BottleneckConfig", "CompacterConfig", "LolduConfig"]
)
def test_class_paths_written_before_the_move_still_import(name: str) -> None:
    """Checkpoints' hyperparameters name ``core.adapters.config.<Config>`` (the classes'
    module until the configs moved to their method modules)."""
    module = importlib.import_module("core.adapters.config")
    assert getattr(module, name) is getattr(adapters, name)


def test_unknown_names_still_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NoSuchConfig"):
        _ = config_module.NoSuchConfig


def test_require_positive_names_the_field() -> None:
    config_module.require_positive(1, "r", "LoRA")
    with pytest.raises(ValueError, match=r"LoRA config: r=0 must be > 0"):
        config_module.require_positive(0, "r", "LoRA")
