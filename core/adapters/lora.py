"""LoRA (with rsLoRA, DoRA, and the PiSSA / CorDA initialisations) on linear and conv layers.

Parameter names follow PEFT (``lora_A.weight``, ``lora_B.weight``, ``lora_magnitude_vector``)
so that a saved adapter reads the same in both libraries.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fused_kernels.lora import dora_linear, lora_linear

from .config import LoraConfig
from .layer import (
    AdapterUnit,
    channel_dim,
    is_frozen,
    layer_dims,
    per_channel,
    set_weight_matrix,
    weight_matrix,
)
from .targeting import is_hf_conv1d, is_linear_like


def supports_lora(module: nn.Module) -> bool:
    """Linear, GPT-2 Conv1D, or an ungrouped Conv2d."""
    return is_linear_like(module) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def base_output_without_bias(base: nn.Module, x: Tensor) -> Tensor:
    """The base layer's output for ``x`` with its bias left out (DoRA rescales only W x)."""
    if isinstance(base, nn.Conv2d):
        return F.conv2d(x, base.weight, None, base.stride, base.padding, base.dilation, 1)
    if is_hf_conv1d(base):
        return x @ base.weight
    return F.linear(x, base.weight)


class LoraUnit(AdapterUnit):
    """One LoRA adapter: ``out + s * B(A(dropout(x)))`` (DoRA: magnitude-rescaled)."""

    method = "lora"
    mergeable = True

    def __init__(
        self,
        base: nn.Module,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        use_rslora: bool = False,
        use_dora: bool = False,
        init: str = "default",
    ) -> None:
        super().__init__()
        out_f, in_f = layer_dims(base)
        self.r = r
        self.alpha = alpha
        self.scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        self.use_dora = use_dora
        self.init = init
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
        self._reset(init)
        if use_dora:
            norm = weight_matrix(base).detach().float().norm(dim=1).to(dtype)
            self.lora_magnitude_vector = nn.Parameter(norm.clone())
        self._merge_norm: Tensor | None = None

    # -- initialisation ------------------------------------------------------------------
    def _reset(self, init: str) -> None:
        if init == "gaussian":
            nn.init.normal_(self.lora_A.weight, std=1 / self.r)
        else:  # "default", and a placeholder for the SVD inits that overwrite it
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

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
        """Base + LoRA through :func:`fused_kernels.lora.lora_linear` (DoRA: ``dora_linear``).

        Applies to frozen linear layers (``nn.Linear``, GPT-2 ``Conv1D``); DoRA only without
        active dropout (its dropout form needs the base product of the dropped input too).
        """
        if not is_linear_like(base) or not is_frozen(base):
            return None
        bias = getattr(base, "bias", None)
        dropping = isinstance(self.lora_dropout, nn.Dropout) and self.training
        weight = weight_matrix(base)
        a, b = self.lora_A.weight, self.lora_B.weight
        if self.use_dora:
            if dropping:
                return None
            return dora_linear(x, weight, bias, a, b, self.scaling, self.lora_magnitude_vector)
        mask = None
        if dropping:
            p = self.lora_dropout.p
            mask = torch.empty_like(x).bernoulli_(1 - p).div_(1 - p)
        return lora_linear(x, weight, bias, a, b, self.scaling, mask)

    def forward(self, x: Tensor, out: Tensor, base: nn.Module) -> Tensor:
        if not self.use_dora:
            return out + self.lora_output(x)
        x_drop = self.lora_dropout(x)
        lora = self.lora_B(self.lora_A(x_drop))
        norm = self._dora_norm(base, self.delta_matrix().detach()).detach()
        scale = per_channel(self.lora_magnitude_vector / norm, out, self.channel_dim)
        if isinstance(self.lora_dropout, nn.Identity) or not self.training:
            bias = getattr(base, "bias", None)
            base_wx = out if bias is None else out - per_channel(bias, out, self.channel_dim)
        else:
            base_wx = base_output_without_bias(base, x_drop)
        return out + (scale - 1) * base_wx + scale * lora * self.scaling

    @staticmethod
    def _dora_norm(base: nn.Module, delta: Tensor) -> Tensor:
        """Row norms of W0 + s B A (DoRA's "column" norm in the paper's W x convention)."""
        return (weight_matrix(base) + delta.to(base.weight.dtype)).norm(dim=1)

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
            delta = self.delta_matrix()
            w = weight_matrix(base)
            if not self.use_dora:
                set_weight_matrix(base, w + delta)
                return
            norm = self._dora_norm(base, delta)
            self._merge_norm = norm.clone()
            factor = (self.lora_magnitude_vector / norm).unsqueeze(1)
            set_weight_matrix(base, factor * (w + delta))

    def unmerge(self, base: nn.Module) -> None:
        with torch.no_grad():
            delta = self.delta_matrix()
            w = weight_matrix(base)
            if not self.use_dora:
                set_weight_matrix(base, w - delta)
                return
            factor = (self._merge_norm / self.lora_magnitude_vector).unsqueeze(1)
            set_weight_matrix(base, factor * w - delta)
            self._merge_norm = None

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


def build_lora_unit(
    base: nn.Module,
    module_name: str,
    config: LoraConfig,
    covariance: Tensor | None = None,
    structure_only: bool = False,
) -> LoraUnit:
    """Create the LoRA unit for one layer, applying the chosen initialisation.

    ``structure_only`` builds the tensors of an SVD-initialised unit without computing the
    decomposition (W0 untouched, initial factors zero): the shape a checkpoint that holds
    the initialised and trained state is loaded into.
    """
    r, alpha = config.rank_for(module_name)
    out_f, in_f = layer_dims(base)
    if r > min(out_f, in_f):
        raise ValueError(
            f"LoRA rank r={r} is larger than layer {module_name!r} allows "
            f"(out_features={out_f}, in_features={in_f}); use r <= {min(out_f, in_f)} "
            "or leave this layer out of target_modules (or set rank_pattern for it)."
        )
    unit = LoraUnit(base, r, alpha, config.dropout, config.use_rslora, config.use_dora, config.init)
    if structure_only and config.init in ("pissa", "corda"):
        unit.register_buffer("init_A", torch.zeros_like(unit.lora_A.weight))
        unit.register_buffer("init_B", torch.zeros_like(unit.lora_B.weight))
    elif config.init == "pissa":
        a, b = pissa_factors(weight_matrix(base).detach(), r, unit.scaling)
        unit.set_factors(base, a, b)
    elif config.init == "corda":
        if covariance is None:
            raise ValueError(
                f"LoRA init='corda' needs calibration data for layer {module_name!r}: pass "
                "calibration=<iterable of batches> to inject()."
            )
        if not is_linear_like(base):
            raise ValueError(
                f"LoRA init='corda' supports linear layers only, not {module_name!r} "
                f"({type(base).__name__})."
            )
        a, b = corda_factors(
            weight_matrix(base).detach(),
            covariance,
            r,
            unit.scaling,
            config.corda_mode,
            config.corda_damping,
        )
        unit.set_factors(base, a, b)
    return unit
