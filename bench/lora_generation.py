"""Greedy generation with one unmerged LoRA adapter: ours vs PEFT, tokens per second.

    python -m bench.lora_generation [--model reference|smollm2] [--batch 8] [--prompt 64]
                                    [--new-tokens 64] [--repeats 5]
                                    [--csv bench/results/lora_generation.csv]

Serving a fine-tuned model without merging the adapter keeps the base weights shared
(several adapters, or the plain model, from one copy), so each decoding step pays for the
adapter's low-rank products. This bench times that: ``model.generate(...,
do_sample=False)`` with the KV cache on, exactly ``--new-tokens`` new tokens for a batch
of random prompts, on three models built from the same base weights:

- **ours:** LoRA r=16, alpha 32 on every linear layer of the blocks through
  ``core.adapters.inject`` (the fused LoRA linear, run without autograd);
- **PEFT:** the same adapter through ``peft.get_peft_model``;
- **no adapter (floor):** the plain model, what decoding costs without any adapter.

B starts nonzero (a fresh adapter's zero B would make the adapter a no-op a fused path
could skip) and PEFT's A and B are copied from ours, so both paths compute the same
function: the report says whether they produced the same token ids, and whether the
plain model's differ (if not, the adapter changed nothing and the check says little).

Times come from one process, the paths taking turns (interleaved rounds), as medians; the
spread is the quartiles of the round-by-round ratios. The three models hold separate
weights much larger than the cache, so no path finds another's tensors warm and the
rounds are not primed. ``--model smollm2`` runs on SmolLM2-135M's shape with random
weights (:func:`bench.common.smollm2_llama`) and writes ``lora_generation_smollm2.csv``.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from torch import Tensor

from .common import (
    LORA_TARGETS,
    MODEL_TITLES,
    add_model_option,
    build_model,
    interleaved_samples,
    report,
    round_ratio_quartiles,
)

RANK, ALPHA = 16, 32
OURS = "ours"
PEFT = "peft"
PLAIN = "no adapter (floor)"
#: Standard deviation of the random B factors: the model's own init scale (0.02), large
#: enough that the adapter changes the greedy tokens of a random model.
B_STD = 0.02


def build_ours(model_name: str, seed: int = 0) -> torch.nn.Module:
    """The model with our LoRA injected, B drawn from N(0, B_STD^2) (A: LoRA's default init)."""
    from core.adapters import LoraConfig, adapter_layers, inject

    model = build_model(model_name, seed=seed)
    inject(model, LoraConfig(r=RANK, alpha=ALPHA, target_modules=LORA_TARGETS))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            b = layer.adapters["default"].lora_B.weight
            b.copy_(torch.randn(b.shape, generator=gen) * B_STD)
    return model.eval()


def build_peft(model_name: str, ours: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """The same base model with PEFT's LoRA, its A and B copied from ``ours``."""
    import peft

    from core.adapters import adapter_layers

    config = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=LORA_TARGETS)
    model = peft.get_peft_model(build_model(model_name, seed=seed), config)
    inner = model.base_model.model
    copied = 0
    with torch.no_grad():
        for name, layer in adapter_layers(ours):
            unit = layer.adapters["default"]
            target = inner.get_submodule(name)
            target.lora_A["default"].weight.copy_(unit.lora_A.weight)
            target.lora_B["default"].weight.copy_(unit.lora_B.weight)
            copied += 1
    expected = sum(1 for n, _ in inner.named_modules() if n.endswith(".lora_A.default"))
    if copied != expected:
        raise RuntimeError(f"copied {copied} adapted layers into PEFT's model, it has {expected}")
    return model.eval()


def generation_paths(
    models: dict[str, torch.nn.Module], prompts: Tensor, new_tokens: int
) -> dict[str, Callable[[], Tensor]]:
    """One closure per model: greedy decoding of exactly ``new_tokens`` tokens, KV cache on."""
    options = {
        "attention_mask": torch.ones_like(prompts),
        "max_new_tokens": new_tokens,
        "min_new_tokens": new_tokens,
        "do_sample": False,
        "use_cache": True,
        "pad_token_id": 0,
    }
    return {
        name: (lambda m=model: m.generate(input_ids=prompts, **options))
        for name, model in models.items()
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_option(parser)
    parser.add_argument("--batch", type=int, default=8, help="prompts decoded together")
    parser.add_argument("--prompt", type=int, default=64, help="tokens per prompt")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated per prompt")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--csv",
        help="where to write the table (default bench/results/lora_generation.csv, or "
        "lora_generation_smollm2.csv with --model smollm2)",
    )
    args = parser.parse_args(argv)
    if min(args.batch, args.prompt, args.new_tokens, args.repeats) < 1:
        parser.error("--batch, --prompt, --new-tokens and --repeats must be >= 1")
    torch.set_num_threads(2)
    ours = build_ours(args.model)
    models = {
        OURS: ours,
        PEFT: build_peft(args.model, ours),
        PLAIN: build_model(args.model).eval(),
    }
    vocab = ours.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(1, vocab, (args.batch, args.prompt), generator=gen)
    paths = generation_paths(models, prompts, args.new_tokens)
    with torch.inference_mode():
        tokens = {name: run() for name, run in paths.items()}  # untimed: the token check
        samples = interleaved_samples(paths, args.repeats, args.warmup)
    generated = args.batch * args.new_tokens
    for name, out in tokens.items():
        if out.shape != (args.batch, args.prompt + args.new_tokens):
            raise RuntimeError(f"{name} generated {tuple(out.shape)}, not {generated} tokens")
    times = {name: statistics.median(values) for name, values in samples.items()}
    rows = []
    for name, seconds in times.items():
        # Speed ratio per round: PEFT's time over this path's time (> 1: faster than PEFT).
        low, high = round_ratio_quartiles(samples[PEFT], samples[name])
        new = tokens[name][:, args.prompt :]
        rows.append(
            {
                "path": name,
                "generate_ms": seconds * 1e3,
                "tokens_per_s": generated / seconds,
                "speed_vs_peft": times[PEFT] / seconds,
                "per_round_iqr": "" if name == PEFT else f"{low:.3f}-{high:.3f}",
                "same_tokens_as_peft": ""
                if name == PEFT
                else bool(torch.equal(tokens[name], tokens[PEFT])),
                "new_tokens_matching_peft": int((new == tokens[PEFT][:, args.prompt :]).sum()),
            }
        )
    suffix = "" if args.model == "reference" else f"_{args.model}"
    report(
        f"Greedy generation with an unmerged LoRA adapter ({MODEL_TITLES[args.model]}, "
        f"r={RANK} all linear, batch {args.batch}, prompt {args.prompt}, "
        f"{args.new_tokens} new tokens, KV cache, fp32; {generated} tokens per call)",
        rows,
        args.csv or f"bench/results/lora_generation{suffix}.csv",
    )
    return rows


if __name__ == "__main__":
    main()
