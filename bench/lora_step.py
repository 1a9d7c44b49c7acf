"""One LoRA training step on the reference Llama: ours vs PEFT, side by side.

    python -m bench.lora_step [--repeats 7] [--csv bench/results/lora_step.csv]

Ours: LoRA from ``core.adapters`` (fused LoRA linear) and the LM loss from
``core.training.lm_loss`` (fused linear cross-entropy). PEFT: ``get_peft_model`` and the
model's own ``labels=`` loss. A third row times the frozen model with no adapter but the
same input gradients (see :func:`make_floor_step`), the part of the step both paths share.
Times come from one process, alternating the paths (the ratio of medians, and the
quartiles of the round-by-round ratios as its spread); peak memory from one fresh process
per path (peak RSS over two steps minus the RSS of the built model before them; optimizer
state included).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable

import torch

from .common import (
    LORA_TARGETS,
    current_rss_mb,
    interleaved_samples,
    peak_rss_mb,
    reference_llama,
    report,
    reset_peak_rss,
    round_ratio_quartiles,
    run_worker,
)

BATCH, SEQ, RANK = 8, 128, 16


def build(path: str) -> torch.nn.Module:
    """The reference model with LoRA r=16 on every linear layer, ours or PEFT's."""
    model = reference_llama()
    if path == "ours":
        from core.adapters import LoraConfig, inject

        inject(model, LoraConfig(r=RANK, alpha=32, target_modules=LORA_TARGETS))
    else:
        import peft

        model = peft.get_peft_model(
            model, peft.LoraConfig(r=RANK, lora_alpha=32, target_modules=LORA_TARGETS)
        )
    return model.train()


def make_step(
    model: torch.nn.Module, path: str, batch: int = BATCH, seq: int = SEQ, seed: int = 0
) -> Callable[[], float]:
    """A closure running forward, backward and an AdamW step on a fixed batch."""
    from core.training.lm_loss import causal_lm_loss

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 8000, (batch, seq), generator=gen)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        if path == "ours":
            loss = causal_lm_loss(model, ids, fused=True)
        else:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def make_floor_step(batch: int = BATCH, seq: int = SEQ, seed: int = 0) -> Callable[[], float]:
    """The same step with no adapter at all: what any LoRA implementation must pay.

    The base model is frozen and the output of every linear layer LoRA would adapt is made
    to require grad, so backward runs the input gradients exactly where a LoRA step does
    (every layer but the first attention's inputs, which feed only frozen q/k/v weights)
    but no adapter product, weight gradient or optimizer step. The loss is the fused one.
    """
    from core.training.lm_loss import causal_lm_loss

    model = reference_llama().train()
    model.requires_grad_(False)
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in LORA_TARGETS:
            module.register_forward_hook(_require_grad)
    ids = torch.randint(0, 8000, (batch, seq), generator=torch.Generator().manual_seed(seed))

    def step() -> float:
        loss = causal_lm_loss(model, ids, fused=True)
        loss.backward()
        return float(loss.detach())

    return step


def _require_grad(_module, _inputs, output: torch.Tensor) -> torch.Tensor:
    """Forward hook: the output joins the graph as a LoRA layer's output would."""
    return output if output.requires_grad else output.requires_grad_(True)


def worker(path: str, batch: int, seq: int) -> None:
    torch.set_num_threads(2)
    model = build(path)
    step = make_step(model, path, batch, seq)
    before = current_rss_mb()
    reset_peak_rss()
    step()
    step()
    print(json.dumps({"path": path, "added_mb": peak_rss_mb() - before}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--seq", type=int, default=SEQ)
    parser.add_argument("--csv", default="bench/results/lora_step.csv")
    parser.add_argument("--worker", choices=["ours", "peft"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.batch, args.seq)
        return
    torch.set_num_threads(2)
    steps = {path: make_step(build(path), path, args.batch, args.seq) for path in ("ours", "peft")}
    steps["no adapter (floor)"] = make_floor_step(args.batch, args.seq)
    samples = interleaved_samples(steps, args.repeats, args.warmup)
    times = {path: statistics.median(values) for path, values in samples.items()}
    low, high = round_ratio_quartiles(samples["ours"], samples["peft"])
    shape = ["--batch", str(args.batch), "--seq", str(args.seq)]
    memory = {p: run_worker("bench.lora_step", [*shape, "--worker", p]) for p in ("ours", "peft")}
    rows = [
        {
            "path": path,
            "step_ms": times[path] * 1e3,
            "time_vs_peft": times[path] / times["peft"],
            "per_round_iqr": f"{low:.3f}-{high:.3f}" if path == "ours" else "",
            "step_peak_mb": memory[path]["added_mb"] if path in memory else "",
            "memory_vs_peft": (
                memory[path]["added_mb"] / memory["peft"]["added_mb"] if path in memory else ""
            ),
        }
        for path in steps
    ]
    report(
        f"LoRA training step (Llama 21M, r={RANK} all linear, batch {args.batch}x{args.seq}, "
        "AdamW, fp32)",
        rows,
        args.csv,
    )


if __name__ == "__main__":
    main()
