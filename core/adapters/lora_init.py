"""How a LoRA adapter's factors start: the ``init`` variants of ``LoraConfig``.

``"default"`` and ``"gaussian"`` draw A at random with B = 0 (the model is unchanged at the
start). ``"pissa"`` and ``"corda"`` take r components of a decomposition of W0 into the
adapter and leave the rest as a frozen residual base weight (residual + s B A = W0). Each
variant says what it needs (calibration data, linear layers) and does, so code elsewhere
asks the variant instead of comparing init names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .targeting import is_linear_like

if TYPE_CHECKING:
    from .lora import LoraConfig


@dataclass(frozen=True)
class LayerStart:
    """What an init variant gets to start one layer's adapter from.

    Attributes:
        base: The base layer; ``weight`` its weight as an (out, in * kernel) matrix.
        module_name: Its name in the model (for messages).
        r, scaling: The adapter's rank and scale s (it contributes s B A).
        config: The adapter's config (``corda_mode``, ``corda_damping``).
        covariance: Summed input covariance of the layer, for calibrated inits.
    """

    base: nn.Module
    weight: Tensor
    module_name: str
    r: int
    scaling: float
    config: LoraConfig
    covariance: Tensor | None = None


class LoraInit:
    """PEFT's default init (``init_lora_weights=True``): Kaiming-uniform A, zero B."""

    name = "default"
    #: Moves part of W0 into the adapter, leaving a residual base weight.
    rewrites_base = False
    #: Its factors come from the input covariances of calibration batches.
    needs_calibration = False

    def init_a_(self, a: Tensor, r: int) -> None:
        """Draw the random A of rank ``r`` in place (B starts at zero)."""
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))

    def factors(self, layer: LayerStart) -> tuple[Tensor, Tensor] | None:
        """(A, B) taken out of the base weight (residual + s B A = W0), or None to keep the
        random start."""
        return None


class GaussianInit(LoraInit):
    """PEFT's ``"gaussian"``: A ~ N(0, 1/r), zero B."""

    name = "gaussian"

    def init_a_(self, a: Tensor, r: int) -> None:
        nn.init.normal_(a, std=1 / r)


class PissaInit(LoraInit):
    """PiSSA: the top-r singular triplets of W0 in the adapter, the residual frozen."""

    name = "pissa"
    rewrites_base = True

    def factors(self, layer: LayerStart) -> tuple[Tensor, Tensor]:
        return pissa_factors(layer.weight, layer.r, layer.scaling)


class CordaInit(LoraInit):
    """CorDA: context-oriented decomposition of W0 with calibration covariances (linear
    layers only); ``corda_mode`` picks the largest (``"ipm"``) or smallest (``"kpm"``) r."""

    name = "corda"
    rewrites_base = True
    needs_calibration = True

    def factors(self, layer: LayerStart) -> tuple[Tensor, Tensor]:
        if layer.covariance is None:
            raise ValueError(
                f"LoRA init='corda' needs calibration data for layer {layer.module_name!r}: "
                "pass calibration=<iterable of batches> to inject()."
            )
        if not is_linear_like(layer.base):
            raise ValueError(
                f"LoRA init='corda' supports linear layers only, not {layer.module_name!r} "
                f"({type(layer.base).__name__})."
            )
        config = layer.config
        return corda_factors(
            layer.weight,
            layer.covariance,
            layer.r,
            layer.scaling,
            config.corda_mode,
            config.corda_damping,
        )


#: Every LoRA init variant by its ``init`` name, in the order the docs list them.
LORA_INITS: dict[str, LoraInit] = {
    init.name: init for init in (LoraInit(), GaussianInit(), PissaInit(), CordaInit())
}


# ----------------------------------------------------------------------------- SVD inits
def pissa_factors(weight: Tensor, r: int, scaling: float) -> tuple[Tensor, Tensor]:
    """PiSSA: A = S_r^1/2 V_r^T, B = U_r S_r^1/2 of the top-r singular triplets of W0 / s."""
    u, s, vh = torch.linalg.svd(weight.float(), full_matrices=False)
    s_r = s[:r] / scaling
    root = torch.sqrt(s_r)
    return root[:, None] * vh[:r], u[:, :r] * root[None, :]


def corda_factors(
    weight: Tensor, covariance: Tensor, r: int, scaling: float, mode: str, damping: float
) -> tuple[Tensor, Tensor]:
    """CorDA: SVD of W0 C = U S V^T, so W0 = U S (V^T C^-1); the adapter takes r components.

    ``mode="ipm"`` (instruction-previewed, C from task data) takes the largest r;
    ``mode="kpm"`` (knowledge-preserved, C from general data) the smallest r, leaving the
    components that carry the calibration data's knowledge frozen. C is damped by
    ``damping * mean(diag C)`` before use, which keeps the decomposition exact.
    """
    w = weight.float()
    cov = covariance.double()
    n = cov.shape[0]
    cov = cov + damping * cov.diagonal().mean().clamp_min(1e-12) * torch.eye(n, dtype=cov.dtype)
    u, s, vh = torch.linalg.svd((w.double() @ cov), full_matrices=False)
    v_cinv = torch.linalg.solve(cov, vh.T).T  # V^T C^-1 (C symmetric)
    idx = slice(0, r) if mode == "ipm" else slice(s.shape[0] - r, s.shape[0])
    root = torch.sqrt(s[idx] / scaling)
    a = (root[:, None] * v_cinv[idx]).float()
    b = (u[:, idx] * root[None, :]).float()
    return a, b
