"""A batch where every sample uses its own LoRA adapter: ours (AdapterBank) vs PEFT.

    python -m bench.multi_adapter [--adapters 128] [--batch 128] [--seq 1 16] [--repeats 5]

Forward time of the reference Llama with 128 LoRA adapters (r=16, all linear layers), each
row a different adapter, relative to the base model alone. PEFT serves such a batch with
``model(..., adapter_names=[...])``. All paths run in one process, measured in turns.
"""

from __future__ import annotations

import argparse

import torch

from .common import LORA_TARGETS, interleaved_medians, reference_llama, report

RANK = 16


def _randomize(params, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.01)


def build_ours(n: int):
    from core.adapters import AdapterBank, LoraConfig

    names = [f"a{k}" for k in range(n)]
    bank = AdapterBank(
        reference_llama(), LoraConfig(r=RANK, alpha=32, target_modules=LORA_TARGETS), names=names
    )
    _randomize([p for p in bank.parameters() if p.requires_grad], seed=1)
    return bank.eval()


def build_peft(n: int):
    import peft

    config = peft.LoraConfig(r=RANK, lora_alpha=32, target_modules=LORA_TARGETS)
    model = peft.get_peft_model(reference_llama(), config, adapter_name="a0")
    for k in range(1, n):
        model.add_adapter(f"a{k}", config)
    _randomize([p for n_, p in model.named_parameters() if "lora_B" in n_], seed=1)
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=128)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seq", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--skip-peft", action="store_true", help="time only ours and the base")
    parser.add_argument("--csv", default="bench/results/multi_adapter.csv")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    base = reference_llama().eval()
    ours = build_ours(args.adapters)
    peft_model = None if args.skip_peft else build_peft(args.adapters)
    ids = torch.arange(args.batch) % args.adapters
    names = [f"a{int(k)}" for k in ids]
    rows = []
    for seq in args.seq:
        tokens = torch.randint(
            0, 8000, (args.batch, seq), generator=torch.Generator().manual_seed(0)
        )
        paths = {
            "base (no adapters)": lambda t=tokens: base(input_ids=t),
            "ours (AdapterBank)": lambda t=tokens: ours(input_ids=t, adapter_ids=ids),
        }
        if peft_model is not None:
            paths["PEFT (adapter_names)"] = lambda t=tokens: peft_model(
                input_ids=t, adapter_names=names
            )
        with torch.inference_mode():
            times = interleaved_medians(paths, args.repeats, args.warmup)
        for path, seconds in times.items():
            rows.append(
                {
                    "seq_len": seq,
                    "path": path,
                    "forward_ms": seconds * 1e3,
                    "vs_base": seconds / times["base (no adapters)"],
                }
            )
    report(
        f"Mixed-adapter forward ({args.adapters} LoRA adapters r={RANK}, batch {args.batch}, "
        "one adapter per row, fp32)",
        rows,
        args.csv,
    )


if __name__ == "__main__":
    main()
