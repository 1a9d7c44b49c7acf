"""The driver behind every method: parameters, dtypes, counts, odd tensors."""

from __future__ import annotations

import pytest
import torch

from core.merging import METHODS, get_method, merge_state_dicts, parse_dtype
from core.merging.engine import resolve_params

from .helpers import make_inputs
from .test_registry import CASES, run_case


def test_per_model_parameters_resolve_in_order() -> None:
    spec = get_method("ties")
    params, per_model = resolve_params(
        spec, 3, {"density": [0.1, 0.2, 0.3], "weight": 2.0}, [{}, {"density": 0.9}, {"weight": 1}]
    )
    assert params == {"scaling": 1.0}
    assert per_model == [
        {"density": 0.1, "weight": 2.0},
        {"density": 0.9, "weight": 2.0},
        {"weight": 1, "density": 0.3},
    ]


@pytest.mark.parametrize(
    ("params", "model_params", "match"),
    [
        ({"density": [0.1, 0.2]}, None, "one value per model"),
        ({}, [{"scaling": 2.0}, {}, {}], "cannot differ per model"),
        ({}, [{}], "parameters for 1 models"),
    ],
)
def test_bad_parameter_shapes_are_explained(params, model_params, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        resolve_params(get_method("ties"), 3, params, model_params)


def test_weights_and_weight_are_exclusive() -> None:
    base, models, _ = make_inputs()
    with pytest.raises(ValueError, match="either weights"):
        merge_state_dicts("task_arithmetic", models, base, weights=[1, 1, 1], weight=1.0)


def test_output_dtype_override() -> None:
    base, models, _ = make_inputs()
    out = merge_state_dicts("ties", models, base, dtype="bf16")
    assert out["head.weight"].dtype == torch.bfloat16
    assert out["steps"].dtype == torch.int64  # non-float tensors keep theirs


def test_parse_dtype() -> None:
    assert parse_dtype("torch.float16") is torch.float16
    assert parse_dtype(None) is None
    with pytest.raises(ValueError, match="floating-point"):
        parse_dtype("int8")
    with pytest.raises(ValueError, match="floating-point"):
        parse_dtype(torch.int32)


def test_base_rules() -> None:
    base, models, _ = make_inputs()
    with pytest.raises(ValueError, match="needs the base"):
        merge_state_dicts("ties", models)
    with pytest.raises(ValueError, match="does not use a base"):
        merge_state_dicts("uniform_soup", models, base)
    with pytest.raises(ValueError, match="at least 1"):
        merge_state_dicts("ties", [], base)


def test_inputs_must_be_state_dicts() -> None:
    base, models, _ = make_inputs()
    with pytest.raises(TypeError, match="state dict"):
        merge_state_dicts("ties", [torch.zeros(3)], base)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="not a tensor"):
        merge_state_dicts("ties", [{**models[0], "note": "hi"}], base)  # type: ignore[dict-item]


def test_non_finite_weights_are_rejected() -> None:
    base, models, _ = make_inputs()
    with pytest.raises(ValueError, match="finite"):
        merge_state_dicts("task_arithmetic", models, base, weights=[1.0, float("nan"), 1.0])


@pytest.mark.parametrize("name", sorted(METHODS))
def test_empty_tensors_pass_through(name: str) -> None:
    base, models, fishers = make_inputs()
    for sd in (base, *models, *fishers):
        sd["empty"] = torch.zeros(0, 3)
    out = run_case(name, base, models, fishers)
    assert out["empty"].shape == (0, 3)


def test_cases_cover_every_parameter() -> None:
    # Guard for the shared regression test: each case sets at least one real parameter.
    for name, case in CASES.items():
        spec = get_method(name)
        allowed = set(spec.params) | set(spec.per_model) | {"weights"}
        assert set(case) <= allowed, name
