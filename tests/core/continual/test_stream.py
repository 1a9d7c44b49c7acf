"""TaskStream: order, names, and the inputs it refuses."""

from __future__ import annotations

import pytest

from core.continual import Task, TaskStream
from tests.core.training.toys import ToyData


def test_stream_keeps_order_and_names() -> None:
    a, b = ToyData(seed=1), ToyData(seed=2)
    stream = TaskStream([("a", a), Task("b", b)])
    assert stream.names == ["a", "b"] and len(stream) == 2
    assert stream[1].datamodule is b and [t.name for t in stream] == ["a", "b"]
    assert stream.index_of("b") == 1
    with pytest.raises(KeyError, match="no task named 'c'"):
        stream.index_of("c")


def test_duplicate_names_are_refused_with_the_names() -> None:
    data = ToyData()
    with pytest.raises(ValueError, match=r"unique.*'a' x2"):
        TaskStream([("a", data), ("b", data), ("a", data)])


def test_other_bad_inputs() -> None:
    with pytest.raises(ValueError, match="at least one task"):
        TaskStream([])
    with pytest.raises(ValueError, match="non-empty str"):
        TaskStream([("", ToyData())])
    with pytest.raises(TypeError, match="train_dataloader"):
        TaskStream([("a", object())])
    with pytest.raises(TypeError, match="pair"):
        TaskStream(["abc"])
