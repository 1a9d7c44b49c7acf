"""One LoRA adapter on one linear or conv layer (the unit ``inject`` builds for ``lora``).

Parameter names follow PEFT (``lora_A.weight``, ``lora_B.weight``, ``lora_magnitude_vector``)
so that a saved adapter reads the same in both libraries. What differs between LoRA and
DoRA is the unit's :class:`~core.adapters.lora_variants.LoraVariant`; how A starts is its
:class:`~core.adapters.lora_init.LoraInit`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layer import AdapterUnit, channel_dim, is_frozen, layer_dims, set_weight_matrix, weight_matrix
from .lora_init import LoraInit
from .lora_variants import LoraVariant
from .targeting import is_linear_like


class LoraUnit(AdapterUnit):
    """One LoRA adapter: ``out + s * B(A(dropout(x)))``, or what its variant makes of it."""

    method = "lora"
    mergeable = True

    def __init__(
        self,
        base: nn.Module,
        r: int,
        scaling: float,
        dropout: float,
        variant: LoraVariant,
        init: LoraInit,
    ) -> None:
        super().__init__()
        out_f, in_f = layer_dims(base)
        self.r = r
        self.scaling = scaling
        self.variant = variant
        self.channel_dim = channel_dim(base)
        dtype, device = base.weight.dtype, base.weight.device
        if isinstance(base, nn.Conv2d):
            self.lora_A = nn.Conv2d(
                base.in_channels,
                r,
                base.kernel_size,
                base.stride,
                base.padding,
                base.dilation,
                bias=False,
                device=device,
                dtype=dtype,
            )
            self.lora_B = nn.Conv2d(r, out_f, 1, bias=False, device=device, dtype=dtype)
        else:
            self.lora_A = nn.Linear(in_f, r, bias=False, device=device, dtype=dtype)
            self.lora_B = nn.Linear(r, out_f, bias=False, device=device, dtype=dtype)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        init.init_a_(self.lora_A.weight, r)
        nn.init.zeros_(self.lora_B.weight)
        variant.init(self, base)
        self._merge_norm: Tensor | None = None

    def set_factors(self, base: nn.Module, a: Tensor, b: Tensor) -> None:
        """Put factors B (out, r) and A (r, in) in the adapter and subtract s*B A from W0.

        Used by the SVD inits (PiSSA, CorDA): afterwards residual + adapter equals W0, and
        the initial factors are kept so the adapter can be saved as a plain LoRA.
        """
        with torch.no_grad():
            self.lora_A.weight.copy_(a.reshape(self.lora_A.weight.shape))
            self.lora_B.weight.copy_(b.reshape(self.lora_B.weight.shape))
            w = weight_matrix(base).float()
            set_weight_matrix(base, w - self.scaling * (b.float() @ a.float()))
        self.register_buffer("init_A", self.lora_A.weight.detach().clone())
        self.register_buffer("init_B", self.lora_B.weight.detach().clone())

    def keep_initial_factors_shape(self) -> None:
        """Register zero initial factors: the structure of an SVD-initialised unit, to load a
        checkpoint that holds its initialised state into (W0 is left untouched)."""
        self.register_buffer("init_A", torch.zeros_like(self.lora_A.weight))
        self.register_buffer("init_B", torch.zeros_like(self.lora_B.weight))

    # -- computation ---------------------------------------------------------------------
    def factors(self) -> tuple[Tensor, Tensor]:
        """(B as out x r, A as r x in*kernel)."""
        return (
            self.lora_B.weight.reshape(self.lora_B.weight.shape[0], self.r),
            self.lora_A.weight.reshape(self.r, -1),
        )

    def delta_matrix(self) -> Tensor:
        """s * B A as an (out, in*kernel) matrix."""
        b, a = self.factors()
        return self.scaling * (b @ a)

    def lora_output(self, x: Tensor) -> Tensor:
        """s * B(A(dropout(x))): the adapter's additive output (plain LoRA)."""
        return self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def fused_output(self, x: Tensor, base: nn.Module) -> Tensor | None:
        """Base + adapter through the variant's fused op (``fused_kernels.lora``).

        Applies to frozen linear layers (``nn.Linear``, GPT-2 ``Conv1D``); the variant may
        still decline (DoRA with active dropout).
        """
        if not is_linear_like(base) or not is_frozen(base):
            return None
        bias = getattr(base, "bias", None)
        dropping = isinstance(self.lora_dropout, nn.Dropout) and self.training
        return self.variant.fused_output(self, x, weight_matrix(base), bias, dropping)

    def forward(self, x: Tensor, out: Tensor, base: nn.Module) -> Tensor:
        return self.variant.forward(self, x, out, base)

    def restore_base(self, x: Tensor, out: Tensor, base: nn.Module) -> Tensor:
        if not hasattr(self, "init_A"):
            return out
        hidden = torch.func.functional_call(self.lora_A, {"weight": self.init_A}, (x,))
        return (
            out
            + torch.func.functional_call(self.lora_B, {"weight": self.init_B}, (hidden,))
            * self.scaling
        )

    # -- merging -------------------------------------------------------------------------
    def merge(self, base: nn.Module) -> None:
        with torch.no_grad():
            self.variant.merge(self, base)

    def unmerge(self, base: nn.Module) -> None:
        with torch.no_grad():
            self.variant.unmerge(self, base)

    # -- saving --------------------------------------------------------------------------
    def portable_state(self, base: nn.Module) -> tuple[dict[str, Tensor], dict]:
        """PiSSA/CorDA adapters are saved as a rank-2r plain LoRA on the *original* W0.

        s (B A - B0 A0) = s' [B, B0] [A; -A0] with r' = 2r and alpha' chosen so s' = s,
        which is what PEFT's ``path_initial_model_for_weight_conversion`` writes too.
        """
        state = {k: v.detach() for k, v in self.named_parameters()}
        if not hasattr(self, "init_A"):
            return state, {}
        b, a = self.factors()
        b0 = self.init_B.reshape(b.shape)
        a0 = self.init_A.reshape(a.shape)
        a_cat = torch.cat([a, -a0], dim=0).detach()
        b_cat = torch.cat([b, b0], dim=1).detach()
        a_shape = (2 * self.r, *self.lora_A.weight.shape[1:])
        b_shape = (b.shape[0], 2 * self.r, *self.lora_B.weight.shape[2:])
        return {
            "lora_A.weight": a_cat.reshape(a_shape).contiguous(),
            "lora_B.weight": b_cat.reshape(b_shape).contiguous(),
        }, {"converted_svd_init": True}
