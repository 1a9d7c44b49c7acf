"""Registry, TensorStore, parameter selection, batch/output helpers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.regularizers import (
    EWC,
    L2SP,
    REGISTRY,
    DRTune,
    HalfFineTuning,
    LwF,
    OnlineEWC,
    Replay,
    TensorStore,
    available,
    build,
    default_inputs,
    default_logits,
    select_parameters,
)

from .toys import EncoderHead


def test_every_method_is_registered_under_its_yaml_name() -> None:
    expected = {
        "ewc": EWC,
        "online_ewc": OnlineEWC,
        "l2sp": L2SP,
        "lwf": LwF,
        "replay": Replay,
        "hft": HalfFineTuning,
        "drtune": DRTune,
    }
    assert available() == sorted(expected)
    for name, cls in expected.items():
        assert REGISTRY[name] is cls and cls.method == name
        assert type(build(name)) is cls


def test_build_accepts_the_yaml_dict_form_and_keyword_overrides() -> None:
    ewc = build({"method": "EWC", "lambda_": 5.0, "labels": "true"}, gamma=0.5)
    assert isinstance(ewc, EWC) and ewc.lambda_ == 5.0 and ewc.labels == "true"
    assert ewc.gamma == 0.5


def test_unknown_method_names_the_input_and_the_known_methods() -> None:
    with pytest.raises(ValueError, match=r"Unknown regularizer method 'ewk'.*ewc, hft, l2sp"):
        build("ewk")
    with pytest.raises(ValueError, match="no 'method' key"):
        build({"lambda_": 1.0})


def test_tensor_store_holds_dotted_keys_and_loads_into_a_fresh_store() -> None:
    store = TensorStore()
    store["fc1.weight"] = torch.ones(2, 3)
    store["0/head.bias"] = torch.arange(3.0)
    assert store.keys() == ["fc1.weight", "0/head.bias"] and "fc1.weight" in store
    assert list(store) == store.keys() and len(store) == 2
    fresh = TensorStore()
    fresh["stale"] = torch.zeros(1)
    fresh.load_state_dict(store.state_dict())
    assert set(fresh.keys()) == set(store.keys())
    assert "stale" not in fresh
    torch.testing.assert_close(fresh["fc1.weight"], torch.ones(2, 3))
    with pytest.raises(KeyError):
        store["missing"]
    with pytest.raises(ValueError, match="free of ':'"):
        store["a:b"] = torch.zeros(1)


def test_select_parameters_by_component_glob_and_trainability() -> None:
    model = EncoderHead()
    assert set(select_parameters(model, exclude=["head"])) == {
        "encoder.0.weight",
        "encoder.0.bias",
    }
    assert set(select_parameters(model, include=["*.bias"])) == {"encoder.0.bias", "head.bias"}
    model.head.requires_grad_(False)
    assert "head.weight" not in select_parameters(model)
    assert "head.weight" in select_parameters(model, trainable_only=False)


def test_batch_and_output_helpers_explain_what_to_pass() -> None:
    x = torch.zeros(2, 3)
    assert default_inputs(x) is x and default_inputs((x, 1)) is x

    class Out:
        logits = torch.ones(2)

    assert default_logits(Out()) is Out.logits
    with pytest.raises(TypeError, match="input_fn="):
        default_inputs({"input_ids": x})
    with pytest.raises(TypeError, match="output_fn="):
        default_logits({"x": 1})


def test_update_counter_is_a_buffer() -> None:
    reg = L2SP()
    assert "num_updates" in dict(reg.named_buffers())
    reg.update(nn.Linear(2, 2))
    assert reg.state_dict()["num_updates"].item() == 1
