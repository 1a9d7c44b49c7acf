"""Pick the implementation of a kernel op: Triton on CUDA, the PyTorch reference elsewhere.

``FINETUNERS_KERNELS`` forces a backend: ``triton`` (also on CPU tensors when
``TRITON_INTERPRET=1``, which is how the kernels are tested without a GPU), ``reference``,
or ``auto`` (the default).
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

ENV_VAR = "FINETUNERS_KERNELS"
BACKENDS = ("auto", "triton", "reference")


@functools.cache
def triton_available() -> bool:
    """Whether the ``triton`` package can be imported (looked up once: the lookup stats the
    file system, and every kernel call asks)."""
    return importlib.util.find_spec("triton") is not None


def triton_interpreting() -> bool:
    """Whether Triton runs its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def requested_backend() -> str:
    """The backend asked for through ``FINETUNERS_KERNELS`` (``auto`` when unset)."""
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(
            f"{ENV_VAR}={value!r} is not one of {', '.join(BACKENDS)}; unset it or pick one."
        )
    return value


def backend_for(tensor: torch.Tensor) -> str:
    """``"triton"`` or ``"reference"`` for an op whose main input is ``tensor``."""
    requested = requested_backend()
    if requested == "reference":
        return "reference"
    if requested == "auto":  # Triton on CUDA only: the interpreter is for tests, on request
        return "triton" if tensor.is_cuda and triton_available() else "reference"
    if not (triton_available() and (tensor.is_cuda or triton_interpreting())):
        raise RuntimeError(
            f"{ENV_VAR}=triton but Triton cannot run here (tensor on {tensor.device}, "
            f"triton installed: {triton_available()}); use a CUDA tensor, set "
            f"TRITON_INTERPRET=1, or unset {ENV_VAR}."
        )
    return "triton"
