"""Fused LoRA linear against the plain-autograd truth: forward and every gradient."""

from __future__ import annotations

import pytest
import torch

from fused_kernels.lora import dora_linear, dora_weight_norm, lora_linear, lora_linear_reference

from .backends import BACKENDS, DEVICE, assert_all_close_for, assert_close_for

# (rows, in_features, out_features, rank): odd sizes on purpose.
SHAPES = [
    (1, 33, 17, 1), (7, 33, 40, 8), (129, 64, 33, 16), (5, 48, 96, 64), (7, 512, 512, 16),
]  # fmt: skip


def _inputs(rows, fin, fout, rank, dtype, dropout, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0, grad=False):
        t = (torch.randn(*shape, generator=gen) * scale).to(DEVICE, dtype)
        return t.requires_grad_(grad)

    x = rand(2, rows, fin, grad=True)
    weight, bias = rand(fout, fin, scale=fin**-0.5), rand(fout)
    lora_a = rand(rank, fin, scale=fin**-0.5, grad=True)
    lora_b = rand(fout, rank, scale=0.5, grad=True)
    mask = None
    if dropout:
        keep = torch.rand(2, rows, fin, generator=gen) > 0.3
        mask = (keep.float() / 0.7).to(DEVICE, dtype)
    return x, weight, bias, lora_a, lora_b, mask


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dropout", [False, True], ids=["nodrop", "drop"])
def test_lora_linear_matches_reference(backend, dtype, shape, dropout, force_backend) -> None:
    force_backend(backend)
    x, w, b, a, bb, mask = _inputs(*shape, dtype, dropout)
    grad = torch.randn(2, shape[0], shape[2], generator=torch.Generator().manual_seed(9))
    grad = (grad * shape[2] ** -0.5).to(DEVICE, dtype)  # O(1) gradients, as a mean loss gives

    out = lora_linear(x, w, b, a, bb, 0.75, mask)
    out.backward(grad)
    got = (out.detach(), x.grad, a.grad, bb.grad)

    # Truth in fp32 from the same (rounded) inputs.
    ref_in = [t.detach().float().requires_grad_(t.requires_grad) for t in (x, w, b, a, bb)]
    ref = lora_linear_reference(*ref_in, 0.75, None if mask is None else mask.float())
    ref.backward(grad.float())
    expected = (ref.detach(), ref_in[0].grad, ref_in[3].grad, ref_in[4].grad)
    assert_all_close_for(dtype, ("out", "dx", "dA", "dB"), got, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lora_linear_without_bias_and_with_frozen_check(backend, force_backend) -> None:
    force_backend(backend)
    x, w, _, a, bb, _ = _inputs(3, 33, 20, 4, torch.float32, False)
    torch.testing.assert_close(
        lora_linear(x, w, None, a, bb, 2.0), lora_linear_reference(x, w, None, a, bb, 2.0)
    )
    with pytest.raises(ValueError, match="frozen"):
        lora_linear(x, w.clone().requires_grad_(True), None, a, bb, 2.0)


def test_dora_weight_norm_matches_explicit_sum() -> None:
    gen = torch.Generator().manual_seed(0)
    w, a, b = (torch.randn(*s, generator=gen) for s in [(40, 33), (8, 33), (40, 8)])
    explicit = (w + 0.5 * b @ a).norm(dim=1)
    torch.testing.assert_close(dora_weight_norm(w, a, b, 0.5), explicit, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dora_linear_matches_definition(backend, force_backend) -> None:
    force_backend(backend)
    x, w, b, a, bb, _ = _inputs(7, 33, 40, 8, torch.float32, False)
    magnitude = (w.norm(dim=1) * 1.3).requires_grad_(True)
    out = dora_linear(x, w, b, a, bb, 0.5, magnitude)
    out.sum().backward()
    got = (out.detach(), x.grad.clone(), a.grad.clone(), bb.grad.clone(), magnitude.grad.clone())
    for t in (x, a, bb, magnitude):
        t.grad = None
    combined = w + 0.5 * bb @ a
    norm = combined.norm(dim=1).detach()
    ref = torch.nn.functional.linear(x, combined) * (magnitude / norm) + b
    ref.sum().backward()
    expected = (ref.detach(), x.grad, a.grad, bb.grad, magnitude.grad)
    for name, g, e in zip(("out", "dx", "dA", "dB", "dm"), got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_sample_gradients_with_torch_func(backend, force_backend) -> None:
    """vmap over per-sample gradients (EWC's Fisher) works through the fused op, also where
    Triton is the backend: under the transform the op falls back to the reference, since a
    Triton kernel cannot read vmap's batched tensors."""
    force_backend(backend)
    x, w, b, a, bb, _ = _inputs(5, 12, 7, 3, torch.float32, False)
    a, bb = a.detach(), bb.detach()
    samples = x.detach()[0]  # 5 samples of 12 features

    def loss(params, sample):
        return lora_linear(sample[None], w, b, params[0], params[1], 0.5).pow(2).sum()

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))((a, bb), samples)
    for i in range(samples.shape[0]):
        expected = torch.func.grad(loss)((a, bb), samples[i])
        torch.testing.assert_close(per_sample[0][i], expected[0])
        torch.testing.assert_close(per_sample[1][i], expected[1])


def test_plain_autograd_uses_the_classic_form_and_transforms_the_vmappable_one() -> None:
    """Outside torch.func the op skips setup_context's per-call signature binding."""
    x, w, b, a, bb, _ = _inputs(4, 12, 7, 3, torch.float32, False)
    out = lora_linear(x, w, b, a, bb, 2.0)
    assert type(out.grad_fn).__name__ == "EagerFusedLoraLinearBackward"
    seen = []

    def probe(weights, sample):
        result = lora_linear(sample, w, b, *weights, 2.0)
        seen.append(torch._C._are_functorch_transforms_active())
        return result.sum()

    torch.func.grad(probe)((a.detach(), bb.detach()), x.detach()[0])
    assert seen == [True]


@pytest.mark.parametrize(
    ("name", "change"),
    [
        ("x", {"x": torch.randn(3, 5)}),
        ("lora_a", {"lora_a": torch.randn(2, 5)}),
        ("lora_b", {"lora_b": torch.randn(7, 2)}),
        ("bias", {"bias": torch.randn(7)}),
        ("dropout_mask", {"dropout_mask": torch.ones(3, 5)}),
    ],
)
def test_wrong_shapes_name_the_argument(name: str, change: dict) -> None:
    args = {
        "x": torch.randn(3, 6), "weight": torch.randn(8, 6), "bias": torch.randn(8),
        "lora_a": torch.randn(2, 6), "lora_b": torch.randn(8, 2), "scaling": 1.0,
        "dropout_mask": None,
    }  # fmt: skip
    with pytest.raises(ValueError, match=rf"lora_linear: {name} has shape"):
        lora_linear(**{**args, **change})


def test_mixed_dtypes_outside_autocast_are_refused() -> None:
    x, w, a, b = torch.randn(3, 6), torch.randn(8, 6), torch.randn(2, 6), torch.randn(8, 2)
    with pytest.raises(ValueError, match=r"share one dtype.*autocast"):
        lora_linear(x.bfloat16(), w, None, a, b, 1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gpu_autotuner_tries_only_the_tiles_that_fit(dtype) -> None:
    """The autotuner's prune hook keeps the candidates whose pipelined tiles fit the shared
    memory budget at the operands' element size (computed here by hand)."""
    pytest.importorskip("triton")
    from fused_kernels.lora_triton import (
        GPU_CONFIGS,
        SHARED_BUDGET,
        _gemm_lowrank_tuned,
        _prune,
    )

    size = torch.empty(0, dtype=dtype).element_size()
    kept = _prune(_gemm_lowrank_tuned.configs, {"x_ptr": torch.empty(1, dtype=dtype)})
    shapes = [
        (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps, c.num_stages)
        for c in kept
    ]
    expected = [c for c in GPU_CONFIGS if c[4] * (c[0] + c[1]) * c[2] * size <= SHARED_BUDGET]
    assert shapes == expected and shapes
    assert len(shapes) == (len(GPU_CONFIGS) if size == 2 else 3)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if not isinstance(b, str)])
