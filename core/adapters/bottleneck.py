"""Bottleneck adapters (Houlsby / Pfeiffer): ``h + up(act(down(norm(h))))`` after a layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from .config import AdapterConfig, require_positive
from .layer import AdapterUnit, layer_dims
from .registry import BuildContext, register_method
from .targeting import is_linear_like

ACTIVATION_MODULES = {
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}
#: The activation names a bottleneck-style config accepts.
ACTIVATIONS = tuple(ACTIVATION_MODULES)


def check_activation(activation: str, label: str) -> None:
    """Raise ``ValueError`` unless ``activation`` is one of :data:`ACTIVATIONS`."""
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"{label} config: activation={activation!r} is not one of {', '.join(ACTIVATIONS)}."
        )


@dataclass
class BottleneckConfig(AdapterConfig):
    """Houlsby/Pfeiffer bottleneck: ``h + up(act(down(norm(h))))`` after each target module.

    The up projection starts at zero, so the model is unchanged at the start.
    """

    method: ClassVar[str] = "bottleneck"
    peft_type: ClassVar[str] = "BOTTLENECK"
    bottleneck_dim: int = 16
    activation: str = "gelu"
    use_norm: bool = False
    dropout: float = 0.0

    def validate(self) -> None:
        require_positive(self.bottleneck_dim, "bottleneck_dim", "Bottleneck")
        check_activation(self.activation, "Bottleneck")


def supports_bottleneck(module: nn.Module) -> bool:
    """Linear-like layers: their output's last dimension is the feature size."""
    return is_linear_like(module)


class BottleneckUnit(AdapterUnit):
    """Residual bottleneck MLP on the layer output; the up projection starts at zero."""

    method = BottleneckConfig.method

    def __init__(self, base: nn.Module, config: BottleneckConfig) -> None:
        super().__init__()
        features, _ = layer_dims(base)
        dtype, device = base.weight.dtype, base.weight.device
        self.adapter_norm = (
            nn.LayerNorm(features, device=device, dtype=dtype) if config.use_norm else nn.Identity()
        )
        self.adapter_down = nn.Linear(features, config.bottleneck_dim, device=device, dtype=dtype)
        self.adapter_act = ACTIVATION_MODULES[config.activation]()
        self.adapter_dropout = nn.Dropout(config.dropout) if config.dropout else nn.Identity()
        self.adapter_up = nn.Linear(config.bottleneck_dim, features, device=device, dtype=dtype)
        nn.init.zeros_(self.adapter_up.weight)
        nn.init.zeros_(self.adapter_up.bias)

    def forward(self, x: Tensor, out: Tensor, base: nn.Module) -> Tensor:
        hidden = self.adapter_act(self.adapter_down(self.adapter_norm(out)))
        return out + self.adapter_up(self.adapter_dropout(hidden))


def build_bottleneck_unit(
    base: nn.Module, module_name: str, config: BottleneckConfig, context: BuildContext
) -> BottleneckUnit:
    """One layer's bottleneck unit."""
    return BottleneckUnit(base, config)


register_method(BottleneckConfig, supports=supports_bottleneck, build=build_bottleneck_unit)
