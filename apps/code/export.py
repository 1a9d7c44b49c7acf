"""A fine-tuned run as GGUF: the LoRA adapter for llama.cpp's ``--lora``, or a merged model.

    python -m apps.code.export runs/code/version_0                 # <run>/adapter.gguf
    python -m apps.code.export runs/code/version_0 --merged runs/code/merged.gguf [--dtype f16]

The LoRA GGUF is written from the run's PEFT-layout ``adapter/`` folder (a fit writes both:
``CodeModule.on_fit_end`` calls :func:`write_adapter_gguf`). The merged model comes from the
run's checkpoint: its adapter folded into the base weights, written with the base GGUF's own
tokenizer metadata when the base came from a GGUF (so llama.cpp tokenizes exactly as it did
for the base). FIM sentinels that the fine-tune *added* as new tokens are not part of either
file: llama.cpp adapters cannot add vocabulary, and the merged model keeps the base's; the
PEFT adapter folder holds them (``new_tokens.safetensors`` and the tokenizer).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from .gguf_export import export_lora_gguf, write_model_gguf


def write_adapter_gguf(run_dir: str | Path, base_config: Any) -> Path | None:
    """``<run_dir>/adapter.gguf`` from ``<run_dir>/adapter/``; ``None`` (with the reason
    printed) when the adapter has no llama.cpp form (DoRA, per-task adapters, ...)."""
    run_dir = Path(run_dir)
    adapter = run_dir / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        print(f"[apps.code] no single adapter in {adapter}; no GGUF adapter written.")
        return None
    try:
        return export_lora_gguf(adapter, base_config, run_dir / "adapter.gguf")
    except ValueError as err:
        print(f"[apps.code] the adapter has no llama.cpp GGUF form: {err}")
        return None


def gguf_source(base_folder: str | Path) -> Path | None:
    """The GGUF a converted base came from (its ``source.json``), when it is still there."""
    facts = Path(base_folder) / "source.json"
    if not facts.is_file():
        return None
    source = Path(json.loads(facts.read_text())["source"])
    return source if source.is_file() else None


def merged_model(module: Any) -> nn.Module:
    """The module's model with its adapter merged and added-token rows dropped (in place)."""
    from core.adapters import merge

    model = module.model
    merge(model)
    if module.new_tokens is not None:
        model.set_input_embeddings(module.new_tokens.base)
    return model


def write_merged_gguf(module: Any, path: str | Path, dtype: str = "f32") -> Path:
    """The module's model, adapter merged, as one GGUF (``transformers`` and llama.cpp load
    it). Merges in place: use a module loaded for this."""
    model = merged_model(module)
    source = gguf_source(module.base_folder)
    return write_model_gguf(model, module.tokenizer, path, dtype=dtype, tokenizer_source=source)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a code app run (runs/code/version_<n>)")
    parser.add_argument("--merged", type=Path, help="also write the merged model here (.gguf)")
    parser.add_argument("--ckpt", default="last.ckpt", help="the run's checkpoint to read")
    parser.add_argument("--dtype", default="f32", choices=["f32", "f16"])
    args = parser.parse_args(argv)
    ckpt = args.run_dir / "checkpoints" / args.ckpt
    if not ckpt.is_file():
        parser.error(
            f"no checkpoint {ckpt}: give a code app run directory (runs/code/version_<n>)."
        )
    from .module import CodeModule

    module = CodeModule.load_from_checkpoint(str(ckpt), map_location="cpu")
    if written := write_adapter_gguf(args.run_dir, module.model.config):
        print(f"LoRA adapter GGUF: {written}")
    if args.merged:
        print(f"merged model GGUF: {write_merged_gguf(module, args.merged, args.dtype)}")


if __name__ == "__main__":
    main()
