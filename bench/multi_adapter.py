"""A batch where every sample uses its own LoRA adapter: ours (AdapterBank) vs PEFT.

    python -m bench.multi_adapter [--adapters 128] [--batch 128] [--seq 1 16] [--repeats 5]
                                  [--ids each|one] [--generate TOKENS]
                                  [--plot docs/multi_adapter.png]

Forward time of the reference Llama with 128 LoRA adapters (r=16, all linear layers), each
row a different adapter, relative to the base model alone. PEFT serves such a batch with
``model(..., adapter_names=[...])``. All paths run in one process, measured in turns.

Three more rows explain ours (see :func:`make_read_floor`, :func:`model_reading_stacks`
and :class:`UpdateAlone`): the base forward plus one read of every adapter stack, a lower
bound for an fp32 implementation that reads the stacks in a pass of its own when the rows
use different adapters; the same reads made layer by layer, each adapted layer reading its
own stacks right after its base GEMM, as a layer-wise implementation (ours, PEFT's) must;
and our low-rank updates alone. ``--ids one`` puts adapter 0 on every row (a
batch from one tenant); that run has no read-floor row, since one adapter is read, and
times PEFT both ways: with ``adapter_names`` and with the adapter made active
(``set_adapter``), its usual single-adapter path; and ours with the one adapter injected
on its own (no bank).

``--generate TOKENS`` times decoding instead of one forward: greedy ``generate`` of exactly
TOKENS new tokens (KV cache on) from prompts of each ``--seq`` length, ours through
``bank.generate(..., adapter_ids=...)``, PEFT through ``generate(..., adapter_names=...)``.
That is where a server spends its time: one token per row per step, at small batches.
The read floors and the updates-alone row belong to one forward and are left out.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .common import (
    LORA_TARGETS,
    interleaved_samples,
    reference_llama,
    report,
    round_ratio_quartiles,
)

if TYPE_CHECKING:
    from core.adapters import AdapterBank
    from core.adapters.lora_stack import LoraStackUnit

RANK = 16
BASE = "base (no adapters)"
OURS = "ours (AdapterBank)"
FLOOR = "read floor (base + one read of the stacks)"
LAYER_FLOOR = "read floor, layer by layer (each layer reads its stacks)"
UPDATE = "our low-rank updates alone"
PEFT = "PEFT (adapter_names)"
PEFT_ONE = "PEFT (set_adapter)"
OURS_ONE = "ours (the adapter injected alone)"
# The targets for ours vs base, by sequence length.
TARGETS = {1: 1.5, 16: 1.2}


def _randomize(params, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.01)


def build_ours(n: int) -> AdapterBank:
    from core.adapters import AdapterBank, LoraConfig

    names = [f"a{k}" for k in range(n)]
    bank = AdapterBank(
        reference_llama(), LoraConfig(r=RANK, alpha=32, target_modules=LORA_TARGETS), names=names
    )
    _randomize([p for p in bank.parameters() if p.requires_grad], seed=1)
    return bank.eval()


def build_injected() -> torch.nn.Module:
    """The reference model with one LoRA adapter injected: how to serve a single adapter."""
    from core.adapters import LoraConfig, inject

    model = reference_llama()
    inject(model, LoraConfig(r=RANK, alpha=32, target_modules=LORA_TARGETS))
    _randomize([p for p in model.parameters() if p.requires_grad], seed=1)
    return model.eval()


def build_peft(n: int) -> torch.nn.Module:
    import peft

    config = peft.LoraConfig(r=RANK, lora_alpha=32, target_modules=LORA_TARGETS)
    model = peft.get_peft_model(reference_llama(), config, adapter_name="a0")
    for k in range(1, n):
        model.add_adapter(f"a{k}", config)
    _randomize([p for n_, p in model.named_parameters() if "lora_B" in n_], seed=1)
    return model.eval()


def stack_tensors(bank: AdapterBank) -> list[Tensor]:
    """Every factor stack of a stacked LoRA bank: A and B of each adapted layer."""
    return [t for unit in bank.stack_layers.values() for t in (unit.lora_A, unit.lora_B)]


def make_read_floor(base: torch.nn.Module, tokens: Tensor, stacks: list[Tensor]) -> Callable:
    """The base forward plus one streaming pass (a sum) over every adapter stack.

    When the rows of a batch use different adapters, each adapter's factors must be read at
    least once per forward, so an fp32 implementation that does not overlap that read with
    the base GEMMs cannot beat this. At short sequences the low-rank arithmetic is tiny and
    the read sets the cost.
    """

    def run() -> None:
        base(input_ids=tokens)
        for stack in stacks:
            stack.sum()

    return run


def model_reading_stacks(bank: AdapterBank) -> torch.nn.Module:
    """A plain base model whose adapted layers each read their own stacks of ``bank`` (a sum)
    right after their base GEMM. Its forward is the read floor of an implementation that
    applies adapters layer by layer.

    It differs from :func:`make_read_floor` only in when the same bytes are read: streamed
    between the base GEMMs, the stacks evict the cache those GEMMs would reuse.
    """
    model = reference_llama().eval()
    units = bank.stack_layers
    for name, module in model.named_modules():
        if name in units:
            module.register_forward_hook(_reader_of(units[name]))
    return model


def _reader_of(unit: LoraStackUnit) -> Callable:
    def read_stacks(_module: torch.nn.Module, _inputs: object, _output: object) -> None:
        unit.lora_A.sum()
        unit.lora_B.sum()

    return read_stacks


class UpdateAlone:
    """Our serving update of every stacked layer on its own: the same kernel call as in the
    forward (:func:`fused_kernels.multi_lora.accumulate_grouped_`, with the grouping and backend
    chosen once), on random inputs of the layers' shapes, without the base model around it.
    ``layers`` holds (x, out, unit)."""

    def __init__(self, bank: AdapterBank, adapter_ids: Tensor, rows: int) -> None:
        from core.adapters.lora_stack import RoutePlan

        plan = RoutePlan(adapter_ids, len(bank.names))
        self.row_ids, self.segments = plan.for_rows(rows)
        self.backend = plan.backend
        gen = torch.Generator().manual_seed(2)
        self.layers = [
            (
                torch.randn(rows, unit.lora_A.shape[2], generator=gen),
                torch.zeros(rows, unit.lora_B.shape[1]),
                unit,
            )
            for unit in bank.stack_layers.values()
        ]

    def __call__(self) -> None:
        from fused_kernels.multi_lora import accumulate_grouped_

        for x, out, unit in self.layers:
            accumulate_grouped_(
                out, x, unit.lora_A, unit.lora_B, unit.scalings, self.segments, self.backend
            )


def generation_paths(
    prompts: Tensor,
    new_tokens: int,
    base: torch.nn.Module,
    ours: AdapterBank,
    ids: Tensor,
    peft_model: torch.nn.Module | None,
    injected: torch.nn.Module | None,
) -> dict[str, Callable]:
    """Greedy decoding of exactly ``new_tokens`` tokens on every path (see the module doc)."""
    options = {
        "max_new_tokens": new_tokens,
        "min_new_tokens": new_tokens,
        "do_sample": False,
        "pad_token_id": 0,
    }
    names = [f"a{int(k)}" for k in ids]
    paths = {
        BASE: lambda: base.generate(prompts, **options),
        OURS: lambda: ours.generate(prompts, adapter_ids=ids, **options),
    }
    if injected is not None:
        paths[OURS_ONE] = lambda: injected.generate(prompts, **options)
    if peft_model is not None:
        paths[PEFT] = lambda: peft_model.generate(input_ids=prompts, adapter_names=names, **options)
        if injected is not None:  # one adapter for the batch: PEFT's set_adapter path too
            paths[PEFT_ONE] = lambda: peft_model.generate(input_ids=prompts, **options)
    return paths


def plot_scaling(rows: list[dict], path: str | Path) -> Path:
    """Forward time relative to the base model against sequence length, one line a path."""
    from matplotlib.figure import Figure

    from core.atomic import atomic_write

    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.add_subplot()
    paths = ((OURS, "o-"), (FLOOR, "s--"), (LAYER_FLOOR, "d:"), (PEFT, "^-"))
    for path_name, style in paths:
        points = [(r["seq_len"], r["vs_base"]) for r in rows if r["path"] == path_name]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, style, label=path_name)
    for seq, target in TARGETS.items():
        ax.plot([seq], [target], "kx", markersize=9)
        ax.annotate(f"target {target}x", (seq, target), textcoords="offset points",
                    xytext=(6, 4), fontsize=8)  # fmt: skip
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ticks = [1, 1.2, 1.5, 2, 3, 5, 10, 20]
    ax.set_yticks(ticks, labels=[f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("sequence length (tokens per row)")
    ax.set_ylabel("forward time / base model")
    ax.set_title("A batch mixing one adapter per row")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=128)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seq", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--ids",
        choices=["each", "one"],
        default="each",
        help="each: row i uses adapter i (mod adapters), the issue's setting; one: every row "
        "uses adapter 0, a batch from one tenant",
    )
    parser.add_argument(
        "--generate",
        type=int,
        metavar="TOKENS",
        help="time greedy generation of TOKENS new tokens from --seq-token prompts instead",
    )
    parser.add_argument("--skip-peft", action="store_true", help="time only ours and the base")
    parser.add_argument(
        "--csv",
        help="where to write the table (default bench/results/multi_adapter.csv, or "
        "multi_adapter_generate.csv with --generate)",
    )
    parser.add_argument("--plot", help="also draw time vs base against sequence length (PNG)")
    args = parser.parse_args(argv)
    if args.generate is not None and (args.generate < 1 or args.plot):
        parser.error("--generate takes a number of tokens >= 1, and draws no plot")
    torch.set_num_threads(2)
    base = reference_llama().eval()
    ours = build_ours(args.adapters)
    floors = args.ids == "each" and not args.generate
    reading_stacks = model_reading_stacks(ours) if floors else None
    peft_model = None if args.skip_peft else build_peft(args.adapters)
    if peft_model is not None and args.ids == "one":
        peft_model.set_adapter("a0")
    injected = build_injected() if args.ids == "one" else None
    ids = torch.arange(args.batch) % args.adapters
    if args.ids == "one":
        ids = torch.zeros_like(ids)
    names = [f"a{int(k)}" for k in ids]
    stacks = stack_tensors(ours)
    rows = []
    for seq in args.seq:
        tokens = torch.randint(
            0, 8000, (args.batch, seq), generator=torch.Generator().manual_seed(0)
        )
        if args.generate:
            paths = generation_paths(tokens, args.generate, base, ours, ids, peft_model, injected)
        else:
            paths = {
                BASE: lambda t=tokens: base(input_ids=t),
                OURS: lambda t=tokens: ours(input_ids=t, adapter_ids=ids),
            }
            if args.ids == "each":
                paths[FLOOR] = make_read_floor(base, tokens, stacks)
                paths[LAYER_FLOOR] = lambda t=tokens: reading_stacks(input_ids=t)
            else:
                paths[OURS_ONE] = lambda t=tokens: injected(input_ids=t)
            paths[UPDATE] = UpdateAlone(ours, ids, args.batch * seq)
            if peft_model is not None:
                paths[PEFT] = lambda t=tokens: peft_model(input_ids=t, adapter_names=names)
                if args.ids == "one":  # PEFT's usual way to serve one adapter
                    paths[PEFT_ONE] = lambda t=tokens: peft_model(input_ids=t)
        with torch.inference_mode():
            samples = interleaved_samples(paths, args.repeats, args.warmup, prime=True)
        times = {path: statistics.median(values) for path, values in samples.items()}
        for path, seconds in times.items():
            low, high = round_ratio_quartiles(samples[path], samples[BASE])
            rows.append(
                {
                    "seq_len": seq,
                    "path": path,
                    "generate_ms" if args.generate else "forward_ms": seconds * 1e3,
                    "vs_base": seconds / times[BASE],
                    "per_round_iqr": "" if path == BASE else f"{low:.3f}-{high:.3f}",
                }
            )
    what = f"generation of {args.generate} tokens" if args.generate else "forward"
    report(
        f"Mixed-adapter {what} ({args.adapters} LoRA adapters r={RANK}, batch {args.batch}, "
        f"{'one adapter per row' if args.ids == 'each' else 'adapter 0 on every row'}, fp32)",
        rows,
        args.csv or f"bench/results/multi_adapter{'_generate' if args.generate else ''}.csv",
    )
    if args.plot:
        print(f"plot: {plot_scaling(rows, args.plot)}")


if __name__ == "__main__":
    main()
