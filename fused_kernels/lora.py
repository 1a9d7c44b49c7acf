"""Fused LoRA linear (and its DoRA variant) as autograd Functions, with backend dispatch.

The op is ``y = x W^T + b + s * dropout(x) A^T B^T`` with W and b frozen. The reference
backend computes it with a few in-place BLAS calls (fewer kernels and temporaries than an
``nn.Linear`` plus two LoRA ``nn.Linear`` s); the Triton backend folds the low-rank term
into the epilogue of the base GEMM, in the forward pass and for dx in the backward pass.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .amp import autocast_dtype, autocast_off, cast_floating
from .dispatch import backend_for


def lora_linear_reference(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    lora_a: Tensor,
    lora_b: Tensor,
    scaling: float,
    dropout_mask: Tensor | None = None,
) -> Tensor:
    """The truth, in plain autograd: ``x W^T + b + s ((x * mask) A^T) B^T``."""
    dropped = x if dropout_mask is None else x * dropout_mask
    out = torch.nn.functional.linear(x, weight, bias)
    return out + scaling * torch.nn.functional.linear(
        torch.nn.functional.linear(dropped, lora_a), lora_b
    )


def _add_product(out: Tensor, left: Tensor, right: Tensor, alpha: float) -> Tensor:
    """``out + alpha * left @ right``: in place in plain autograd (no extra buffer), out of
    place under ``torch.func`` transforms, where vmap has no batching rule for ``addmm_``."""
    if torch._C._are_functorch_transforms_active():
        return torch.addmm(out, left, right, alpha=alpha)
    return out.addmm_(left, right, alpha=alpha)


class FusedLoraLinear(torch.autograd.Function):
    """LoRA linear with a hand-written backward; W and b are frozen (no gradient).

    Notation (rows flattened): x (M, in), m the dropout mask already divided by 1 - p
    (ones without dropout), x_d = x * m, h = x_d A^T (M, r), g = dL/dy (M, out).

    Forward:   y = x W^T + b + s h B^T

    Backward, by the chain rule on each product:
        dL/dB = s g^T h                     (out, r): y depends on B through s h B^T
        u     = g B                         (M, r):   the gradient reaching h, divided by s
        dL/dA = s u^T x_d                   (r, in):  h = x_d A^T
        dL/dx = g W + s (u A) * m           (M, in):  the base path plus the LoRA path,
                                                       which passes through the mask
    Only x, h and the mask are saved (x_d is x * m again in backward): the same activations
    an unfused implementation keeps. ``forward`` also returns h (non-differentiable) so that
    ``setup_context`` can save it, which keeps the op usable under ``torch.func`` (vmap of
    per-sample gradients, as EWC's Fisher uses).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        lora_a: Tensor,
        lora_b: Tensor,
        scaling: float,
        dropout_mask: Tensor | None,
        backend: str,
    ) -> tuple[Tensor, Tensor]:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        mask2 = None if dropout_mask is None else dropout_mask.reshape(x2.shape)
        dropped = x2 if mask2 is None else x2 * mask2
        h = dropped @ lora_a.T
        if backend == "triton":
            from .lora_triton import gemm_lowrank

            y = gemm_lowrank(x2, weight.T, h, lora_b.T, scaling, bias=bias)
        else:
            y = torch.addmm(bias, x2, weight.T) if bias is not None else x2 @ weight.T
            y = _add_product(y, h, lora_b.T, scaling)
        return y.reshape(*shape[:-1], weight.shape[0]), h

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, weight, _, lora_a, lora_b, scaling, dropout_mask, backend = inputs
        _, h = output
        ctx.mark_non_differentiable(h)
        ctx.save_for_backward(x, h, weight, lora_a, lora_b, dropout_mask)
        ctx.scaling = scaling
        ctx.backend = backend

    @staticmethod
    def backward(ctx, grad_out: Tensor, _grad_h: Tensor | None = None):
        x, h, weight, lora_a, lora_b, mask = ctx.saved_tensors
        s = ctx.scaling
        x2 = x.reshape(-1, x.shape[-1])
        mask = None if mask is None else mask.reshape(x2.shape)
        dropped = x2 if mask is None else x2 * mask
        g = grad_out.reshape(-1, weight.shape[0])
        u = g @ lora_b
        # (h^T g)^T, not g^T h: the same numbers, and CPU BLAS (MKL) runs the
        # (r, M) x (M, out) shape faster than (out, M) x (M, r).
        grad_b = (h.T @ g).mul_(s).T if ctx.needs_input_grad[4] else None
        grad_a = (u.T @ dropped).mul_(s) if ctx.needs_input_grad[3] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            if ctx.backend == "triton":
                from .lora_triton import gemm_lowrank

                grad_x = gemm_lowrank(g, weight, u, lora_a, s, mask=mask)
            elif mask is None:
                grad_x = _add_product(g @ weight, u, lora_a, s)
            else:
                grad_x = (g @ weight).add_((u @ lora_a).mul_(mask), alpha=s)
            grad_x = grad_x.reshape(x.shape)
        return grad_x, None, None, grad_a, grad_b, None, None, None


class EagerFusedLoraLinear(torch.autograd.Function):
    """:class:`FusedLoraLinear` in the classic ``forward(ctx, ...)`` form, for plain autograd.

    Same forward and backward. It exists for speed: ``Function.apply`` binds default
    arguments through ``inspect.signature`` on every call of a ``setup_context``-style
    Function (about 0.1 ms, paid by every LoRA layer in every step), and the classic form
    skips that. Only the ``setup_context`` form works under ``torch.func`` transforms, so
    :func:`lora_linear` uses this one outside them.
    """

    @staticmethod
    def forward(ctx, *inputs):
        output = FusedLoraLinear.forward(*inputs)
        FusedLoraLinear.setup_context(ctx, inputs, output)
        return output

    backward = FusedLoraLinear.backward


