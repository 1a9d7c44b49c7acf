"""LoRA variants chosen by the config: the scale rule (LoRA / rsLoRA) and how the factors
change the layer (plain LoRA / DoRA).

A :class:`~core.adapters.lora_unit.LoraUnit` holds one :class:`LoraVariant` and delegates its
forward pass, fused path and merge to it, the way PEFT's ``LoraLayer`` delegates to a
``LoraVariant``; ``LoraConfig.variant`` and ``LoraConfig.scale_rule`` pick them from
``use_dora`` and ``use_rslora``. Variants hold no state: what they keep between calls (DoRA's
norm at merge time) lives on the unit.

:class:`ScaleRule` is the one place the LoRA scale s is computed: the unit, the
``AdapterBank`` stacks, saving PiSSA/CorDA as plain LoRA and the adapter merging of
``core.merging`` all ask it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fused_kernels.lora import dora_linear, lora_linear

from .layer import per_channel, set_weight_matrix, weight_matrix
from .targeting import is_hf_conv1d

if TYPE_CHECKING:
    from .lora_unit import LoraUnit


# ----------------------------------------------------------------------------- scale rules
@dataclass(frozen=True)
class ScaleRule:
    """How alpha and the rank r set the scale s of s * B A.

    ``root=False``: LoRA's s = alpha / r; ``root=True``: rsLoRA's s = alpha / sqrt(r), which
    keeps the update's size stable as r grows (Kalajdzievski, 2023).
    """

    name: str
    root: bool

    def scaling(self, alpha: float, r: int) -> float:
        """The scale s for ``alpha`` and rank ``r``."""
        return alpha / math.sqrt(r) if self.root else alpha / r

    def alpha_factor(self, rank_factor: float) -> float:
        """What alpha is multiplied by to keep s when r is multiplied by ``rank_factor``."""
        return math.sqrt(rank_factor) if self.root else float(rank_factor)


LORA_SCALE = ScaleRule("lora", root=False)
RSLORA_SCALE = ScaleRule("rslora", root=True)


# ----------------------------------------------------------------------------- weight variants
def base_output_without_bias(base: nn.Module, x: Tensor) -> Tensor:
    """The base layer's output for ``x`` with its bias left out (DoRA rescales only W x)."""
    if isinstance(base, nn.Conv2d):
        return F.conv2d(x, base.weight, None, base.stride, base.padding, base.dilation, 1)
    if is_hf_conv1d(base):
        return x @ base.weight
    return F.linear(x, base.weight)


class LoraVariant:
    """Plain LoRA: W = W0 + s B A, output ``out + s * B(A(dropout(x)))``.

    Subclasses override what differs (see :class:`DoraVariant`).
    """

    name = "lora"
    #: Whether adapters of this variant can share an ``AdapterBank`` stack.
    stackable = True

    def init(self, unit: LoraUnit, base: nn.Module) -> None:
        """Add the variant's own parameters to a freshly built unit (none for plain LoRA)."""

    def forward(self, unit: LoraUnit, x: Tensor, out: Tensor, base: nn.Module) -> Tensor:
        """The layer output with the adapter applied, given the output ``out`` so far."""
        return out + unit.lora_output(x)

    def fused_output(
        self, unit: LoraUnit, x: Tensor, weight: Tensor, bias: Tensor | None, dropping: bool
    ) -> Tensor | None:
        """Base + adapter in one fused op (:func:`fused_kernels.lora.lora_linear`), or None.

        ``weight`` is the base weight as an (out, in) matrix; ``dropping``: dropout is active,
        so a fresh mask is drawn for the adapter's input.
        """
        mask = None
        if dropping:
            p = unit.lora_dropout.p
            mask = torch.empty_like(x).bernoulli_(1 - p).div_(1 - p)
        a, b = unit.lora_A.weight, unit.lora_B.weight
        return lora_linear(x, weight, bias, a, b, unit.scaling, mask)

    def merge(self, unit: LoraUnit, base: nn.Module) -> None:
        """Fold the adapter into the base weight, in place (under ``no_grad``)."""
        set_weight_matrix(base, weight_matrix(base) + unit.delta_matrix())

    def unmerge(self, unit: LoraUnit, base: nn.Module) -> None:
        """Undo :meth:`merge`, in place (under ``no_grad``)."""
        set_weight_matrix(base, weight_matrix(base) - unit.delta_matrix())


class DoraVariant(LoraVariant):
    """DoRA: W = m * (W0 + s B A) / ||W0 + s B A|| row-wise, with a trainable magnitude m.

    The norm is detached in the forward pass, as in the paper and PEFT.
    """

    name = "dora"
    stackable = False

    def init(self, unit: LoraUnit, base: nn.Module) -> None:
        """m starts at the row norms of W0, so the layer is unchanged at the start."""
        norm = weight_matrix(base).detach().float().norm(dim=1).to(base.weight.dtype)
        unit.lora_magnitude_vector = nn.Parameter(norm.clone())

    @staticmethod
    def norm(base: nn.Module, delta: Tensor) -> Tensor:
        """Row norms of W0 + s B A (DoRA's "column" norm in the paper's W x convention)."""
        return (weight_matrix(base) + delta.to(base.weight.dtype)).norm(dim=1)

    def forward(self, unit: LoraUnit, x: Tensor, out: Tensor, base: nn.Module) -> Tensor:
        x_drop = unit.lora_dropout(x)
        lora = unit.lora_B(unit.lora_A(x_drop))
        norm = self.norm(base, unit.delta_matrix().detach()).detach()
        scale = per_channel(unit.lora_magnitude_vector / norm, out, unit.channel_dim)
        if isinstance(unit.lora_dropout, nn.Identity) or not unit.training:
            bias = getattr(base, "bias", None)
            base_wx = out if bias is None else out - per_channel(bias, out, unit.channel_dim)
        else:
            base_wx = base_output_without_bias(base, x_drop)
        return out + (scale - 1) * base_wx + scale * lora * unit.scaling

    def fused_output(
        self, unit: LoraUnit, x: Tensor, weight: Tensor, bias: Tensor | None, dropping: bool
    ) -> Tensor | None:
        """:func:`fused_kernels.lora.dora_linear`, without active dropout only (its dropout
        form needs the base product of the dropped input too)."""
        if dropping:
            return None
        a, b = unit.lora_A.weight, unit.lora_B.weight
        return dora_linear(x, weight, bias, a, b, unit.scaling, unit.lora_magnitude_vector)

    def merge(self, unit: LoraUnit, base: nn.Module) -> None:
        delta = unit.delta_matrix()
        norm = self.norm(base, delta)
        unit._merge_norm = norm.clone()
        factor = (unit.lora_magnitude_vector / norm).unsqueeze(1)
        set_weight_matrix(base, factor * (weight_matrix(base) + delta))

    def unmerge(self, unit: LoraUnit, base: nn.Module) -> None:
        factor = (unit._merge_norm / unit.lora_magnitude_vector).unsqueeze(1)
        set_weight_matrix(base, factor * weight_matrix(base) - unit.delta_matrix())
        unit._merge_norm = None


PLAIN = LoraVariant()
DORA = DoraVariant()
