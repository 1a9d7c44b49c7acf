"""Kernel test fixtures (``TRITON_INTERPRET`` is set for the session in tests/conftest.py)."""

import pytest


@pytest.fixture
def force_backend(monkeypatch):
    """Force ``FINETUNERS_KERNELS`` for the duration of one test."""

    def force(name: str) -> None:
        monkeypatch.setenv("FINETUNERS_KERNELS", name)

    return force
