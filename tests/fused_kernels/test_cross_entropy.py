"""Fused linear cross-entropy against unfused ``F.cross_entropy(h @ W^T + b)``."""

from __future__ import annotations

import pytest
import torch

from fused_kernels.cross_entropy import (
    default_chunk_size,
    linear_cross_entropy,
    linear_cross_entropy_reference,
)

from .backends import BACKENDS, DEVICE, assert_all_close_for

CASES = [
    # rows, hidden, vocab, chunk
    (1, 33, 50, None),
    (7, 33, 129, 3),
    (129, 64, 257, 16),
    (40, 512, 1000, None),
]


def _inputs(rows, hidden, vocab, dtype, with_bias, seed=0):
    gen = torch.Generator().manual_seed(seed)
    h = (torch.randn(rows, hidden, generator=gen)).to(DEVICE, dtype).requires_grad_()
    w = (torch.randn(vocab, hidden, generator=gen) * hidden**-0.5).to(DEVICE, dtype)
    w.requires_grad_()
    b = (
        (torch.randn(vocab, generator=gen) * 0.1).to(DEVICE, dtype).requires_grad_()
        if with_bias
        else None
    )
    labels = torch.randint(0, vocab, (rows,), generator=gen)
    labels[1::3] = -100  # some ignored rows (row 0 always counts)
    return h, w, b, labels.to(DEVICE)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:3])))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_matches_unfused(backend, dtype, case, reduction, smoothing, force_backend) -> None:
    force_backend(backend)
    rows, hidden, vocab, chunk = case
    with_bias = rows % 2 == 1
    h, w, b, labels = _inputs(rows, hidden, vocab, dtype, with_bias)
    loss = linear_cross_entropy(
        h, w, labels, b, label_smoothing=smoothing, reduction=reduction, chunk_size=chunk
    )
    upstream = torch.rand(loss.shape, generator=torch.Generator().manual_seed(3)).to(DEVICE) + 0.5
    (loss.float() * upstream).sum().backward()
    got = [loss.detach(), h.grad, w.grad] + ([b.grad] if b is not None else [])

    leaves = [t.detach().float().requires_grad_() for t in (h, w)]
    bias = b.detach().float().requires_grad_() if b is not None else None
    ref = linear_cross_entropy_reference(
        *leaves, labels, bias, label_smoothing=smoothing, reduction=reduction
    )
    (ref * upstream).sum().backward()
    expected = [ref.detach(), leaves[0].grad, leaves[1].grad] + (
        [bias.grad] if b is not None else []
    )
    assert_all_close_for(dtype, ("loss", "dh", "dW", "db"), got, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_rows_ignored_gives_nan_mean_and_zero_grads(backend, force_backend) -> None:
    force_backend(backend)
    h, w, _, _ = _inputs(4, 16, 32, torch.float32, False)
    labels = torch.full((4,), -100, device=DEVICE)
    loss = linear_cross_entropy(h, w, labels)
    ref = linear_cross_entropy_reference(h, w, labels)
    assert torch.isnan(loss) and torch.isnan(ref)
    linear_cross_entropy(h, w, labels, reduction="sum").backward()
    assert torch.count_nonzero(h.grad) == 0


def test_batched_input_shapes_and_no_grad_path() -> None:
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(2, 5, 16, generator=gen)
    w = torch.randn(40, 16, generator=gen)
    labels = torch.randint(0, 40, (2, 5), generator=gen)
    with torch.no_grad():
        per_token = linear_cross_entropy(h, w, labels, reduction="none")
    assert per_token.shape == (2, 5)
    torch.testing.assert_close(
        per_token, linear_cross_entropy_reference(h, w, labels, reduction="none")
    )


def test_bad_inputs() -> None:
    h, w = torch.randn(4, 8), torch.randn(10, 8)
    with pytest.raises(ValueError, match="reduction='avg'"):
        linear_cross_entropy(h, w, torch.zeros(4, dtype=torch.long), reduction="avg")
    with pytest.raises(ValueError, match="labels need one entry per row"):
        linear_cross_entropy(h, w, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="does not match weight"):
        linear_cross_entropy(h, torch.randn(10, 9), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="class indices"):
        linear_cross_entropy(h, w, torch.zeros(4))
    with pytest.raises(ValueError, match="share one dtype"):
        linear_cross_entropy(h.double(), w, torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("backend", BACKENDS)
def test_labels_outside_the_vocabulary_are_named(backend, force_backend) -> None:
    force_backend(backend)
    h, w = torch.randn(4, 8, device=DEVICE), torch.randn(10, 8, device=DEVICE)
    for bad in (10, -1):
        labels = torch.tensor([1, bad, -100, 3], device=DEVICE)
        with pytest.raises(ValueError, match=r"must lie in \[0, 9\].*ignore_index=-100"):
            linear_cross_entropy(h, w, labels)
    # ignored rows may hold anything equal to ignore_index, even outside the vocabulary
    labels = torch.tensor([1, -7, -7, 3], device=DEVICE)
    torch.testing.assert_close(
        linear_cross_entropy(h, w, labels, ignore_index=-7),
        linear_cross_entropy_reference(h, w, labels, ignore_index=-7),
    )


def test_default_chunk_keeps_a_chunk_of_logits_near_the_hidden_size() -> None:
    chunk = default_chunk_size(4096, 512, 32000)
    assert 4096 * 512 <= chunk * 32000 <= 16 * 4096 * 512
    assert default_chunk_size(3, 8, 10_000) == 1
    assert default_chunk_size(10, 512, 100) == 10
