"""Peak memory of ``python -m core.merging``: TIES over three ~200M-parameter fp32 models.

Writes a seeded, Llama-shaped base model (hidden 1024, 13 layers, MLP 2816, vocab 32000:
199.8M parameters, 799 MB in fp32) and three fine-tuned variants (base + small noise) as
safetensors files, then runs the merge CLI under ``/usr/bin/time -v`` and reports its
maximum resident set size against the size of one checkpoint. The same is measured for a
process that only imports torch and core.merging, the floor any merge pays.

    .venv/bin/python -m bench.merging_memory                # ~2-4 min on 2 CPU cores
    .venv/bin/python -m bench.merging_memory --workdir /tmp/merge_bench --keep
    .venv/bin/python -m bench.merging_memory --hidden 64 --layers 2 --mlp 128 --vocab 100

Acceptance (issue 5): peak RSS below 1.5x one checkpoint's size. Not part of the unit
tests: at full size it writes ~4 GB to ``--workdir`` (deleted afterwards unless ``--keep``);
the size options make a seconds-long smoke run.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from core.merging.io import SafetensorsWriter

HIDDEN, LAYERS, MLP, VOCAB = 1024, 13, 2816, 32000


def llama_shapes(
    hidden: int = HIDDEN, layers: int = LAYERS, mlp: int = MLP, vocab: int = VOCAB
) -> list[tuple[str, tuple[int, ...]]]:
    """Tensor names and shapes of the benchmark model (Llama layout, tied embeddings)."""
    shapes: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes.append((f"{p}self_attn.{name}.weight", (hidden, hidden)))
        shapes.append((f"{p}mlp.gate_proj.weight", (mlp, hidden)))
        shapes.append((f"{p}mlp.up_proj.weight", (mlp, hidden)))
        shapes.append((f"{p}mlp.down_proj.weight", (hidden, mlp)))
        shapes.append((f"{p}input_layernorm.weight", (hidden,)))
        shapes.append((f"{p}post_attention_layernorm.weight", (hidden,)))
    shapes.append(("model.norm.weight", (hidden,)))
    return shapes


def write_model(
    path: Path, shapes: list[tuple[str, tuple[int, ...]]], seed: int, noise_seed: int | None
) -> None:
    """Base weights from ``seed``; with ``noise_seed``, plus N(0, 1e-3) fine-tuning noise."""
    writer = SafetensorsWriter(path, [(k, s, torch.float32) for k, s in shapes])
    try:
        for i, (key, shape) in enumerate(shapes):
            gen = torch.Generator().manual_seed(seed * 100_003 + i)
            value = torch.randn(shape, generator=gen) * 0.02
            if noise_seed is not None:
                noise_gen = torch.Generator().manual_seed(noise_seed * 100_003 + i)
                value += torch.randn(shape, generator=noise_gen) * 1e-3
            writer.sink(key, shape, torch.float32)(slice(0, value.numel()), value.reshape(-1))
    finally:
        writer.close()


def max_rss_kb(command: list[str]) -> tuple[int, float, str]:
    """Run ``command`` under ``/usr/bin/time -v``: (max RSS in KiB, wall seconds, stderr)."""
    start = time.time()
    proc = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
    wall = time.time() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{command} failed:\n{proc.stderr[-3000:]}")
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    if not match:
        raise RuntimeError(f"no maximum RSS in /usr/bin/time output:\n{proc.stderr[-2000:]}")
    return int(match.group(1)), wall, proc.stderr


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/core_merging_bench")
    parser.add_argument("--density", type=float, default=0.2)
    parser.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    parser.add_argument("--hidden", type=int, default=HIDDEN)
    parser.add_argument("--layers", type=int, default=LAYERS)
    parser.add_argument("--mlp", type=int, default=MLP)
    parser.add_argument("--vocab", type=int, default=VOCAB)
    parser.add_argument("--json", help="also write the result to this JSON file")
    args = parser.parse_args(argv)
    shapes = llama_shapes(args.hidden, args.layers, args.mlp, args.vocab)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    files = {"base": work / "base.safetensors"}
    files.update({f"ft{k}": work / f"ft{k}.safetensors" for k in range(3)})
    for name, path in files.items():
        if not path.exists():
            print(f"writing {path}", file=sys.stderr)
            noise = None if name == "base" else int(name[2:]) + 1
            write_model(path, shapes, seed=0, noise_seed=noise)
    checkpoint_bytes = files["base"].stat().st_size
    n_params = sum(torch.Size(s).numel() for _, s in shapes)
    out = work / "merged"
    config = {
        "method": "ties",
        "base": str(files["base"]),
        "models": [str(files[f"ft{k}"]) for k in range(3)],
        "parameters": {"density": args.density, "scaling": 1.0},
        "output": str(out),
        "overwrite": True,
    }
    config_path = work / "ties.yaml"
    config_path.write_text(json.dumps(config, indent=2))  # JSON is valid YAML
    floor_kb, _, _ = max_rss_kb([sys.executable, "-c", "import torch, core.merging"])
    peak_kb, wall, _ = max_rss_kb([sys.executable, "-m", "core.merging", str(config_path)])
    merged_bytes = (out / "model.safetensors").stat().st_size
    result = {
        "parameters_per_model": n_params,
        "checkpoint_bytes": checkpoint_bytes,
        "merged_bytes": merged_bytes,
        "import_only_max_rss_bytes": floor_kb * 1024,
        "merge_max_rss_bytes": peak_kb * 1024,
        "merge_max_rss_over_checkpoint": round(peak_kb * 1024 / checkpoint_bytes, 3),
        "merge_above_import_over_checkpoint": round(
            (peak_kb - floor_kb) * 1024 / checkpoint_bytes, 3
        ),
        "merge_wall_seconds": round(wall, 1),
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
