"""The merging tests use tensors of a few hundred numbers: run them on one CPU thread, where
a thread pool's wake-up would cost more than the arithmetic (restored after each test)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
