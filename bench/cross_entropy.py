"""Fused linear cross-entropy vs ``F.cross_entropy(h @ W.T)``: memory, time, agreement.

    python -m bench.cross_entropy [--hidden 512] [--vocab 32000] [--tokens 4096]

Each path runs forward + backward in a fresh process and reports the peak resident memory
it added (peak RSS during the step minus RSS before it); times come from one process,
measured in turns. The two paths' losses and gradients are compared in the same run.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import Tensor

from fused_kernels.cross_entropy import linear_cross_entropy

from .common import (
    current_rss_mb,
    interleaved_medians,
    peak_rss_mb,
    report,
    reset_peak_rss,
    run_worker,
)


def make_inputs(
    hidden: int, vocab: int, tokens: int, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Hidden states and vocabulary weights (both requiring grad) and labels, seeded."""
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(tokens, hidden, generator=gen).requires_grad_()
    w = (torch.randn(vocab, hidden, generator=gen) * hidden**-0.5).requires_grad_()
    labels = torch.randint(0, vocab, (tokens,), generator=gen)
    return h, w, labels


def loss_of(path: str, h: Tensor, w: Tensor, labels: Tensor) -> Tensor:
    """The mean loss of ``h @ w.T`` against ``labels``: fused, or logits then cross-entropy."""
    if path == "fused":
        return linear_cross_entropy(h, w, labels)
    return torch.nn.functional.cross_entropy(h @ w.T, labels)


def step(path: str, h: Tensor, w: Tensor, labels: Tensor) -> Tensor:
    """Forward and backward of one path from cleared gradients; returns the loss."""
    h.grad = w.grad = None
    loss = loss_of(path, h, w, labels)
    loss.backward()
    return loss.detach()


def worker(path: str, hidden: int, vocab: int, tokens: int) -> None:
    torch.set_num_threads(2)
    h, w, labels = make_inputs(hidden, vocab, tokens)
    before = current_rss_mb()
    reset_peak_rss()
    step(path, h, w, labels)
    print(json.dumps({"path": path, "added_mb": peak_rss_mb() - before}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--tokens", type=int, default=8 * 512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--csv", default="bench/results/cross_entropy.csv")
    parser.add_argument("--worker", choices=["fused", "unfused"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.hidden, args.vocab, args.tokens)
        return
    torch.set_num_threads(2)
    shape = ["--hidden", str(args.hidden), "--vocab", str(args.vocab), "--tokens", str(args.tokens)]
    memory = {
        p: run_worker("bench.cross_entropy", [*shape, "--worker", p]) for p in ("fused", "unfused")
    }
    h, w, labels = make_inputs(args.hidden, args.vocab, args.tokens)
    results = {}
    for path in ("fused", "unfused"):
        loss = step(path, h, w, labels)
        results[path] = (loss, h.grad.clone(), w.grad.clone())
    agree = all(
        torch.allclose(a, b, atol=1e-5, rtol=1e-4)
        for a, b in zip(results["fused"], results["unfused"], strict=True)
    )
    times = interleaved_medians(
        {p: (lambda p=p: step(p, h, w, labels)) for p in ("fused", "unfused")},
        args.repeats,
        args.warmup,
    )
    rows = [
        {
            "path": path,
            "added_peak_mb": memory[path]["added_mb"],
            "memory_vs_unfused": memory[path]["added_mb"] / memory["unfused"]["added_mb"],
            "fwd_bwd_ms": times[path] * 1e3,
            "time_vs_unfused": times[path] / times["unfused"],
            "same_loss_and_grads": agree,
        }
        for path in ("fused", "unfused")
    ]
    report(
        f"Linear + cross-entropy, hidden {args.hidden}, vocab {args.vocab}, "
        f"{args.tokens} tokens, fp32",
        rows,
        args.csv,
    )


if __name__ == "__main__":
    main()
