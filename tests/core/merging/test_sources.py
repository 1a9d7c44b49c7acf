"""In-memory sources and readers."""

from __future__ import annotations

import pytest
import torch

from core.merging import DictSource, MemoryReader


def test_memory_reader_reads_flat_ranges_of_strided_tensors() -> None:
    t = torch.arange(12.0).reshape(3, 4).T  # non-contiguous
    reader = MemoryReader(t)
    assert reader.shape == (4, 3) and reader.numel == 12
    assert torch.equal(reader.read(2, 7), t.reshape(-1)[2:7])
    assert torch.equal(reader.read_all(), t)


def test_dict_source_is_a_mapping() -> None:
    sd = {"a": torch.zeros(2), "b": torch.ones(3)}
    source = DictSource(sd, "m")
    assert list(source) == ["a", "b"] and len(source) == 2 and "a" in source
    assert source["b"] is sd["b"]
    assert source.meta("b") == ((3,), torch.float32)
    assert source.files() == []


def test_dict_source_rejects_non_tensors() -> None:
    with pytest.raises(TypeError, match="not a tensor"):
        DictSource({"a": 1.0}, "m")  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="state dict"):
        DictSource([torch.zeros(1)], "m")  # type: ignore[arg-type]
