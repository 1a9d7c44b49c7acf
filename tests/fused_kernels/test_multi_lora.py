"""Multi-adapter LoRA against a row-by-row autograd truth, mixed ranks and missing ids."""

from __future__ import annotations

import pytest
import torch

from fused_kernels.multi_lora import (
    make_segments,
    multi_lora_accumulate_,
    multi_lora_delta,
    multi_lora_reference,
)

from .backends import BACKENDS, DEVICE, assert_close_for

# rows, in, out, adapters, max rank, id pattern
CASES = [
    (1, 33, 17, 1, 1, "all"),
    (7, 33, 40, 4, 8, "mixed"),
    (129, 64, 33, 64, 8, "mixed"),
    (16, 48, 64, 16, 16, "each"),
    (12, 40, 24, 12, 4, "arange"),
    (7, 512, 512, 8, 64, "mixed"),
    (150, 33, 24, 2, 4, "all"),  # one adapter over 150 rows: several row blocks per group
]


def _stacks(n, fin, fout, r_max, dtype, seed=0):
    """Stacks of n adapters with ranks 1..r_max (cycled), zero-padded to r_max."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.zeros(n, r_max, fin)
    b = torch.zeros(n, fout, r_max)
    ranks = [1 + (k * 3) % r_max for k in range(n)]
    for k, r in enumerate(ranks):
        a[k, :r] = torch.randn(r, fin, generator=gen) * fin**-0.5
        b[k, :, :r] = torch.randn(fout, r, generator=gen) * 0.5
    scalings = torch.rand(n, generator=gen) + 0.5
    to = lambda t: t.to(DEVICE, dtype).requires_grad_()  # noqa: E731
    return to(a), to(b), scalings.to(DEVICE), ranks


def _ids(rows, n, pattern, seed=0):
    gen = torch.Generator().manual_seed(seed)
    if pattern == "all":
        return torch.zeros(rows, dtype=torch.long)
    if pattern == "arange":
        return torch.arange(rows) % n
    if pattern == "each":
        return torch.randperm(rows, generator=gen) % n
    ids = torch.randint(-1, n, (rows,), generator=gen)
    ids[0] = 0
    return ids


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:5])) + c[5])
def test_matches_row_by_row_truth(backend, dtype, case, force_backend) -> None:
    force_backend(backend)
    rows, fin, fout, n, r_max, pattern = case
    a, b, s, ranks = _stacks(n, fin, fout, r_max, dtype)
    ids = _ids(rows, n, pattern).to(DEVICE)
    x = torch.randn(rows, fin, generator=torch.Generator().manual_seed(1)).to(DEVICE, dtype)
    x.requires_grad_()
    grad = torch.randn(rows, fout, generator=torch.Generator().manual_seed(2)).to(DEVICE, dtype)

    out = multi_lora_delta(x, ids, a, b, s)
    out.backward(grad)
    got = [out.detach(), x.grad, a.grad, b.grad]

    leaves = [t.detach().float().requires_grad_() for t in (x, a, b)]
    ref = multi_lora_reference(leaves[0], ids, leaves[1], leaves[2], s.float())
    ref.backward(grad.float())
    expected = [ref.detach()] + [t.grad for t in leaves]
    for name, g, e in zip(("out", "dx", "dA", "dB"), got, expected, strict=True):
        assert g.dtype == dtype, name
        assert_close_for(dtype, g, e, name)
    # Padding beyond each adapter's rank never receives gradient.
    for k, r in enumerate(ranks):
        assert torch.count_nonzero(a.grad[k, r:]) == 0
        assert torch.count_nonzero(b.grad[k, :, r:]) == 0
    # Rows without an adapter get no update and no gradient through it.
    assert torch.count_nonzero(out[ids < 0]) == 0


def test_segments_use_the_whole_stack_without_a_gather() -> None:
    seg = make_segments(torch.tensor([2, 0, 1, 2, 0, 1]), 3)
    assert seg.whole_stack and seg.dense and seg.width == 2
    assert seg.order.tolist() == [1, 4, 2, 5, 0, 3]
    assert not seg.identity
    in_order = make_segments(torch.tensor([0, 0, 1, 1, 2, 2]), 3)
    assert in_order.identity and in_order.whole_stack
    partial = make_segments(torch.tensor([2, -1, 2, 0]), 4)
    assert not partial.whole_stack and not partial.dense
    assert partial.unique.tolist() == [0, 2] and partial.width == 2


@pytest.mark.parametrize("seed", range(40))
def test_segments_match_a_brute_force_grouping(seed: int) -> None:
    """The plan's fields against plain Python, on sorted, unsorted, partial and empty ids."""
    gen = torch.Generator().manual_seed(seed)
    n_adapters = int(torch.randint(1, 6, (1,), generator=gen))
    n_rows = int(torch.randint(0, 12, (1,), generator=gen))
    ids = torch.randint(-1 if seed % 3 else 0, n_adapters, (n_rows,), generator=gen)
    if seed % 2:
        ids = ids.sort().values
    seg = make_segments(ids, n_adapters)
    values = ids.tolist()
    order = sorted((m for m in range(n_rows) if values[m] >= 0), key=lambda m: values[m])
    present = sorted({v for v in values if v >= 0})
    counts = [values.count(k) for k in present]
    assert seg.order.tolist() == order
    assert seg.unique.tolist() == present and seg.counts.tolist() == counts
    assert seg.width == max(counts, default=0) and seg.n_rows == n_rows
    assert seg.dense == (bool(counts) and len(set(counts)) == 1)
    assert seg.whole_stack == (present == list(range(n_adapters)))
    assert seg.identity == (seg.dense and order == list(range(n_rows)))
    one = len(present) == 1 and len(order) == n_rows
    assert seg.single == (present[0] if one else None)
    if not seg.dense:
        starts = {k: order.index(next(m for m in order if values[m] == k)) for k in present}
        slots = [present.index(values[m]) * seg.width + i - starts[values[m]]
                 for i, m in enumerate(order)]  # fmt: skip
        assert seg.slots.tolist() == slots


