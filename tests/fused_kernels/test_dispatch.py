"""Backend choice: Triton on CUDA, the reference elsewhere, FINETUNERS_KERNELS to force."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from fused_kernels import dispatch

CPU = torch.zeros(1)
CUDA_LIKE = SimpleNamespace(is_cuda=True, device="cuda:0")  # all backend_for reads


@pytest.fixture
def env(monkeypatch):
    def set_env(kernels: str | None, interpret: str | None, triton: bool = True) -> None:
        for name, value in (("FINETUNERS_KERNELS", kernels), ("TRITON_INTERPRET", interpret)):
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        monkeypatch.setattr(dispatch, "triton_available", lambda: triton)

    return set_env


@pytest.mark.parametrize(
    ("kernels", "interpret", "tensor", "expected"),
    [
        (None, None, CPU, "reference"),
        ("auto", "1", CPU, "reference"),  # the interpreter runs only when asked for
        (None, None, CUDA_LIKE, "triton"),
        (" Auto ", None, CUDA_LIKE, "triton"),
        ("reference", None, CUDA_LIKE, "reference"),
        ("triton", "1", CPU, "triton"),
        ("triton", None, CUDA_LIKE, "triton"),
    ],
)
def test_backend_choice(env, kernels, interpret, tensor, expected) -> None:
    env(kernels, interpret)
    assert dispatch.backend_for(tensor) == expected


def test_auto_without_triton_falls_back_on_cuda(env) -> None:
    env(None, None, triton=False)
    assert dispatch.backend_for(CUDA_LIKE) == "reference"


def test_forcing_triton_where_it_cannot_run_names_the_fix(env) -> None:
    env("triton", None)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        dispatch.backend_for(CPU)
    env("triton", "1", triton=False)
    with pytest.raises(RuntimeError, match="triton installed: False"):
        dispatch.backend_for(CPU)


def test_unknown_backend_is_rejected(env) -> None:
    env("cuda", None)
    with pytest.raises(ValueError, match="FINETUNERS_KERNELS='cuda' is not one of"):
        dispatch.backend_for(CPU)
