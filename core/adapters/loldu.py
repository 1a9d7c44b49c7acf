"""LoLDU: fine-tune through the diagonal of a pivoted LDU decomposition of W0.

W0 = P L D U (pivoted LU with unit-diagonal L and U). The adapter keeps the first r
columns of P L and rows of U frozen and trains only the r diagonal values d and one
scale s: W = W_res + s * (P L_r) diag(d) U_r, with W_res = W0 - (P L_r) diag(D_r) U_r so
the model starts unchanged (d = D_r, s = 1). That is r + 1 trained numbers per layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from .config import AdapterConfig, require_positive
from .layer import AdapterUnit, layer_dims, set_weight_matrix, weight_matrix
from .registry import BuildContext, register_method
from .targeting import is_linear_like


@dataclass
class LolduConfig(AdapterConfig):
    """LoLDU: pivoted LU of W0 = P L D U; train only r diagonal values and one scale."""

    method: ClassVar[str] = "loldu"
    peft_type: ClassVar[str] = "LOLDU"
    r: int = 8

    @property
    def rewrites_base(self) -> bool:
        """W0 becomes the residual W0 - (P L_r) diag(D_r) U_r."""
        return True

    def validate(self) -> None:
        require_positive(self.r, "r", "LoLDU")


def supports_loldu(module: nn.Module) -> bool:
    """Linear-like layers (the decomposition is of a 2-d weight)."""
    return is_linear_like(module)


def ldu_factors(weight: Tensor, r: int) -> tuple[Tensor, Tensor, Tensor]:
    """(P L_r, D_r, U_r) of the pivoted LDU decomposition of ``weight`` (out x in)."""
    p, lower, upper = torch.linalg.lu(weight.double())
    diag = upper.diagonal()
    safe = torch.where(diag.abs() > 1e-12, diag, torch.ones_like(diag))
    unit_upper = upper / safe[:, None]
    return (p @ lower[:, :r]), diag[:r], unit_upper[:r]


class LolduUnit(AdapterUnit):
    """``out + s * ((x U_r^T) * d) (P L_r)^T``, merging into W as s (P L_r) diag(d) U_r."""

    method = LolduConfig.method
    mergeable = True

    def __init__(self, base: nn.Module, r: int) -> None:
        super().__init__()
        weight = weight_matrix(base).detach()
        dtype = weight.dtype
        pl, d, u = ldu_factors(weight, r)
        self.register_buffer("loldu_L", pl.to(dtype))
        self.register_buffer("loldu_U", u.to(dtype))
        self.loldu_diag = nn.Parameter(d.to(dtype))
        self.register_buffer("loldu_diag_init", d.to(dtype).clone())
        self.loldu_scale = nn.Parameter(torch.ones((), dtype=dtype, device=weight.device))
        with torch.no_grad():
            residual = weight.double() - (pl * d[None, :]) @ u
            set_weight_matrix(base, residual)

    def delta_matrix(self) -> Tensor:
        return self.loldu_scale * (self.loldu_L * self.loldu_diag[None, :]) @ self.loldu_U

    def forward(self, x: Tensor, out: Tensor, base: nn.Module) -> Tensor:
        inner = (x @ self.loldu_U.T) * self.loldu_diag
        return out + self.loldu_scale * (inner @ self.loldu_L.T)

    def restore_base(self, x: Tensor, out: Tensor, base: nn.Module) -> Tensor:
        return out + ((x @ self.loldu_U.T) * self.loldu_diag_init) @ self.loldu_L.T

    def merge(self, base: nn.Module) -> None:
        set_weight_matrix(base, weight_matrix(base) + self.delta_matrix().detach())

    def unmerge(self, base: nn.Module) -> None:
        set_weight_matrix(base, weight_matrix(base) - self.delta_matrix().detach())


def build_loldu_unit(
    base: nn.Module, module_name: str, config: LolduConfig, context: BuildContext
) -> LolduUnit:
    """One layer's LoLDU unit; the rank must fit the layer."""
    out_f, in_f = layer_dims(base)
    if config.r > min(out_f, in_f):
        raise ValueError(
            f"LoLDU rank r={config.r} is larger than layer {module_name!r} allows "
            f"(out_features={out_f}, in_features={in_f}); use r <= {min(out_f, in_f)}."
        )
    return LolduUnit(base, config.r)


register_method(LolduConfig, supports=supports_loldu, build=build_loldu_unit)
