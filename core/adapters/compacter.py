"""Compacter: a bottleneck adapter whose projections are parameterised hypercomplex (PHM) layers.

Each projection weight is W = sum_i A_i (x) B_i (Kronecker product). The n "rules" A_i
(n x n each) are shared by every layer of one adapter; B_i = s_i t_i^T is rank one and per
layer, so a layer costs about (d + k) parameters per rule instead of d * k.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from .bottleneck import ACTIVATION_MODULES, check_activation
from .config import AdapterConfig, require_positive
from .layer import AdapterUnit, layer_dims
from .registry import BuildContext, register_method
from .targeting import is_linear_like


@dataclass
class CompacterConfig(AdapterConfig):
    """Compacter: a bottleneck whose projections are sums of Kronecker products.

    W = sum_i A_i (x) B_i with the n x n "rules" A_i shared by every adapted layer and the
    B_i = s_i t_i^T rank-one and per layer. Feature and bottleneck sizes must divide by n.
    """

    method: ClassVar[str] = "compacter"
    peft_type: ClassVar[str] = "COMPACTER"
    bottleneck_dim: int = 16
    phm_dim: int = 4
    activation: str = "gelu"

    def validate(self) -> None:
        require_positive(self.bottleneck_dim, "bottleneck_dim", "Compacter")
        require_positive(self.phm_dim, "phm_dim", "Compacter")
        if self.bottleneck_dim % self.phm_dim:
            raise ValueError(
                f"Compacter config: bottleneck_dim={self.bottleneck_dim} must be divisible by "
                f"phm_dim={self.phm_dim}."
            )
        check_activation(self.activation, "Compacter")


def supports_compacter(module: nn.Module) -> bool:
    """Linear-like layers: their output's last dimension is the feature size."""
    return is_linear_like(module)


def kronecker_sum(rules: Tensor, factors: Tensor) -> Tensor:
    """sum_i kron(rules[i], factors[i]) for rules (n, n, n) and factors (n, p, q) -> (n p, n q)."""
    n, p, q = factors.shape
    return torch.einsum("iab,icd->acbd", rules, factors).reshape(n * p, n * q)


class PhmLinear(nn.Module):
    """y = x W^T + b with W a Kronecker sum of shared rules and rank-one per-layer factors."""

    def __init__(
        self, in_features: int, out_features: int, rules: nn.Parameter, zero_init: bool
    ) -> None:
        super().__init__()
        n = rules.shape[0]
        self.rules = rules  # shared Parameter: the same object in every layer of the adapter
        ref = rules
        self.left = nn.Parameter(
            torch.empty(n, out_features // n, 1, dtype=ref.dtype, device=ref.device)
        )
        self.right = nn.Parameter(
            torch.empty(n, 1, in_features // n, dtype=ref.dtype, device=ref.device)
        )
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=ref.dtype, device=ref.device))
        nn.init.normal_(self.right, std=(1.0 / in_features) ** 0.5)
        if zero_init:
            nn.init.zeros_(self.left)
        else:
            nn.init.normal_(self.left, std=1.0)

    def weight(self) -> Tensor:
        return kronecker_sum(self.rules, self.left @ self.right)

    def forward(self, x: Tensor) -> Tensor:
        return torch.nn.functional.linear(x, self.weight(), self.bias)


class CompacterUnit(AdapterUnit):
    """Residual PHM bottleneck on the layer output; the up projection starts at zero."""

    method = CompacterConfig.method

    def __init__(
        self,
        base: nn.Module,
        config: CompacterConfig,
        rules_down: nn.Parameter,
        rules_up: nn.Parameter,
    ) -> None:
        super().__init__()
        features, _ = layer_dims(base)
        self.adapter_down = PhmLinear(features, config.bottleneck_dim, rules_down, zero_init=False)
        self.adapter_act = ACTIVATION_MODULES[config.activation]()
        self.adapter_up = PhmLinear(config.bottleneck_dim, features, rules_up, zero_init=True)

    def forward(self, x: Tensor, out: Tensor, base: nn.Module) -> Tensor:
        return out + self.adapter_up(self.adapter_act(self.adapter_down(out)))


def new_rules(n: int, like: Tensor) -> nn.Parameter:
    """Fresh n x n x n rule tensor (Xavier-normal per rule)."""
    rules = torch.empty(n, n, n, dtype=like.dtype, device=like.device)
    for i in range(n):
        nn.init.xavier_normal_(rules[i])
    return nn.Parameter(rules)


def build_compacter_unit(
    base: nn.Module, module_name: str, config: CompacterConfig, context: BuildContext
) -> CompacterUnit:
    """Build one layer's unit; ``context.shared`` carries the adapter's rules across its
    layers (made by the first layer built)."""
    shared = context.shared
    features, _ = layer_dims(base)
    n = config.phm_dim
    if features % n:
        raise ValueError(
            f"Compacter cannot adapt {module_name!r}: its {features} output features are not "
            f"divisible by phm_dim={n}; pick a phm_dim that divides {features}."
        )
    if "rules_down" not in shared:
        shared["rules_down"] = new_rules(n, base.weight)
        shared["rules_up"] = new_rules(n, base.weight)
    return CompacterUnit(base, config, shared["rules_down"], shared["rules_up"])


register_method(CompacterConfig, supports=supports_compacter, build=build_compacter_unit)
