"""Kernel tests: without a GPU, run the Triton kernels in Triton's CPU interpreter.

The variable must be set before a kernel module is imported (``triton.jit`` reads it), so it
is set here, at collection time. Set ``TRITON_INTERPRET=0`` to skip the Triton cases.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def force_backend(monkeypatch):
    """Force ``FINETUNERS_KERNELS`` for the duration of one test."""

    def force(name: str) -> None:
        monkeypatch.setenv("FINETUNERS_KERNELS", name)

    return force
