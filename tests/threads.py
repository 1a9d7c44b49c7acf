"""A fixture for test packages made of many tiny tensor ops.

On a small shared machine, multi-threaded small ops spend more time waiting for each other
than computing; a conftest imports ``one_thread`` to run its package on one thread.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