def _check_shapes(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    lora_a: Tensor,
    lora_b: Tensor,
    dropout_mask: Tensor | None,
) -> None:
    """Name the argument that does not fit, instead of letting a matmul fail deep inside."""
    out_f, in_f = weight.shape
    rank = lora_a.shape[0]
    if (
        x.shape[-1] == in_f
        and lora_a.shape == (rank, in_f)
        and lora_b.shape == (out_f, rank)
        and (bias is None or bias.shape == (out_f,))
        and (dropout_mask is None or dropout_mask.shape == x.shape)
    ):
        return  # the common case, checked without building the report below
    expected = {
        "x": (x.shape[-1:], (in_f,), "(..., in_features)"),
        "lora_a": (tuple(lora_a.shape), (rank, in_f), "(r, in_features)"),
        "lora_b": (tuple(lora_b.shape), (out_f, rank), "(out_features, r)"),
    }
    if bias is not None:
        expected["bias"] = (tuple(bias.shape), (out_f,), "(out_features,)")
    if dropout_mask is not None:
        expected["dropout_mask"] = (tuple(dropout_mask.shape), tuple(x.shape), "x's shape")
    for name, (got, want, layout) in expected.items():
        if tuple(got) != want:
            raise ValueError(
                f"lora_linear: {name} has shape {tuple(got)} where {want} was expected, "
                f"{layout} for weight {tuple(weight.shape)} and rank {rank}; pass tensors "
                "in PEFT's orientation (lora_A.weight, lora_B.weight)."
            )


def lora_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    lora_a: Tensor,
    lora_b: Tensor,
    scaling: float,
    dropout_mask: Tensor | None = None,
) -> Tensor:
    """``x W^T + b + s * ((x * dropout_mask) A^T) B^T`` with W, b frozen.

    Shapes: x (..., in), weight (out, in), bias (out,), lora_a (r, in), lora_b (out, r),
    dropout_mask like x (already divided by 1 - p) or None. Dispatches to Triton on CUDA
    and to the PyTorch reference elsewhere (see :mod:`fused_kernels.dispatch`). Under autocast the
    products run in the autocast dtype, gradients come back in each input's own dtype
    (see :mod:`fused_kernels.amp`).
    """
    if weight.requires_grad or (bias is not None and bias.requires_grad):
        raise ValueError(
            "lora_linear treats the base weight and bias as frozen, but one of them requires "
            "grad; freeze them (requires_grad_(False)) or use the unfused path."
        )
    _check_shapes(x, weight, bias, lora_a, lora_b, dropout_mask)
    dtype = autocast_dtype(x)
    if dtype is not None:
        cast = cast_floating(dtype, x, weight, bias, lora_a, lora_b, dropout_mask)
        with autocast_off(x):
            return lora_linear(*cast[:5], scaling, cast[5])
    if len({x.dtype, weight.dtype, lora_a.dtype, lora_b.dtype}) > 1:
        raise ValueError(
            f"lora_linear: x, weight, lora_a and lora_b must share one dtype, got x {x.dtype}, "
            f"weight {weight.dtype}, lora_a {lora_a.dtype}, lora_b {lora_b.dtype}; cast the "
            "adapter to the base layer's dtype, or run under torch.autocast."
        )
    # torch.func transforms (vmap of per-sample gradients, as EWC's Fisher uses) need the
    # setup_context form, and the reference backend: a Triton kernel cannot read the
    # batched tensors vmap passes through the op.
    if torch._C._are_functorch_transforms_active():
        function, backend = FusedLoraLinear, "reference"
    else:
        function, backend = EagerFusedLoraLinear, backend_for(x)
        if not torch.is_grad_enabled() or not (
            x.requires_grad or lora_a.requires_grad or lora_b.requires_grad
        ):  # serving: the same forward without the autograd Function's per-call cost
            return FusedLoraLinear.forward(
                x, weight, bias, lora_a, lora_b, scaling, dropout_mask, backend
            )[0]
    out, _ = function.apply(x, weight, bias, lora_a, lora_b, scaling, dropout_mask, backend)
    return out


def dora_weight_norm(weight: Tensor, lora_a: Tensor, lora_b: Tensor, scaling: float) -> Tensor:
    """Row norms of W + s B A without forming the (out, in) sum.

    ||w_i + s b_i A||^2 = ||w_i||^2 + 2 s b_i . (A w_i) + s^2 b_i (A A^T) b_i^T, which costs
    O(out * in * r) and (out, r) memory instead of an (out, in) temporary.
    """
    w = weight.float()
    a, b = lora_a.float(), lora_b.float()
    base = w.pow(2).sum(dim=1)
    cross = (b * (w @ a.T)).sum(dim=1)
    low = ((b @ (a @ a.T)) * b).sum(dim=1)
    return (base + 2 * scaling * cross + scaling**2 * low).clamp_min(0).sqrt().to(weight.dtype)


def dora_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    lora_a: Tensor,
    lora_b: Tensor,
    scaling: float,
    magnitude: Tensor,
) -> Tensor:
    """DoRA: ``b + (m / ||W + s B A||_row) * (x W^T + s x A^T B^T)``, norm detached.

    The LoRA part goes through :func:`lora_linear`; the per-output rescale is a cheap
    elementwise op on top, and the norm comes from :func:`dora_weight_norm`.
    """
    norm = dora_weight_norm(weight, lora_a.detach(), lora_b.detach(), scaling).detach()
    z = lora_linear(x, weight, None, lora_a, lora_b, scaling)
    y = z * (magnitude / norm)
    return y if bias is None else y + bias
