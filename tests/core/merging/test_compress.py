"""ComPEFT-style ternary compression: values, stored size, save/load, merge method."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.merging import compress, compressed_merge, load_compressed, task_vector

from .helpers import make_inputs


def test_ternary_values_with_least_squares_scale() -> None:
    tau = {"w": torch.tensor([4.0, -3.0, 0.5, 0.1, -2.0])}
    packed = compress(tau, density=0.4)
    torch.testing.assert_close(packed.decompress()["w"], torch.tensor([3.5, -3.5, 0.0, 0.0, 0.0]))
    assert packed.tensors["w"].kept == 2


def test_alpha_times_std_scale() -> None:
    tau = {"w": torch.tensor([4.0, -3.0, 0.5, 0.1, -2.0])}
    std = float(tau["w"].double().std(unbiased=False))
    out = compress(tau, density=0.4, alpha=2.0).decompress()["w"]
    torch.testing.assert_close(out, torch.tensor([2 * std, -2 * std, 0.0, 0.0, 0.0]))


def test_stored_size_is_reported() -> None:
    gen = torch.Generator().manual_seed(0)
    tau = {"a": torch.randn(100, 100, generator=gen), "b": torch.randn(5, generator=gen)}
    packed = compress(tau, density=0.1)
    # a: 10,000 keep bits (1,250 B) + 1,000 sign bits (125 B) + scale (4 B);
    # b: 5 keep bits (1 B), round(0.5) = 0 kept so no sign bytes, scale (4 B)
    assert packed.stored_bytes == 1250 + 125 + 4 + 1 + 0 + 4
    assert packed.dense_bytes == 4 * 10_005
    report = packed.report()
    assert report["compression_ratio"] == pytest.approx(40_020 / 1384, rel=1e-3)
    assert report["bits_per_entry"] == pytest.approx(8 * 1384 / 10_005, rel=1e-3)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    base, models, _ = make_inputs(n_models=1, dtype=torch.bfloat16)
    packed = compress(task_vector(base, models[0]), density=0.3)
    path = packed.save(tmp_path / "tau.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["tau.safetensors"]  # no temporary left
    loaded = load_compressed(path)
    assert loaded.stored_bytes == packed.stored_bytes
    for key, value in packed.decompress().items():
        assert torch.equal(loaded.decompress()[key], value)
    assert loaded.density == 0.3


def test_loading_a_foreign_file_is_explained(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not a compressed task vector"):
        load_compressed(tmp_path / "x.safetensors")
    with pytest.raises(FileNotFoundError):
        load_compressed(tmp_path / "missing.safetensors")


def test_merge_method_uses_the_same_ternary_values() -> None:
    base, models, _ = make_inputs(n_models=2)
    merged = compressed_merge(base, models, density=0.3, scaling=0.5, weights=[1.0, 2.0])
    ternary = [compress(task_vector(base, m), density=0.3).decompress() for m in models]
    for key, value in base.items():
        if value.is_floating_point():
            expected = value + 0.5 * (ternary[0][key] + 2.0 * ternary[1][key])
            torch.testing.assert_close(merged[key], expected)


def test_non_float_tensors_are_refused() -> None:
    with pytest.raises(ValueError, match="floating point"):
        compress({"steps": torch.tensor([1, 2])})
