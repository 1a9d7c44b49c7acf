"""One LoRA training step: ours vs PEFT, side by side, on the reference Llama or SmolLM2.

    python -m bench.lora_step [--model reference|smollm2] [--batch B] [--seq T]
                              [--repeats 7] [--csv bench/results/lora_step.csv]

``--model reference`` (the default) is the issue's reference Llama (21M, batch 8 x 128);
``--model smollm2`` is a randomly initialised model of SmolLM2-135M's shape, the code
app's model (:func:`bench.common.smollm2_llama`; batch 4 x 256 by default, its own CSV,
``lora_step_smollm2.csv``). LoRA r=16, alpha 32 on every linear layer of the blocks.

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
from collections.abc import Callable

import torch

from .common import (
    LORA_TARGETS,
    MODEL_TITLES,
    add_model_option,
    build_model,
    print_step_memory,
    report,
    require_grad_hook,
    step_comparison_rows,
)

BATCH, SEQ, RANK = 8, 128, 16
#: The default (batch, seq) of each model: the reference's 8 x 128 tokens; 4 x 256 for
#: SmolLM2, whose step is about ten times the reference's, so a run stays within minutes.
SHAPES = {"reference": (BATCH, SEQ), "smollm2": (4, 256)}


def build(path: str, model_name: str = "reference") -> torch.nn.Module:
    """The model with LoRA r=16 on every linear layer of the blocks, ours or PEFT's."""
    model = build_model(model_name)
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
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=gen)
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


def make_floor_step(
    batch: int = BATCH, seq: int = SEQ, seed: int = 0, model_name: str = "reference"
) -> Callable[[], float]:
    """The same step with no adapter at all: what any LoRA implementation must pay.

    The base model is frozen and the output of every linear layer LoRA would adapt is made
    to require grad, so backward runs the input gradients exactly where a LoRA step does
    (every layer but the first attention's inputs, which feed only frozen q/k/v weights)
    but no adapter product, weight gradient or optimizer step. The loss is the fused one.
    """
    from core.training.lm_loss import causal_lm_loss

    model = build_model(model_name).train()
    model.requires_grad_(False)
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in LORA_TARGETS:
            module.register_forward_hook(require_grad_hook)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=gen)

    def step() -> float:
        loss = causal_lm_loss(model, ids, fused=True)
        loss.backward()
        return float(loss.detach())

    return step


def worker(path: str, batch: int, seq: int, model_name: str = "reference") -> None:
    torch.set_num_threads(2)
    model = build(path, model_name)
    step = make_step(model, path, batch, seq)
    print_step_memory(path, step)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_option(parser)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, help="rows per step (default 8, smollm2: 4)")
    parser.add_argument("--seq", type=int, help="tokens per row (default 128, smollm2: 256)")
    parser.add_argument(
        "--csv",
        help="where to write the table (default bench/results/lora_step.csv, or "
        "lora_step_smollm2.csv with --model smollm2)",
    )
    parser.add_argument("--worker", choices=["ours", "peft"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    default_batch, default_seq = SHAPES[args.model]
    batch = args.batch or default_batch
    seq = args.seq or default_seq
    if args.worker:
        worker(args.worker, batch, seq, args.model)
        return
    torch.set_num_threads(2)
    steps = {
        path: make_step(build(path, args.model), path, batch, seq) for path in ("ours", "peft")
    }
    steps["no adapter (floor)"] = make_floor_step(batch, seq, model_name=args.model)
    shape = ["--model", args.model, "--batch", str(batch), "--seq", str(seq)]
    rows = step_comparison_rows(steps, args.repeats, args.warmup, "bench.lora_step", shape)
    suffix = "" if args.model == "reference" else f"_{args.model}"
    report(
        f"LoRA training step ({MODEL_TITLES[args.model]}, r={RANK} all linear, "
        f"batch {batch}x{seq}, AdamW, fp32)",
        rows,
        args.csv or f"bench/results/lora_step{suffix}.csv",
    )


if __name__ == "__main__":
    main()