def test_every_gpu_tile_shape_computes_the_same_product(backend) -> None:
    """Each autotune candidate's tiles and the GPU's grouped program order, run on an odd
    shape smaller than most tiles (masked edges, fewer row tiles than a group) and on a rank
    that takes two passes of the low-rank loop."""
    from fused_kernels.lora_triton import GPU_CONFIGS, GROUP_M, gemm_lowrank

    gen = torch.Generator().manual_seed(5)
    m, k, n, rank = 300, 70, 130, 70
    x, wt = torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)
    left, right = torch.randn(m, rank, generator=gen), torch.randn(rank, n, generator=gen)
    bias, mask = torch.randn(n, generator=gen), torch.rand(m, n, generator=gen)
    expected = x @ wt + 0.5 * (left @ right) * mask + bias
    for bm, bn, bk, _, _ in GPU_CONFIGS:
        blocks = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": GROUP_M}
        tensors = [t.to(DEVICE) for t in (x, wt, left, right)]
        got = gemm_lowrank(*tensors, 0.5, bias.to(DEVICE), mask.to(DEVICE), blocks=blocks)
        torch.testing.assert_close(got.cpu(), expected, atol=1e-3, rtol=1e-4, msg=str(blocks))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "frozen"])
def test_serving_skips_the_autograd_function(backend, mode, force_backend, monkeypatch) -> None:
    """Without gradients to compute, the op runs its forward directly (no Function.apply,
    whose per-call cost is a fifth of a small layer's time) and gives the same output."""
    from fused_kernels import lora as kernel_module

    force_backend(backend)
    x, w, b, a, bb, mask = _inputs(7, 33, 40, 8, torch.float32, True)
    expected = lora_linear(x, w, b, a, bb, 0.5, mask).detach()

    def refuse(*_args):
        raise AssertionError("Function.apply ran on the serving path")

    monkeypatch.setattr(kernel_module.EagerFusedLoraLinear, "apply", refuse)
    if mode == "frozen":
        got = lora_linear(x.detach(), w, b, a.detach(), bb.detach(), 0.5, mask)
    else:
        with getattr(torch, mode)():
            got = lora_linear(x, w, b, a, bb, 0.5, mask)
    assert not got.requires_grad
    assert_close_for(torch.float32, got, expected, "serving output")
    with pytest.raises(AssertionError, match=r"Function\.apply ran"):
        lora_linear(x, w, b, a, bb, 0.5, mask)  # gradients needed: the Function runs
