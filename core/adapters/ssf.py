"""SSF (scale and shift features): per-channel ``gamma * out + beta`` after a chosen op.

It is a linear map of the op's output, so it merges into a preceding linear, conv or
normalisation layer: W' = diag(gamma) W, b' = gamma * b + beta.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from .config import AdapterConfig
from .layer import AdapterUnit, channel_dim, per_channel, set_weight_matrix, weight_matrix
from .registry import BuildContext, register_method
from .targeting import is_hf_conv1d, is_linear_like

NORM_TYPES = (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)


@dataclass
class SsfConfig(AdapterConfig):
    """SSF: per-channel ``gamma * out + beta`` after each target op, mergeable into it.

    ``init="identity"`` (gamma = 1, beta = 0) keeps the model unchanged at the start;
    ``init="paper"`` draws gamma ~ N(1, std) and beta ~ N(0, std) as in the SSF paper.
    """

    method: ClassVar[str] = "ssf"
    peft_type: ClassVar[str] = "SSF"
    init: str = "identity"
    init_std: float = 0.02

    def validate(self) -> None:
        if self.init not in ("identity", "paper"):
            raise ValueError(f"SSF config: init={self.init!r} must be 'identity' or 'paper'.")


def num_channels(module: nn.Module) -> int | None:
    """Output channels of a layer SSF can follow, or None when it cannot."""
    if isinstance(module, nn.Linear):
        return module.out_features
    if is_hf_conv1d(module):
        return int(module.nf)
    if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        return module.out_channels
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1:
        return module.normalized_shape[0]
    if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
        return module.num_features
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    return None


def supports_ssf(module: nn.Module) -> bool:
    """Layers whose output channels SSF can scale and shift (see :func:`num_channels`)."""
    return num_channels(module) is not None


class SsfUnit(AdapterUnit):
    """``gamma * out + beta`` along the output-channel dimension."""

    method = SsfConfig.method

    def __init__(self, base: nn.Module, config: SsfConfig) -> None:
        super().__init__()
        channels = num_channels(base)
        ref = getattr(base, "weight", None)
        dtype = ref.dtype if ref is not None else None
        device = ref.device if ref is not None else None
        self.ssf_scale = nn.Parameter(torch.ones(channels, dtype=dtype, device=device))
        self.ssf_shift = nn.Parameter(torch.zeros(channels, dtype=dtype, device=device))
        if config.init == "paper":
            nn.init.normal_(self.ssf_scale, mean=1.0, std=config.init_std)
            nn.init.normal_(self.ssf_shift, std=config.init_std)
        self.channel_dim = channel_dim(base)
        self.mergeable = getattr(base, "weight", None) is not None and (
            is_linear_like(base) or isinstance(base, (nn.Conv1d, nn.Conv2d, nn.Conv3d, *NORM_TYPES))
        )
        self._created_bias = False

    def forward(self, x: Tensor, out: Tensor, base: nn.Module) -> Tensor:
        dim = self.channel_dim
        return out * per_channel(self.ssf_scale, out, dim) + per_channel(self.ssf_shift, out, dim)

    def _ensure_bias(self, base: nn.Module) -> None:
        if getattr(base, "bias", None) is None:
            base.bias = nn.Parameter(torch.zeros_like(self.ssf_shift), requires_grad=False)
            self._created_bias = True

    def merge(self, base: nn.Module) -> None:
        if not self.mergeable:
            super().merge(base)
        with torch.no_grad():
            gamma, beta = self.ssf_scale, self.ssf_shift
            self._scale_weight(base, gamma)
            self._ensure_bias(base)
            base.bias.copy_(gamma * base.bias + beta)

    def unmerge(self, base: nn.Module) -> None:
        with torch.no_grad():
            gamma, beta = self.ssf_scale, self.ssf_shift
            self._scale_weight(base, 1.0 / gamma)
            if self._created_bias:
                base.bias = None
                self._created_bias = False
            else:
                base.bias.copy_((base.bias - beta) / gamma)

    @staticmethod
    def _scale_weight(base: nn.Module, factor: Tensor) -> None:
        if base.weight.dim() == 1:  # normalisation layers: affine weight per channel
            base.weight.mul_(factor)
        else:
            set_weight_matrix(base, weight_matrix(base) * factor[:, None])


def build_ssf_unit(
    base: nn.Module, module_name: str, config: SsfConfig, context: BuildContext
) -> SsfUnit:
    """One layer's SSF unit."""
    return SsfUnit(base, config)


register_method(SsfConfig, supports=supports_ssf, build=build_ssf_unit)
