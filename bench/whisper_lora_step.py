"""One Whisper LoRA training step: ours vs PEFT, side by side, on Whisper base's shape.

    python -m bench.whisper_lora_step [--batch 8] [--seconds 7] [--tokens 16]
                                      [--repeats 7] [--csv bench/results/whisper_lora_step.csv]

The model is a randomly initialised ``WhisperForConditionalGeneration`` of Whisper base's
shape (d_model 512, 6 + 6 layers, 8 heads, vocabulary 51865; time and memory depend on the
shapes, not the values), its encoder window cut to ``--seconds`` as the speech app's
Whisper recipe does (7 s: 350 encoder positions). LoRA r=8, alpha 16 on every attention and
feed-forward projection of encoder and decoder, the recipe's adapter. One step: forward
with teacher forcing on ``--tokens`` decoder tokens, cross-entropy, backward, AdamW.

Ours: ``core.adapters.inject`` (the fused LoRA op); PEFT: ``get_peft_model``; the loss is
the same ``F.cross_entropy`` of the logits for both. A third row times the frozen model
with no adapter but the same input gradients (the part both paths share). Times come from
one process, alternating the paths (ratio of medians, quartiles of the per-round ratios);
peak memory from one fresh process per path (peak RSS over two steps minus the RSS of the
built model before them).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .common import (
    print_step_memory,
    report,
    require_grad_hook,
    step_comparison_rows,
)

RANK, ALPHA = 8, 16
TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
BATCH, SECONDS, TOKENS = 8, 7.0, 16


def whisper_base_shape(seconds: float = SECONDS, seed: int = 0) -> torch.nn.Module:
    """A random Whisper base of the real one's shape, encoder window ``seconds``."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from apps.speech_asr.whisper.model import trim_encoder

    torch.manual_seed(seed)
    config = WhisperConfig(
        vocab_size=51865, num_mel_bins=80, d_model=512, encoder_layers=6, decoder_layers=6,
        encoder_attention_heads=8, decoder_attention_heads=8, encoder_ffn_dim=2048,
        decoder_ffn_dim=2048, max_source_positions=1500, max_target_positions=448,
    )  # fmt: skip
    model = WhisperForConditionalGeneration(config)
    trim_encoder(model, seconds)
    return model


def build(path: str, seconds: float = SECONDS) -> torch.nn.Module:
    """The model with LoRA r=8 on every projection, ours (``core.adapters``) or PEFT's."""
    model = whisper_base_shape(seconds)
    if path == "ours":
        from core.adapters import LoraConfig, inject

        inject(model, LoraConfig(r=RANK, alpha=ALPHA, target_modules=TARGETS))
    else:
        import peft

        model = peft.get_peft_model(
            model, peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS)
        )
    return model.train()


def batch_of(model: torch.nn.Module, batch: int, tokens: int, seed: int = 0) -> tuple:
    """Random features for the model's window, decoder inputs and labels."""
    config = model.config
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(
        batch, config.num_mel_bins, 2 * config.max_source_positions, generator=gen
    )
    ids = torch.randint(0, config.vocab_size, (batch, tokens + 1), generator=gen)
    return features, ids[:, :-1], ids[:, 1:]


def make_step(
    model: torch.nn.Module, batch: int = BATCH, tokens: int = TOKENS
) -> Callable[[], float]:
    """Forward, cross-entropy, backward and an AdamW step on a fixed batch."""
    features, decoder_ids, labels = batch_of(model, batch, tokens)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4) if params else None

    def step() -> float:
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        logits = model(input_features=features, decoder_input_ids=decoder_ids).logits
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
        loss.backward()
        if optimizer is not None:
            optimizer.step()
        return float(loss.detach())

    return step


def make_floor_step(
    batch: int = BATCH, tokens: int = TOKENS, seconds: float = SECONDS
) -> Callable[[], float]:
    """The frozen model with no adapter, each adapted layer's output joined to the graph so
    backward runs the same input gradients a LoRA step does, but no adapter work."""
    model = whisper_base_shape(seconds).train()
    model.requires_grad_(False)
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in TARGETS:
            module.register_forward_hook(require_grad_hook)
    return make_step(model, batch, tokens)


def worker(path: str, batch: int, tokens: int, seconds: float) -> None:
    torch.set_num_threads(2)
    model = build(path, seconds)
    step = make_step(model, batch, tokens)
    print_step_memory(path, step)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--seconds", type=float, default=SECONDS, help="encoder window")
    parser.add_argument("--tokens", type=int, default=TOKENS, help="decoder tokens per row")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--csv", default="bench/results/whisper_lora_step.csv")
    parser.add_argument("--worker", choices=["ours", "peft"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.batch, args.tokens, args.seconds)
        return
    torch.set_num_threads(2)
    steps = {
        path: make_step(build(path, args.seconds), args.batch, args.tokens)
        for path in ("ours", "peft")
    }
    steps["no adapter (floor)"] = make_floor_step(args.batch, args.tokens, args.seconds)
    shape = [
        "--batch",
        str(args.batch),
        "--tokens",
        str(args.tokens),
        "--seconds",
        str(args.seconds),
    ]
    rows = step_comparison_rows(steps, args.repeats, args.warmup, "bench.whisper_lora_step", shape)
    report(
        f"Whisper LoRA training step (Whisper base shape, random weights, window "
        f"{args.seconds:g} s, r={RANK} on {len(TARGETS)} projection kinds, batch {args.batch} "
        f"x {args.tokens} tokens, AdamW, fp32)",
        rows,
        args.csv,
    )


if __name__ == "__main__":
    main()
