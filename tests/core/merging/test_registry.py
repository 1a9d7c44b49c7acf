"""One regression test over every registered merge method (mergekit's pattern).

Every method in ``METHODS`` must have a case here; each case runs through the same checks:
inputs not mutated, non-contiguous inputs give the same result, dtypes kept, seeded
stochastic methods reproducible (and seed-sensitive), the result independent of the chunk
size, and mismatched tensor names or shapes raise an error naming the tensor.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
from torch import Tensor

import core.merging
from core.merging import METHODS, REQUIRED, MergeMethod, get_method, merge_state_dicts, ops
from core.merging.registry import register_method

from .helpers import assert_same, clone_all, make_inputs, non_contiguous


def _closeness(sd: dict[str, Tensor]) -> float:
    """Held-out score for greedy soups: closeness to a fixed target."""
    target = make_inputs(seed=9)[0]
    return -sum(
        float(((v.double() - target[k].double()) ** 2).sum())
        for k, v in sd.items()
        if v.is_floating_point() and k in target
    )


CASES: dict[str, dict[str, Any]] = {
    "task_arithmetic": {"scaling": 0.7, "weights": [1.0, -0.5, 2.0]},
    "ties": {"density": [0.3, 0.5, 1.0], "scaling": 0.9, "weights": [1.0, 2.0, 0.5]},
    "dare": {"drop_rate": 0.4, "scaling": 1.0},
    "breadcrumbs": {"top": 0.1, "bottom": 0.4, "scaling": 0.8},
    "fisher_merge": {"floor": 1e-3, "weights": [1.0, 2.0, 3.0]},
    "pcb": {"ratio": 0.3, "scaling": 1.0},
    "uniform_soup": {"weights": [1.0, 1.0, 2.0]},
    "greedy_soup": {"score_fn": _closeness},
    "wise_ft": {"alpha": 0.3},
    "lines": {"alpha": 0.2, "beta": 0.8},
    "compress": {"density": 0.3, "scaling": 0.5},
}


def run_case(
    name: str,
    base: dict[str, Tensor],
    models: list[dict[str, Tensor]],
    fishers: list[dict[str, Tensor]],
    seed: int = 0,
    **overrides: Any,
) -> dict[str, Tensor]:
    spec = get_method(name)
    count = spec.max_models or len(models)
    params = {**CASES[name], **overrides}
    extras = {"fisher": fishers[:count]} if "fisher" in spec.extras else None
    return merge_state_dicts(
        name,
        models[:count],
        base if spec.needs_base else None,
        extras=extras,
        seed=seed,
        **params,
    )


def test_every_registered_method_has_a_case() -> None:
    assert set(METHODS) == set(CASES), "add a case for every registered merge method"


@pytest.mark.parametrize("name", sorted(CASES))
def test_result_has_the_inputs_keys_shapes_and_buffers(name: str) -> None:
    base, models, fishers = make_inputs()
    out = run_case(name, base, models, fishers)
    assert list(out) == list(base)
    for key, value in base.items():
        assert out[key].shape == value.shape
        assert torch.isfinite(out[key].float()).all()
    assert torch.equal(out["steps"], base["steps"])  # non-float tensors copied unchanged


@pytest.mark.parametrize("name", sorted(CASES))
def test_inputs_are_not_mutated(name: str) -> None:
    base, models, fishers = make_inputs()
    copies = clone_all(base), [clone_all(m) for m in models], [clone_all(f) for f in fishers]
    out = run_case(name, base, models, fishers)
    assert_same(base, copies[0])
    for m, c in zip(models, copies[1], strict=True):
        assert_same(m, c)
    for f, c in zip(fishers, copies[2], strict=True):
        assert_same(f, c)
    for key, value in out.items():  # the result shares no memory with an input
        for source in (base, *models):
            assert value.data_ptr() != source[key].data_ptr() or value.numel() == 0


@pytest.mark.parametrize("name", sorted(CASES))
def test_non_contiguous_inputs_give_the_same_result(name: str) -> None:
    base, models, fishers = make_inputs()
    expected = run_case(name, base, models, fishers)

    def strided(sd: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {k: non_contiguous(v) for k, v in sd.items()}
        assert not out["layers.0.attn.weight"].is_contiguous()
        return out

    got = run_case(name, strided(base), [strided(m) for m in models], [strided(f) for f in fishers])
    assert_same(got, expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("name", sorted(CASES))
def test_dtype_is_kept(name: str, dtype: torch.dtype) -> None:
    base, models, fishers = make_inputs(dtype=dtype)
    out = run_case(name, base, models, fishers)
    for key, value in base.items():
        assert out[key].dtype == value.dtype, key


@pytest.mark.parametrize("name", sorted(CASES))
def test_seeded_runs_are_reproducible(name: str) -> None:
    base, models, fishers = make_inputs()
    first = run_case(name, base, models, fishers, seed=3)
    assert_same(run_case(name, base, models, fishers, seed=3), first)
    other = run_case(name, base, models, fishers, seed=4)
    differs = any(not torch.equal(first[k], other[k]) for k in first)
    assert differs == get_method(name).stochastic


@pytest.mark.parametrize("name", sorted(CASES))
def test_result_does_not_depend_on_the_chunk_size(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, models, fishers = make_inputs()
    expected = run_case(name, base, models, fishers, seed=1)
    monkeypatch.setattr(ops, "CHUNK_ELEMENTS", 4)  # many chunks; radix select, not kthvalue
    got = run_case(name, base, models, fishers, seed=1)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_missing_tensor_is_named(name: str) -> None:
    base, models, fishers = make_inputs()
    del models[0]["layers.1.mlp.bias"]
    with pytest.raises(ValueError, match=r"layers\.1\.mlp\.bias"):
        run_case(name, base, models, fishers)


@pytest.mark.parametrize("name", sorted(CASES))
def test_an_extra_tensor_is_named(name: str) -> None:
    base, models, fishers = make_inputs()
    models[0]["surprise.weight"] = torch.zeros(2)
    with pytest.raises(ValueError, match=r"surprise\.weight"):
        run_case(name, base, models, fishers)


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_shape_mismatch_is_named(name: str) -> None:
    base, models, fishers = make_inputs()
    models[0]["head.weight"] = torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"head\.weight.*\(4, 3\)"):
        run_case(name, base, models, fishers)


def test_a_bad_fisher_is_named() -> None:
    base, models, fishers = make_inputs()
    fishers[1]["embed.weight"] = torch.ones(2, 2)
    with pytest.raises(ValueError, match=r"embed\.weight"):
        run_case("fisher_merge", base, models, fishers)
    del fishers[1]["embed.weight"]
    with pytest.raises(ValueError, match=r"embed\.weight"):
        run_case("fisher_merge", base, models, fishers)


@pytest.mark.parametrize("name", sorted(CASES))
def test_unknown_parameter_is_rejected(name: str) -> None:
    base, models, fishers = make_inputs()
    with pytest.raises(ValueError, match="unknown parameter"):
        run_case(name, base, models, fishers, densty=0.3)


def test_unknown_method_suggests_close_names() -> None:
    with pytest.raises(ValueError, match="Did you mean 'ties'"):
        get_method("tie")


def test_names_are_case_insensitive() -> None:
    assert get_method("TIES") is METHODS["ties"]


def test_register_rejects_duplicates_and_half_specs() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_method(METHODS["ties"])
    with pytest.raises(ValueError, match="exactly one of kernel or function"):
        register_method(MergeMethod(name="nothing_here", summary="-"))
    assert "nothing_here" not in METHODS


def test_required_parameter_must_be_given() -> None:
    assert METHODS["greedy_soup"].params["score_fn"] is REQUIRED
    _, models, _ = make_inputs()
    with pytest.raises(ValueError, match="score_fn"):
        merge_state_dicts("greedy_soup", models)


def test_streamable_flag() -> None:
    assert METHODS["ties"].streamable
    assert not METHODS["greedy_soup"].streamable


WRAPPERS = {
    "task_arithmetic": ["task_arithmetic"],
    "ties": ["ties"],
    "dare": ["dare", "tune_rescale"],
    "breadcrumbs": ["breadcrumbs"],
    "pcb": ["pcb"],
    "lines": ["lines"],
    "wise_ft": ["wise_ft"],
    "fisher_merge": ["fisher_merge"],
    "compress": ["compressed_merge", "compress"],
}


@pytest.mark.parametrize(
    ("method", "wrapper"), [(m, w) for m, names in WRAPPERS.items() for w in names]
)
def test_wrapper_defaults_are_the_registered_defaults(method: str, wrapper: str) -> None:
    """A Python wrapper's defaults are read from its method's registration, so a YAML and a
    call without the parameter merge the same way."""
    params = get_method(method).params
    signature = inspect.signature(getattr(core.merging, wrapper)).parameters
    shared = {n: p.default for n, p in signature.items() if n in params}
    assert shared, f"{wrapper} exposes none of {method}'s parameters"
    assert shared == {n: params[n] for n in shared}


def test_every_method_with_parameters_has_its_wrappers_checked() -> None:
    with_defaults = {
        name for name, m in METHODS.items() if any(v is not REQUIRED for v in m.params.values())
    }
    assert with_defaults <= set(WRAPPERS)