def test_no_row_has_an_adapter() -> None:
    a, b, s, _ = _stacks(2, 8, 5, 2, torch.float32)
    x = torch.randn(3, 8, requires_grad=True)
    out = multi_lora_delta(x, torch.full((3,), -1), a, b, s)
    out.sum().backward()
    assert torch.count_nonzero(out) == 0 and torch.count_nonzero(a.grad) == 0


def test_bad_shapes() -> None:
    a, b, s, _ = _stacks(2, 8, 5, 2, torch.float32)
    with pytest.raises(ValueError, match="one adapter id per row"):
        multi_lora_delta(torch.randn(3, 8), torch.zeros(4, dtype=torch.long), a, b, s)
    with pytest.raises(ValueError, match="stacks do not match"):
        multi_lora_delta(torch.randn(3, 8), torch.zeros(3, dtype=torch.long), a, b[:1], s)
    with pytest.raises(ValueError, match=r"expected \(rows, 8\)"):
        multi_lora_delta(torch.randn(3, 7), torch.zeros(3, dtype=torch.long), a, b, s)
    with pytest.raises(ValueError, match="integer tensor"):
        multi_lora_delta(torch.randn(3, 8), torch.zeros(3), a, b, s)
    with pytest.raises(ValueError, match=r"share one dtype"):
        multi_lora_delta(torch.randn(3, 8).double(), torch.zeros(3, dtype=torch.long), a, b, s)


@pytest.mark.parametrize("bad", [2, 5, -2])
def test_adapter_ids_out_of_range_are_named(bad: int) -> None:
    a, b, s, _ = _stacks(2, 8, 5, 2, torch.float32)
    ids = torch.tensor([0, bad, 1])
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\].*got min"):
        multi_lora_delta(torch.randn(3, 8), ids, a, b, s)
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\]"):
        make_segments(ids, 2)


def test_serving_path_without_autograd_matches() -> None:
    a, b, s, _ = _stacks(6, 20, 12, 4, torch.float32)
    x = torch.randn(9, 20)
    ids = torch.tensor([0, 5, -1, 2, 2, 3, 1, 0, 4])
    expected = multi_lora_reference(x, ids, a.detach(), b.detach(), s)
    with torch.inference_mode():
        got = multi_lora_delta(x, ids, a, b, s)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if not isinstance(b, str)])
def test_triton_backend_runs_its_own_backward(backend, force_backend, monkeypatch) -> None:
    """Under the Triton backend forward and backward come from the kernels, never from bmm."""
    import fused_kernels.multi_lora_triton as triton_ops

    force_backend(backend)
    a, b, s, _ = _stacks(5, 24, 18, 4, torch.float32)
    x = torch.randn(11, 24, device=DEVICE, requires_grad=True)
    ids = torch.tensor([4, 0, -1, 4, 2, 2, 0, 1, -1, 4, 3]).to(DEVICE)
    used = []
    real = triton_ops.multi_lora_backward
    monkeypatch.setattr(triton_ops, "multi_lora_backward", lambda *a: used.append(1) or real(*a))
    monkeypatch.setattr(torch, "bmm", None)  # the reference path would fail on this
    multi_lora_delta(x, ids, a, b, s).sum().backward()
    assert used == [1] and x.grad is not None and a.grad is not None and b.grad is not None


