"""The wrapper that replaces an adapted module, and the base class of one adapter on it.

An adapted module is replaced by an :class:`AdapterLayer` holding the original module as
``base_layer`` (the same attribute name PEFT uses, so checkpoints read alike) and a
``ModuleDict`` of :class:`AdapterUnit` s, one per adapter name. Several adapters, even of
different methods, can sit on one layer; the active ones are applied in order.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .routing import ids_for_batch, routed_forward
from .targeting import is_hf_conv1d


class NotMergeableError(RuntimeError):
    """Raised when asked to merge an adapter that is not a linear change of the weights."""


# ----------------------------------------------------------------------------- weight views
def weight_matrix(base: nn.Module) -> Tensor:
    """The base weight as an (out_features, in_features * kernel) matrix (a view or a copy)."""
    weight = base.weight
    if is_hf_conv1d(base):
        return weight.T
    return weight.reshape(weight.shape[0], -1)


def set_weight_matrix(base: nn.Module, matrix: Tensor) -> None:
    """Write an (out, in*kernel) matrix back into the base weight, in place."""
    weight = base.weight
    with torch.no_grad():
        if is_hf_conv1d(base):
            weight.copy_(matrix.T.to(weight.dtype))
        else:
            weight.copy_(matrix.reshape(weight.shape).to(weight.dtype))


def is_frozen(base: nn.Module) -> bool:
    """Whether the base weight and bias (if any) get no gradient: what the fused LoRA op
    (:func:`fused_kernels.lora.lora_linear`) requires of the layer it runs."""
    bias = getattr(base, "bias", None)
    return not base.weight.requires_grad and (bias is None or not bias.requires_grad)


def layer_dims(base: nn.Module) -> tuple[int, int]:
    """(out_features, in_features * kernel) of a linear-like or conv base layer."""
    out_f, in_f = weight_matrix(base).shape
    return int(out_f), int(in_f)


#: Layers whose outputs hold the channels in dimension 1, (N, C, ...).
CHANNELS_FIRST = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.GroupNorm,
)


def channel_dim(base: nn.Module) -> int:
    """Which output dimension holds the channels: 1 for convolutions and batch/group norms
    (outputs are (N, C, ...)), -1 for linear layers and LayerNorm."""
    return 1 if isinstance(base, CHANNELS_FIRST) else -1


def per_channel(vector: Tensor, output: Tensor, dim: int) -> Tensor:
    """Reshape a per-channel vector so it broadcasts against ``output`` along ``dim``."""
    if dim == -1:
        return vector
    shape = [1] * output.dim()
    shape[dim] = -1
    return vector.view(shape)


# ----------------------------------------------------------------------------- adapter unit
class AdapterUnit(nn.Module):
    """One adapter on one layer.

    ``forward(x, out, base)`` returns the layer output with this adapter applied, given the
    layer input ``x`` and the output ``out`` computed so far. Mergeable units also implement
    ``merge``/``unmerge`` (exact, in place on the base layer). Parameter names of a unit are
    the local part of its PEFT state-dict keys (``lora_A.weight``, ``lora_magnitude_vector``).
    """

    mergeable: bool = False
    method: str = ""

    def forward(self, x: Tensor, out: Tensor, base: nn.Module) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def merge(self, base: nn.Module) -> None:
        raise NotMergeableError(
            f"{self.method} adapters are not a linear change of the weights and cannot be "
            "merged; keep the adapter as a module (or use a mergeable method such as lora/ssf)."
        )

    def unmerge(self, base: nn.Module) -> None:
        self.merge(base)

    def fused_output(self, x: Tensor, base: nn.Module) -> Tensor | None:
        """The whole layer output (base + this adapter) from one fused op, or None.

        Units with a fused kernel return it when it applies; the layer then skips computing
        the base output on its own.
        """
        return None

    def restore_base(self, x: Tensor, out: Tensor, base: nn.Module) -> Tensor:
        """Output as if this adapter had never touched the base weights.

        Most adapters leave W0 alone and return ``out`` as is. Residual-style inits (PiSSA,
        CorDA, LoLDU) moved part of W0 into the adapter; while such an adapter is not
        applied (inactive or disabled) that part is added back so the layer computes W0.
        """
        return out

    def portable_state(self, base: nn.Module) -> tuple[dict[str, Tensor], dict]:
        """Tensors to save (local names) and notes for the config's ``saved_json_dict``
        (e.g. that the tensors were converted to another form, which the config must say)."""
        return {k: v.detach() for k, v in self.named_parameters()}, {}


# ----------------------------------------------------------------------------- the wrapper
class AdapterLayer(nn.Module):
    """Wraps an adapted module: base output, then each active, unmerged adapter in turn."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapters = nn.ModuleDict()
        self.configs: dict = {}
        self.active: list[str] = []
        self.merged: list[str] = []
        self.disabled = False
        # Set by AdapterBank while it routes a batch: (adapter names, one id per sample,
        # whether a batch may hold several consecutive rows per sample; see ids_for_batch).
        self.routing: tuple[list[str], Tensor, bool] | None = None

    def add(self, name: str, unit: AdapterUnit) -> None:
        if name in self.adapters:
            raise ValueError(f"adapter {name!r} already exists on this layer; pick a new name.")
        self.adapters[name] = unit

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        # Runs for every adapted layer on every call, so attributes are read once.
        adapters, base, active, merged = self.adapters, self.base_layer, self.active, self.merged
        if self.disabled:
            if merged:
                self.unmerge()
            out = base(x, *args, **kwargs)
            for unit in adapters.values():
                out = unit.restore_base(x, out, base)
            return out
        if self.routing is not None:
            names, ids, expand = self.routing
            out = base(x, *args, **kwargs)
            ids = ids_for_batch(ids, x.shape[0], expand)
            return routed_forward([adapters[n] for n in names], x, out, base, ids)
        if len(active) == 1 and len(adapters) == 1 and not merged and not args and not kwargs:
            unit = adapters[active[0]]
            fused = unit.fused_output(x, base)
            if fused is not None:
                return fused
            return unit(x, base(x), base)
        out = base(x, *args, **kwargs)
        for name, unit in adapters.items():
            if name not in active and name not in merged:
                out = unit.restore_base(x, out, base)
        for name in active:
            if name not in merged:
                out = adapters[name](x, out, base)
        return out

    def merge(self, names: list[str] | None = None) -> None:
        for name in names if names is not None else self.active:
            if name not in self.merged:
                self.adapters[name].merge(self.base_layer)
                self.merged.append(name)

    def unmerge(self) -> None:
        while self.merged:
            self.adapters[self.merged.pop()].unmerge(self.base_layer)

    def extra_repr(self) -> str:
        return f"active={self.active}, merged={self.merged}"
