"""LiNeS: the first layer stays at base, the last gets the full task vector."""

from __future__ import annotations

import pytest
import torch

from core.merging import layer_scales, lines


def _inputs() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    keys = [
        "embed.weight",
        "model.layers.0.q.weight",
        "model.layers.1.q.weight",
        "model.layers.2.q.weight",
        "model.layers.3.q.weight",
        "head.weight",
    ]
    base = {k: torch.randn(3, 2, generator=gen) for k in keys}
    ft = {k: v + torch.randn(3, 2, generator=gen) for k, v in base.items()}
    return base, ft


def test_first_layer_at_base_last_at_base_plus_tau() -> None:
    base, ft = _inputs()
    out = lines(base, [ft], alpha=0.0, beta=1.0)
    assert torch.equal(out["model.layers.0.q.weight"], base["model.layers.0.q.weight"])
    torch.testing.assert_close(out["model.layers.3.q.weight"], ft["model.layers.3.q.weight"])
    tau1 = ft["model.layers.1.q.weight"] - base["model.layers.1.q.weight"]
    torch.testing.assert_close(
        out["model.layers.1.q.weight"], base["model.layers.1.q.weight"] + tau1 / 3
    )
    assert torch.equal(out["embed.weight"], base["embed.weight"])  # unmatched -> first layer


@pytest.mark.parametrize(("unmatched", "scale"), [("first", 0.2), ("last", 1.0), ("base", 0.0)])
def test_unmatched_tensors(unmatched: str, scale: float) -> None:
    base, ft = _inputs()
    out = lines(base, [ft], alpha=0.2, beta=0.8, unmatched=unmatched)
    expected = base["head.weight"] + scale * (ft["head.weight"] - base["head.weight"])
    torch.testing.assert_close(out["head.weight"], expected)


def test_prefix_list_and_callable_parsers() -> None:
    keys = ["fc1.weight", "fc1.bias", "fc2.weight", "head.weight", "other"]
    scales = layer_scales(keys, 0.0, 1.0, layers=["fc1", "fc2", "head"])
    assert scales == {
        "fc1.weight": 0.0,
        "fc1.bias": 0.0,
        "fc2.weight": 0.5,
        "head.weight": 1.0,
        "other": 0.0,
    }
    by_len = layer_scales(["a", "bb", "ccc"], 1.0, 2.0, layers=lambda k: len(k) - 1)
    assert by_len == {"a": 1.0, "bb": 2.0, "ccc": 3.0}
    gpt2 = layer_scales(["transformer.h.0.attn.c_attn.weight", "transformer.h.11.mlp.weight"], 0, 1)
    assert gpt2 == {"transformer.h.0.attn.c_attn.weight": 0.0, "transformer.h.11.mlp.weight": 1.0}


def test_weights_combine_task_vectors_before_scaling() -> None:
    base, ft = _inputs()
    out = lines(base, [ft, ft], alpha=0.0, beta=1.0, weights=[0.5, 0.25])
    key = "model.layers.3.q.weight"
    torch.testing.assert_close(out[key], base[key] + 0.75 * (ft[key] - base[key]))


@pytest.mark.parametrize(
    ("layers", "match"),
    [
        (r"layers\.\d+", "group"),
        (r"layers\.(\d+", "regular expression"),
        ("nomatch(\\d)", "no tensor"),
    ],
)
def test_bad_layer_specs_are_explained(layers: str, match: str) -> None:
    base, ft = _inputs()
    with pytest.raises(ValueError, match=match):
        lines(base, [ft], layers=layers)


def test_bad_unmatched_is_rejected() -> None:
    base, ft = _inputs()
    with pytest.raises(ValueError, match="unmatched"):
        lines(base, [ft], unmatched="middle")
