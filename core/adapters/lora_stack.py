"""The LoRA adapters of an AdapterBank, stored as stacks so one op serves a mixed batch.

All N adapters of a layer live in two parameters, A (N, r_max, in) and B (N, out, r_max);
adapter k uses A[k, :r_k] and B[k, :, :r_k] and the zero padding beyond r_k never gets a
gradient. Each sample's rows go through :func:`fused_kernels.multi_lora.multi_lora_delta` (when
serving, :func:`~fused_kernels.multi_lora.multi_lora_accumulate_`, which adds in place).

B keeps PEFT's (out, r) orientation per adapter, but its memory is laid out as
(N, r_max, out): the batched matmul reads B transposed, and with one row per adapter the
op is a pure read of the stacks, which runs faster from contiguous memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from fused_kernels.dispatch import backend_for
from fused_kernels.lora import lora_linear
from fused_kernels.multi_lora import (
    Segments,
    accumulate_grouped_,
    make_segments,
    multi_lora_accumulate_,
    multi_lora_delta,
)

from .layer import AdapterUnit, is_frozen, layer_dims, weight_matrix
from .routing import ids_for_batch
from .targeting import is_linear_like

if TYPE_CHECKING:
    from .lora import LoraConfig


def supports_lora_stack(module: nn.Module) -> bool:
    """Linear-like layers (the multi-adapter kernel's ``x @ A^T @ B^T`` form)."""
    return is_linear_like(module)


def can_share_stack(configs: list[LoraConfig]) -> bool:
    """Whether LoRA configs fit one stack: the same layers and one dropout for all."""
    first = configs[0]
    return all(
        c.target_modules == first.target_modules and c.dropout == first.dropout for c in configs
    )


class RoutePlan:
    """One batch's adapter ids, expanded to rows and grouped once for every layer.

    Every stacked layer of a model sees the same ids, and usually the same number of rows
    per sample, so the grouping (:func:`fused_kernels.multi_lora.make_segments`) and the check
    that the ids match the batch run once per batch and are shared: with dozens of adapted
    layers, per-layer bookkeeping is what a small serving batch would otherwise spend its
    time on.
    """

    def __init__(self, sample_ids: Tensor, n_adapters: int, expand: bool = False) -> None:
        self.sample_ids = sample_ids
        self.n_adapters = n_adapters
        self.expand = expand  # batches may hold several consecutive rows per sample
        self._by_shape: dict[tuple[int, int], tuple[Tensor, Segments]] = {}
        self._backend: str | None = None

    @property
    def backend(self) -> str:
        """The multi-adapter op's backend for this batch (its ids' device), chosen once."""
        if self._backend is None:
            self._backend = backend_for(self.sample_ids)
        return self._backend

    def for_rows(self, n_rows: int, batch_ids: Tensor | None = None) -> tuple[Tensor, Segments]:
        """(adapter id of each row, grouping) for a batch flattened to ``n_rows`` rows whose
        samples use ``batch_ids`` (the plan's ids when not given)."""
        ids = self.sample_ids if batch_ids is None else batch_ids
        rows = ids.repeat_interleave(n_rows // ids.shape[0] if ids.shape[0] else 0)
        return rows, make_segments(rows, self.n_adapters)

    def for_input(self, x: Tensor) -> tuple[Tensor, Segments]:
        """:meth:`for_rows` for a layer input ``x`` (batch first, features last), computed
        once per (batch, rows) and shared by every layer, after checking that the batch has
        one id per sample (or, when the plan expands, a whole number of rows per sample)."""
        key = (x.shape[0], x.numel() // x.shape[-1] if x.shape[-1] else 0)
        found = self._by_shape.get(key)
        if found is None:
            batch_ids = ids_for_batch(self.sample_ids, key[0], self.expand)
            found = self._by_shape[key] = self.for_rows(key[1], batch_ids)
        return found


class StackRouter:
    """The ids of the batch being routed, shared by every stacked layer of one bank.

    The bank sets the ids once per batch (:meth:`start`) instead of visiting each layer, and
    each layer asks for the plan on its own device; plans are built once per device.
    """

    def __init__(self, n_adapters: int) -> None:
        self.n_adapters = n_adapters
        self.sample_ids: Tensor | None = None
        self.expand = False
        self._plans: dict[torch.device, RoutePlan] = {}

    def start(self, sample_ids: Tensor, expand: bool = False) -> None:
        self.sample_ids = sample_ids
        self.expand = expand
        self._plans = {}

    def stop(self) -> None:
        self.sample_ids = None
        self._plans = {}

    def plan_for(self, device: torch.device) -> RoutePlan:
        """This batch's plan with its ids on ``device``; raises when no batch is routed."""
        if self.sample_ids is None:
            raise RuntimeError(
                "this layer holds an AdapterBank's LoRA stack: call the model through "
                "bank(..., adapter_ids=ids) or inside bank.route(ids)."
            )
        plan = self._plans.get(device)
        if plan is None:
            plan = RoutePlan(self.sample_ids.to(device), self.n_adapters, self.expand)
            self._plans[device] = plan
        return plan


class LoraStackUnit(AdapterUnit):
    """N LoRA adapters on one layer; the bank's ``router`` says which one serves each sample."""

    method = "lora"

    def __init__(
        self,
        base: nn.Module,
        module_name: str,
        configs: list[LoraConfig],
        router: StackRouter | None = None,
    ) -> None:
        super().__init__()
        out_f, in_f = layer_dims(base)
        ranks, scalings = [], []
        for config in configs:
            r, scaling = config.scaling_for(module_name)
            if r > min(out_f, in_f):
                raise ValueError(
                    f"LoRA rank r={r} is larger than layer {module_name!r} allows "
                    f"(out_features={out_f}, in_features={in_f})."
                )
            ranks.append(r)
            scalings.append(scaling)
        like = {"dtype": base.weight.dtype, "device": base.weight.device}
        r_max = max(ranks)
        self.ranks = ranks
        self.lora_A = nn.Parameter(torch.zeros(len(configs), r_max, in_f, **like))
        # (N, out, r) in shape, (N, r, out) in memory: see the module docstring.
        self.lora_B = nn.Parameter(torch.zeros(len(configs), r_max, out_f, **like).transpose(1, 2))
        self.register_buffer("scalings", torch.tensor(scalings, **like))
        self.scaling_values = scalings  # the same, as Python floats for the fused op
        with torch.no_grad():
            for k, (config, r) in enumerate(zip(configs, ranks, strict=True)):
                config.init_variant.init_a_(self.lora_A[k, :r], r)
        p = configs[0].dropout
        self.lora_dropout = nn.Dropout(p) if p > 0 else nn.Identity()
        self.router = router if router is not None else StackRouter(len(configs))

    def fused_output(self, x: Tensor, base: nn.Module) -> Tensor | None:
        """A batch that one adapter serves entirely runs as that adapter alone: the fused
        LoRA op on views of its factors (gradients reach only its slice of the stacks).

        Returns None, so the layer takes the stacked path, when the rows use several
        adapters or none, when dropout is active, or when the base layer is trainable.
        """
        k = self.router.plan_for(x.device).for_input(x)[1].single
        if k is None or self._dropout_active() or not is_frozen(base):
            return None
        r = self.ranks[k]
        a, b = self.lora_A[k, :r], self.lora_B[k, :, :r]
        bias = getattr(base, "bias", None)
        return lora_linear(x, weight_matrix(base), bias, a, b, self.scaling_values[k])

    def _dropout_active(self) -> bool:
        return self.training and isinstance(self.lora_dropout, nn.Dropout)

    def forward(self, x: Tensor, out: Tensor, base: nn.Module) -> Tensor:
        plan = self.router.plan_for(x.device)
        rows, segments = plan.for_input(x)
        if self._dropout_active():
            x = self.lora_dropout(x)
        flat = x.reshape(-1, x.shape[-1])
        stacks = (self.lora_A, self.lora_B, self.scalings)
        if torch.is_grad_enabled() or not out.is_contiguous():
            delta = multi_lora_delta(flat, rows, *stacks, segments)
            return out + delta.view(out.shape)
        # Serving: add into the fresh base output in place. The plan has grouped the rows and
        # chosen the backend for the whole batch, so the common case skips the op's checks.
        out2d = out.view(-1, out.shape[-1])
        dtype = stacks[0].dtype
        if x.dtype == dtype and out.dtype == dtype and not torch.is_autocast_enabled(x.device.type):
            accumulate_grouped_(out2d, flat, *stacks, segments, plan.backend)
        else:
            multi_lora_accumulate_(out2d, flat, rows, *stacks, segments)
        return out

    def adapter_tensors(self, k: int) -> dict[str, Tensor]:
        """Adapter k's own factors under PEFT's local names (views into the stacks)."""
        r = self.ranks[k]
        return {"lora_A.weight": self.lora_A[k, :r], "lora_B.weight": self.lora_B[k, :, :r]}

    def portable_state(self, base: nn.Module) -> tuple[dict[str, Tensor], dict]:
        raise RuntimeError("adapters held in an AdapterBank are saved with bank.save(path).")
