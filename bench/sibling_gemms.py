"""Sibling projections as one GEMM: what fusing q/k/v (and gate/up) could save a LoRA step.

    python -m bench.sibling_gemms [--rows 1024] [--repeats 5] [--csv PATH]

q, k and v read the same input, and so do gate and up; an implementation may concatenate
their frozen weights and run one wider GEMM forward (x W^T) and one for the input gradient
(g W) instead of one per projection, as fused-QKV LoRA kernels do. This times exactly those
frozen products at SmolLM2-135M's shapes (hidden 576; q 576, k and v 192 wide; gate and up
1536 wide) for ``--rows`` tokens (1024: the LoRA step's batch of 4 x 256), separate against
concatenated, and scales the saving to the 30 blocks of one training step. It answers
whether that fusion could close the gap between our LoRA step and the 0.9 x PEFT target
(``docs/benchmarks.md``), without building it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from .common import report

HIDDEN, BLOCKS = 576, 30
GROUPS = {"q/k/v": [576, 192, 192], "gate/up": [1536, 1536]}


def time_ms(fn, repeats: int, inner: int = 10) -> float:
    """Median over ``repeats`` rounds of the mean time of ``inner`` calls, in ms."""
    for _ in range(2):
        fn()
    rounds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        rounds.append((time.perf_counter() - start) / inner)
    return statistics.median(rounds) * 1e3


def group_paths(rows: int, widths: list[int], hidden: int = HIDDEN, seed: int = 0):
    """(separate, fused) closures: forward and input-gradient products of one group."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, hidden, generator=gen)
    weights = [torch.randn(w, hidden, generator=gen) for w in widths]
    grads = [torch.randn(rows, w, generator=gen) for w in widths]
    weight_cat, grad_cat = torch.cat(weights), torch.cat(grads, dim=1)

    def separate() -> tuple[list[torch.Tensor], torch.Tensor]:
        outs = [x @ w.T for w in weights]
        grad_x = grads[0] @ weights[0]
        for g, w in zip(grads[1:], weights[1:], strict=True):
            grad_x.addmm_(g, w)
        return outs, grad_x

    def fused() -> tuple[list[torch.Tensor], torch.Tensor]:
        out = x @ weight_cat.T
        return list(out.split(widths, dim=1)), grad_cat @ weight_cat

    return separate, fused


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1024, help="tokens per step (4 x 256)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--csv", default="bench/results/sibling_gemms.csv")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    rows = []
    for name, widths in GROUPS.items():
        separate, fused = group_paths(args.rows, widths)
        t_sep, t_fused = time_ms(separate, args.repeats), time_ms(fused, args.repeats)
        rows.append(
            {
                "group": name,
                "separate_ms": t_sep,
                "fused_ms": t_fused,
                "fused_vs_separate": t_fused / t_sep,
                "saved_per_step_ms": (t_sep - t_fused) * BLOCKS,
            }
        )
    report(
        f"Frozen sibling products, separate vs one GEMM (SmolLM2 shapes, {args.rows} rows, "
        "forward + input gradient; saving scaled to 30 blocks)",
        rows,
        args.csv,
    )
    return rows


if __name__ == "__main__":
    main()