@pytest.mark.parametrize("backend", [b for b in BACKENDS if not isinstance(b, str)])
def test_segment_outer_matches_brute_force(backend) -> None:
    """dW_k = (s_k) sum over adapter k's rows of left^T right; absent adapters stay zero."""
    from fused_kernels.multi_lora_triton import segment_outer

    gen = torch.Generator().manual_seed(3)
    ids = torch.tensor([3, -1, 0, 3, 3, 0, -1, 5, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3])
    left = torch.randn(len(ids), 19, generator=gen)
    right = torch.randn(len(ids), 37, generator=gen)
    scalings = torch.rand(6, generator=gen) + 0.5
    seg = make_segments(ids.to(DEVICE), 6)
    got = segment_outer(
        left.to(DEVICE), right.to(DEVICE), seg, 6, scalings.to(DEVICE), torch.float32
    )
    expected = torch.zeros(6, 19, 37)
    for m, k in enumerate(ids.tolist()):
        if k >= 0:
            expected[k] += scalings[k] * torch.outer(left[m], right[m])
    torch.testing.assert_close(got.cpu(), expected, atol=1e-4, rtol=1e-4)
    assert seg.counts.tolist() == [2, 16, 1]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("ids", "in_place"),
    [
        ([0, 1, 2, 3, 4, 5], "baddbmm_"),
        ([0, 0, 2, 2, 5, 5], "baddbmm_"),
        ([3, 3, 3, 3, 3, 3], "addmm_"),
        ([3, 0, -1, 5, 5, 1], None),
    ],
    ids=["one-per-adapter", "grouped-in-order", "one-adapter", "shuffled-with-none"],
)
def test_accumulate_in_place_matches_out_plus_delta(
    backend, ids, in_place, force_backend, monkeypatch
) -> None:
    force_backend(backend)
    adds = []
    for method in ("baddbmm_", "addmm_"):
        real = getattr(torch.Tensor, method)
        spy = lambda t, *a, _real=real, _name=method, **k: adds.append(_name) or _real(t, *a, **k)  # noqa: E731
        monkeypatch.setattr(torch.Tensor, method, spy)
    a, b, s, _ = _stacks(6, 20, 12, 4, torch.float32)
    # B laid out as (N, r, out) in memory, as AdapterBank stores it.
    b = b.detach().transpose(1, 2).contiguous().transpose(1, 2)
    x = torch.randn(6, 20, device=DEVICE)
    ids = torch.tensor(ids, device=DEVICE)
    base = torch.randn(6, 12, device=DEVICE)
    expected = base + multi_lora_reference(x, ids, a.detach(), b, s)
    with torch.no_grad():
        out = base.clone()
        returned = multi_lora_accumulate_(out, x, ids, a, b, s)
    assert returned is out
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # On the reference backend the update is added into out by the matmul itself when the
    # rows allow it (the Triton expand kernel always adds in place, with no torch matmul).
    assert adds == ([in_place] if backend == "reference" and in_place else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "ids", [[3, 0, -1, 3, 1, 2, 0], [2] * 7], ids=["mixed", "one-adapter"]
)  # fmt: skip
def test_accumulate_into_strided_views(backend, ids, force_backend) -> None:
    """``out`` a column slice of a wider buffer and ``x`` a transposed view: the kernels
    follow the strides and leave the rest of the buffer alone."""
    force_backend(backend)
    a, b, s, _ = _stacks(4, 20, 12, 4, torch.float32)
    ids = torch.tensor(ids, device=DEVICE)
    x = torch.randn(20, 7, device=DEVICE).T  # (7, 20), column-major
    buffer = torch.randn(7, 30, device=DEVICE)
    before = buffer.clone()
    out = buffer[:, 5:17]  # (7, 12), row stride 30
    expected = out + multi_lora_reference(x, ids, a.detach(), b.detach(), s)
    with torch.no_grad():
        multi_lora_accumulate_(out, x, ids, a, b, s)
    torch.testing.assert_close(buffer[:, 5:17], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(buffer[:, :5], before[:, :5], atol=0, rtol=0)
    torch.testing.assert_close(buffer[:, 17:], before[:, 17:], atol=0, rtol=0)


def test_accumulate_refuses_autograd_and_wrong_shapes() -> None:
    a, b, s, _ = _stacks(2, 8, 5, 2, torch.float32)
    x, ids = torch.randn(3, 8), torch.tensor([0, 1, 1])
    with pytest.raises(RuntimeError, match="under autograd use"):
        multi_lora_accumulate_(torch.zeros(3, 5), x, ids, a, b, s)
    with torch.no_grad(), pytest.raises(ValueError, match="out has shape"):
        multi_lora_accumulate_(torch.zeros(3, 4), x, ids, a, b, s)
