"""Chunking, exact selection and seeded noise (core.merging.ops)."""

from __future__ import annotations

import pytest
import torch

from core.merging import ops


def test_chunk_slices_cover_the_range() -> None:
    assert list(ops.chunk_slices(10, 4)) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert list(ops.chunk_slices(0, 4)) == [slice(0, 0)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_radix_select_equals_kthvalue(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(1000, generator=gen, dtype=dtype).abs()
    values[::7] = 0.0  # ties and zeros
    values[5] = values[6]
    ks = [0, 1, 499, 998, 999, None]
    streams = [values] * len(ks)

    def read(sl: slice) -> list[torch.Tensor]:
        return [s[sl] for s in streams]

    radix = ops.kth_smallest(read, 1000, ks, chunk=64)  # 16 chunks: radix path
    direct = ops.kth_smallest(read, 1000, ks, chunk=4096)  # one chunk: kthvalue
    expected = [None if k is None else float(values.sort().values[k]) for k in ks]
    assert radix == direct == expected


def test_kth_smallest_checks_the_rank() -> None:
    with pytest.raises(ValueError, match="outside"):
        ops.kth_smallest(lambda sl: [torch.zeros(3)[sl]], 3, [3])


def test_top_magnitude_thresholds_keep_the_fraction() -> None:
    mags = torch.arange(1.0, 11.0)
    thresholds = ops.top_magnitude_thresholds(lambda sl: [mags[sl]] * 4, 10, [0.3, 1.0, 0.0, 0.04])
    assert thresholds[0] == 8.0  # keeps 8, 9, 10
    assert thresholds[1] == 0.0  # keeps all
    assert thresholds[2] == float("inf")  # keeps none
    assert thresholds[3] == float("inf")  # round(0.4) = 0 entries


def test_uniform_noise_depends_on_position_only() -> None:
    numel = ops.RNG_BLOCK * 2 + 123
    whole = ops.uniform_noise(5, numel, slice(0, numel))
    parts = torch.cat([ops.uniform_noise(5, numel, sl) for sl in ops.chunk_slices(numel, 1000)])
    assert torch.equal(whole, parts)
    assert not torch.equal(whole, ops.uniform_noise(6, numel, slice(0, numel)))
    assert whole.min() >= 0 and whole.max() < 1


def test_derive_seed_is_stable() -> None:
    assert ops.derive_seed(0, "a", 1) == ops.derive_seed(0, "a", 1)
    assert ops.derive_seed(0, "a", 1) != ops.derive_seed(0, "a", 2)
    assert (
        ops.derive_seed(0, "layers.0.weight", 0) == 1296260211749890392
    )  # pinned: seeds must not change
