"""Run these tests on one intra-op thread: their tensors are tiny, and on a shared 2-core
machine multi-threaded small ops spend more time waiting for each other than computing."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
