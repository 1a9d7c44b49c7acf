"""GPU sweeps of the Triton kernels against the PyTorch reference (CUDA only).

    python -m bench.gpu_kernels [--csv bench/results/gpu_kernels.csv]

Fused LoRA forward+backward (hidden 4096, r 16, bf16, 8192 tokens) against the plain
PyTorch LoRA, the multi-adapter forward (64 adapters) against the base GEMM alone, and the
multi-adapter forward+backward on the Triton kernels against the grouped-bmm reference.
Without CUDA it says so and exits with status 2: no figure is estimated.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from .common import median_seconds, report


def _cuda_time(fn, repeats: int = 20, warmup: int = 5) -> float:
    """Median milliseconds of ``fn``: CUDA events on a GPU, the wall clock elsewhere (the
    CPU path exists so the sweep's code can be smoke-tested under the Triton interpreter)."""
    if not torch.cuda.is_available():
        return median_seconds(fn, repeats, warmup) * 1e3
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


@contextmanager
def kernel_backend(name: str) -> Iterator[None]:
    """Force ``FINETUNERS_KERNELS`` to ``name`` inside the block, then restore it."""
    previous = os.environ.get("FINETUNERS_KERNELS")
    os.environ["FINETUNERS_KERNELS"] = name
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("FINETUNERS_KERNELS", None)
        else:
            os.environ["FINETUNERS_KERNELS"] = previous


def _row(
    op: str, tokens: int, hidden: int, rank: int, ours_ms: float, peer_ms: float, peer: str
) -> dict:
    """One row of the sweep: our kernel's time against its peer's, on bf16 ``tokens`` x
    ``hidden`` inputs with LoRA rank ``rank``; ``speedup`` is peer time / our time."""
    return {
        "op": op,
        "shape": f"{tokens}x{hidden} r{rank} bf16",
        "ours_ms": ours_ms,
        "peer_ms": peer_ms,
        "peer": peer,
        "speedup": peer_ms / ours_ms,
    }


def fused_lora_rows(hidden: int, rank: int, tokens: int, dev: str = "cuda") -> list[dict]:
    from fused_kernels.lora import lora_linear, lora_linear_reference

    dt = torch.bfloat16
    x = torch.randn(tokens, hidden, device=dev, dtype=dt, requires_grad=True)
    w = torch.randn(hidden, hidden, device=dev, dtype=dt) * hidden**-0.5
    a = (torch.randn(rank, hidden, device=dev, dtype=dt) * 0.01).requires_grad_()
    b = (torch.randn(hidden, rank, device=dev, dtype=dt) * 0.01).requires_grad_()
    g = torch.randn(tokens, hidden, device=dev, dtype=dt)

    def run(fn: Callable[..., torch.Tensor]) -> Callable[[], None]:
        def step() -> None:
            x.grad = a.grad = b.grad = None
            fn(x, w, None, a, b, 2.0).backward(g)

        return step

    with kernel_backend("triton"):
        fused = _cuda_time(run(lora_linear))
        reference = _cuda_time(run(lora_linear_reference))
    return [_row("fused LoRA fwd+bwd", tokens, hidden, rank, fused, reference, "PyTorch LoRA")]


def multi_adapter_rows(
    hidden: int, rank: int, adapters: int, tokens: int, dev: str = "cuda"
) -> list[dict]:
    """Serving as AdapterBank does it: the base GEMM, then the update added into its output
    in place; rows are grouped by adapter once per batch (every layer shares it), so the
    grouping is made outside the timed call."""
    from fused_kernels.multi_lora import make_segments, multi_lora_accumulate_

    dt = torch.bfloat16
    x = torch.randn(tokens, hidden, device=dev, dtype=dt)
    w = torch.randn(hidden, hidden, device=dev, dtype=dt)
    sa = torch.randn(adapters, rank, hidden, device=dev, dtype=dt) * 0.01
    sb = torch.randn(adapters, hidden, rank, device=dev, dtype=dt) * 0.01
    s = torch.ones(adapters, device=dev)
    ids = torch.arange(tokens, device=dev) % adapters
    seg = make_segments(ids, adapters)
    with kernel_backend("triton"), torch.inference_mode():
        base = _cuda_time(lambda: x @ w.T)
        both = _cuda_time(lambda: multi_lora_accumulate_(x @ w.T, x, ids, sa, sb, s, seg))
    op = f"multi-adapter fwd ({adapters} adapters)"
    return [_row(op, tokens, hidden, rank, both, base, "base GEMM alone")]


def multi_adapter_train_rows(
    hidden: int, rank: int, adapters: int, tokens: int, dev: str = "cuda"
) -> list[dict]:
    """Multi-adapter forward+backward: the Triton SGMV kernels against the bmm reference."""
    from fused_kernels.multi_lora import multi_lora_delta

    dt = torch.bfloat16
    x = torch.randn(tokens, hidden, device=dev, dtype=dt, requires_grad=True)
    sa = (torch.randn(adapters, rank, hidden, device=dev, dtype=dt) * 0.01).requires_grad_()
    sb = (torch.randn(adapters, hidden, rank, device=dev, dtype=dt) * 0.01).requires_grad_()
    s = torch.ones(adapters, device=dev)
    ids = torch.arange(tokens, device=dev) % adapters
    g = torch.randn(tokens, hidden, device=dev, dtype=dt)

    def step() -> None:
        x.grad = sa.grad = sb.grad = None
        multi_lora_delta(x, ids, sa, sb, s).backward(g)

    times = {}
    for backend in ("triton", "reference"):
        with kernel_backend(backend):
            times[backend] = _cuda_time(step)
    op = f"multi-adapter fwd+bwd ({adapters} adapters)"
    return [
        _row(op, tokens, hidden, rank, times["triton"], times["reference"], "grouped bmm reference")
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", default="bench/results/gpu_kernels.csv")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench.gpu_kernels: no CUDA device here; nothing measured.", file=sys.stderr)
        sys.exit(2)
    # The acceptance shape first (hidden 4096, r 16, 8192 tokens), then a sweep around it.
    rows = []
    for hidden, rank, tokens in ((4096, 16, 8192), (4096, 64, 8192), (1024, 16, 8192),
                                 (4096, 16, 1024)):  # fmt: skip
        rows += fused_lora_rows(hidden, rank, tokens)
    for tokens in (64, 1024, 8192):
        rows += multi_adapter_rows(4096, 16, 64, tokens)
    rows += multi_adapter_train_rows(4096, 16, 64, 8192)
    report(f"Triton kernels on {torch.cuda.get_device_name()}", rows, args.csv)


if __name__ == "__main__":
    main()
