"""How the Triton kernels treat dtypes in ``tl.dot``, shared by every kernel launcher."""

from __future__ import annotations

import torch


def upcast_tiles(t: torch.Tensor) -> bool:
    """Whether to widen 16-bit tiles to fp32 before ``tl.dot``: Triton's CPU interpreter
    computes dots of 16-bit floats wrongly (Triton 3.6); on a GPU they run in the input dtype."""
    return t.dtype in (torch.bfloat16, torch.float16) and not t.is_cuda


def dot_precision(t: torch.Tensor) -> str:
    """fp32 products in full precision unless PyTorch itself allows TF32 matmuls (its default
    is not to), so the kernels agree with the reference to fp32 tolerance."""
    if t.dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"
