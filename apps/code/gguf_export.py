"""GGUF export: a LoRA adapter for llama.cpp's ``--lora``, or a whole (merged) causal LM.

GGUF is what llama.cpp (and Ollama, LM Studio, ...) run. A fine-tuned model leaves this
project in one of two ways:

- :func:`export_lora_gguf` turns a LoRA adapter saved in the PEFT layout
  (``core.adapters.save_adapter``) into an adapter GGUF that llama.cpp applies on top of the
  base model's GGUF (``llama-cli -m base.gguf --lora adapter.gguf``), so the base is shipped
  once and the adapter is a few MB;
- :func:`write_model_gguf` writes a whole model (an adapter merged into it first with
  ``core.adapters.merge``) with its byte-level BPE tokenizer, as a GGUF that llama.cpp runs
  and that ``transformers`` loads back with ``from_pretrained(folder, gguf_file=name)``.

:func:`read_gguf_tensors` and :func:`gguf_metadata` read files back (the latter also checks
that a file is a whole GGUF, e.g. to validate a user's model before training on it).

Conventions, as checked against llama.cpp (``ggml-org/llama.cpp``: ``convert_hf_to_gguf.py``,
``convert_lora_to_gguf.py``, ``src/llama-adapter.cpp``/``.h``, ``src/llama-vocab.cpp``) and
against the reader of the installed ``transformers`` (``modeling_gguf_pytorch_utils.py``,
``integrations/ggml.py``, ``integrations/gguf/gguf_tokenizer_mapping.py``):

- **Shapes.** GGUF lists a tensor's dimensions fastest-moving first (``ne[0]`` is the row
  length), the reverse of a numpy shape; ``gguf.GGUFWriter`` reverses a numpy array's shape
  itself, so arrays are handed to it in their torch/numpy layout: a Linear weight as
  ``(out, in)``, i.e. ``ne = [in, out]``.
- **q/k permutation.** Transformers' Llama rotates the two halves of each head
  (``rotate_half``); llama.cpp's ``LLM_ARCH_LLAMA`` rotates adjacent pairs. The converter
  therefore reorders the rows of ``q_proj`` (with ``n_head`` heads) and ``k_proj`` (with
  ``n_head_kv`` heads): ``w.reshape(n_head, 2, head_dim // 2, in).swapaxes(1, 2)``
  (:func:`permute_qk_rows`), and the transformers loader undoes it
  (:func:`unpermute_qk_rows`). Qwen2 uses NeoX-style RoPE in llama.cpp and is written
  unpermuted (``GgufArch.permute_qk=False``).
- **LoRA tensors.** For a base weight ``blk.{i}.attn_q.weight`` the adapter holds
  ``blk.{i}.attn_q.weight.lora_a`` = A as ``(r, in)`` (``ne = [in, r]``) and
  ``...lora_b`` = B as ``(out, r)`` (``ne = [r, out]``). ``llama-adapter.cpp`` checks exactly
  ``base.ne[0] == a.ne[0]``, ``base.ne[1] == b.ne[1]`` and ``a.ne[1] == b.ne[0]``. With the
  base's rows permuted, ``W' = P W``, the update must be ``P (B A) = (P B) A``: only B's rows
  are permuted, A is written as is (the converter gets the same through its
  ``LoraTorchTensor``, whose reshape/permute act on B).
- **LoRA metadata.** ``general.type = "adapter"``, ``adapter.type = "lora"``,
  ``adapter.lora.alpha`` (float32), and ``general.architecture`` equal to the base's (llama.cpp
  refuses an adapter whose architecture differs). There is no rank key: llama.cpp takes the
  rank of each pair from ``lora_b.ne[0]`` and applies ``scale = user_scale * alpha / rank``
  (``llama_adapter_lora_weight::get_scale``), or just ``user_scale`` when alpha is 0 or
  missing; the graph adds ``scale * B (A x)`` to ``W x``. One alpha serves every tensor, so
  an adapter is exportable when ``s_i * r_i`` is the same for all its modules (``s_i`` its
  scale here): plain LoRA with any ``rank_pattern``, rsLoRA with a single rank (written as
  ``alpha * sqrt(r)``), an ``alpha_pattern`` that changes nothing. Other patterns, DoRA
  (llama.cpp has no magnitude vector) and ``modules_to_save`` are refused with the reason.
- **Tokenizer.** A byte-level BPE with the GPT-2 pre-tokenizer is written as
  ``tokenizer.ggml.model = "gpt2"``, ``tokenizer.ggml.pre = "gpt-2"`` (llama.cpp's name for
  the GPT-2 split regex; transformers falls back to the same GPT-2 ``ByteLevel`` split),
  one token per embedding row (missing ids become ``[PAD{i}]`` of type UNUSED, as the
  converter writes them), token types NORMAL / CONTROL (special added tokens and
  ``<|...|>``) / USER_DEFINED (other added tokens), ``"a b"`` merges, the special ids and
  ``add_bos_token`` / ``add_eos_token`` as the tokenizer behaves. A tokenizer with more ids
  than the model has embedding rows is refused (resize the embeddings first).
- **Precision.** ``"f32"`` writes everything in float32; ``"f16"`` writes matrices in
  float16 and vectors (norms) in float32, as the converter does.

Every file is written to a hidden temporary file next to the destination and renamed onto
it (:func:`core.atomic.atomic_write`), so a reader never sees half a GGUF.

Adding an architecture: an entry in :data:`ARCHITECTURES` (e.g. ``"qwen2": GgufArch("qwen2",
gguf.MODEL_ARCH.QWEN2, permute_qk=False)``), and letting :func:`_check_model_config` accept
its q/k/v biases (the tensor name map already names ``...bias`` tensors).
"""

from __future__ import annotations

import json
import math
import mmap
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from torch import nn

from core.atomic import atomic_write

__all__ = [
    "ARCHITECTURES",
    "DTYPES",
    "LORA_TARGETS",
    "GgufArch",
    "export_lora_gguf",
    "gguf_metadata",
    "gguf_tensor_name",
    "permute_qk_rows",
    "read_gguf_tensors",
    "unpermute_qk_rows",
    "write_model_gguf",
]

#: Output precisions: ``"f32"``, or ``"f16"`` (matrices in float16, vectors in float32).
DTYPES = ("f32", "f16")
_FILE_TYPE = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16}
#: GGUF tensor kinds (``blk.{i}.<kind>.weight``) a llama.cpp LoRA adapter can hold, with the
#: transformers module each comes from; ``output`` (``lm_head``) only when not tied.
LORA_TARGETS = {
    "attn_q": "q_proj",
    "attn_k": "k_proj",
    "attn_v": "v_proj",
    "attn_output": "o_proj",
    "ffn_gate": "gate_proj",
    "ffn_up": "up_proj",
    "ffn_down": "down_proj",
    "output": "lm_head",
}
_PEFT_PREFIX = "base_model.model."
_SPECIAL_LOOKING = ("<|", "|>")


# ----------------------------------------------------------------------------- architectures
@dataclass(frozen=True)
class GgufArch:
    """How one transformers ``model_type`` is written to GGUF.

    Args:
        name: ``general.architecture`` and the prefix of the architecture's metadata keys.
        model_arch: ``gguf.MODEL_ARCH`` member, whose tensor name map names the tensors.
        permute_qk: Reorder q/k rows for llama.cpp's adjacent-pair RoPE (llama: yes; the
            NeoX-RoPE families such as qwen2: no).
    """

    name: str
    model_arch: gguf.MODEL_ARCH
    permute_qk: bool


#: Transformers ``model_type`` -> how it is written. Only Llama for now (see the docstring).
ARCHITECTURES: dict[str, GgufArch] = {
    "llama": GgufArch("llama", gguf.MODEL_ARCH.LLAMA, permute_qk=True),
}


def _arch_for(config: Any, what: str) -> GgufArch:
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"{what} has model_type={model_type!r}; GGUF export supports "
            f"{sorted(ARCHITECTURES)} only. Export a model of a supported architecture, or add "
            "one to apps.code.gguf_export.ARCHITECTURES."
        )
    return ARCHITECTURES[model_type]


@lru_cache(maxsize=16)
def _name_map(model_arch: gguf.MODEL_ARCH, n_layers: int) -> gguf.TensorNameMap:
    return gguf.get_tensor_name_map(model_arch, n_layers)


def gguf_tensor_name(hf_name: str, arch: GgufArch, n_layers: int) -> str | None:
    """The GGUF name of transformers tensor ``hf_name`` (``"model.layers.0.self_attn.q_proj
    .weight"`` -> ``"blk.0.attn_q.weight"``), or ``None`` if llama.cpp has no such tensor."""
    return _name_map(arch.model_arch, n_layers).get_name(hf_name, try_suffixes=(".weight", ".bias"))


def _kind(gguf_name: str) -> str:
    """``"blk.3.attn_q.weight"`` -> ``"attn_q"``; ``"output.weight"`` -> ``"output"``."""
    parts = gguf_name.split(".")
    return parts[2] if parts[0] == "blk" else parts[0]


# ----------------------------------------------------------------------------- q/k permutation
def _head_rows(rows: int, n_head: int, what: str) -> int:
    if n_head < 1 or rows % (2 * n_head):
        raise ValueError(
            f"{what} has {rows} rows, which do not split into {n_head} heads of an even size; "
            "the base config's head counts do not fit this tensor (wrong base model?)."
        )
    return rows // n_head // 2


def permute_qk_rows(weight: np.ndarray, n_head: int, what: str = "tensor") -> np.ndarray:
    """Rows of a q/k weight (or LoRA B) reordered the way llama.cpp's converter does.

    ``n_head`` is the number of heads of that projection (``num_key_value_heads`` for k).
    Each head's rows ``[x_0 .. x_{d/2-1}, y_0 .. y_{d/2-1}]`` become ``[x_0, y_0, x_1, y_1,
    ...]``, turning transformers' half-rotation RoPE into ggml's adjacent-pair one.
    """
    half = _head_rows(weight.shape[0], n_head, what)
    rest = weight.shape[1:]
    return weight.reshape(n_head, 2, half, *rest).swapaxes(1, 2).reshape(weight.shape)


def unpermute_qk_rows(weight: np.ndarray, n_head: int, what: str = "tensor") -> np.ndarray:
    """The inverse of :func:`permute_qk_rows` (what the transformers GGUF loader applies)."""
    half = _head_rows(weight.shape[0], n_head, what)
    rest = weight.shape[1:]
    return weight.reshape(n_head, half, 2, *rest).swapaxes(1, 2).reshape(weight.shape)


def _qk_heads(kind: str, config: Any) -> int | None:
    """Heads to permute tensor kind ``kind`` with, or ``None`` when it is not q/k."""
    if kind == "attn_q":
        return int(config.num_attention_heads)
    if kind == "attn_k":
        return int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    return None


def _to_gguf_layout(array: np.ndarray, kind: str, arch: GgufArch, config: Any, what: str):
    heads = _qk_heads(kind, config) if arch.permute_qk else None
    return array if heads is None else permute_qk_rows(array, heads, what)


# ----------------------------------------------------------------------------- writing
def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"GGUF dtype={dtype!r} is not supported; use one of {list(DTYPES)}.")


def _cast(array: np.ndarray, dtype: str) -> np.ndarray:
    """float32, or float16 for matrices under ``"f16"`` (vectors stay float32 there)."""
    target = np.float16 if dtype == "f16" and array.ndim >= 2 else np.float32
    return np.ascontiguousarray(array, dtype=target)


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu", torch.float32).numpy()


def _new_writer(arch: GgufArch, kind: str, dtype: str, name: str | None) -> gguf.GGUFWriter:
    writer = gguf.GGUFWriter(None, arch.name)
    writer.add_type(kind)
    if name:
        writer.add_name(name)
    writer.add_file_type(_FILE_TYPE[dtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    return writer


def _save(writer: gguf.GGUFWriter, path: str | Path) -> Path:
    """Write ``writer``'s header, metadata and tensors to ``path`` atomically."""

    def write(tmp: Path) -> None:
        try:
            writer.write_header_to_file(path=tmp)
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()

    return atomic_write(path, write)


# ----------------------------------------------------------------------------- whole models
def _check_model_config(config: Any, arch: GgufArch) -> None:
    """Refuse the Llama options llama.cpp's ``llama`` architecture would compute differently."""
    problems = []
    if getattr(config, "hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={config.hidden_act!r} (llama.cpp's llama uses silu)")
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(config, flag, False):
            problems.append(f"{flag}=True (no biases in this export)")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        problems.append(f"rope_type={rope_type!r} (only default RoPE is exported)")
    if problems:
        raise ValueError(
            f"cannot export this {arch.name} model to GGUF: {'; '.join(problems)}. Export a "
            "model with the standard Llama settings."
        )


def _rope_theta(config: Any) -> float:
    rope = getattr(config, "rope_parameters", None) or {}
    return float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def _head_dim(config: Any) -> int:
    head_dim = getattr(config, "head_dim", None)
    return int(head_dim or config.hidden_size // config.num_attention_heads)


def _add_arch_metadata(writer: gguf.GGUFWriter, config: Any, n_vocab: int) -> None:
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(config.num_attention_heads))
    writer.add_head_count_kv(int(_qk_heads("attn_k", config)))
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_dimension_count(_head_dim(config))
    writer.add_vocab_size(n_vocab)
    if _head_dim(config) * config.num_attention_heads != config.hidden_size:
        writer.add_key_length(_head_dim(config))
        writer.add_value_length(_head_dim(config))


def _logical_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters under their transformers names, adapters merged in.

    A layer wrapped by ``core.adapters`` counts as its base layer, whose weight holds the
    adapters once :func:`core.adapters.merge` folded them in; unmerged adapters are refused,
    since writing the base weight alone would silently drop them.
    """
    from core.adapters import adapter_layers, logical_modules

    unmerged = [
        name
        for name, layer in adapter_layers(model)
        if any(n not in layer.merged for n in layer.adapters)
    ]
    if unmerged:
        raise ValueError(
            f"the model has unmerged adapters on {len(unmerged)} layer(s) (e.g. {unmerged[0]!r}); "
            "call core.adapters.merge(model) with every adapter active first, or export the "
            "adapter alone with export_lora_gguf."
        )
    params: dict[str, torch.Tensor] = {}
    for module_name, module in logical_modules(model).items():
        for local, param in module.named_parameters(recurse=False):
            params[f"{module_name}.{local}"] = param
    return params


def _tied(model: nn.Module) -> bool:
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return bool(getattr(text, "tie_word_embeddings", False))


def _model_tensors(model: nn.Module, arch: GgufArch, dtype: str) -> dict[str, np.ndarray]:
    """GGUF name -> array in GGUF layout (q/k permuted), for every weight of ``model``."""
    config = model.config
    tied = _tied(model)
    tensors: dict[str, np.ndarray] = {}
    unknown = []
    for hf_name, param in _logical_parameters(model).items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when output.weight is absent
        name = gguf_tensor_name(hf_name, arch, int(config.num_hidden_layers))
        if name is None:
            unknown.append(hf_name)
            continue
        array = _to_gguf_layout(_numpy(param), _kind(name), arch, config, hf_name)
        tensors[name] = _cast(array, dtype)
    if unknown:
        raise ValueError(
            f"model parameters {unknown[:5]} have no GGUF tensor name for architecture "
            f"{arch.name!r}; only standard {arch.name} models can be exported."
        )
    if "token_embd.weight" not in tensors:
        raise ValueError("the model has no token embedding (model.embed_tokens); cannot export.")
    return tensors


def write_model_gguf(
    model: nn.Module,
    tokenizer: Any,
    path: str | Path,
    dtype: str = "f32",
    *,
    tokenizer_source: str | Path | None = None,
    name: str | None = None,
) -> Path:
    """Write a causal LM and its tokenizer as one GGUF model file, atomically.

    Args:
        model: A transformers causal LM of a supported architecture (Llama); adapters added
            with ``core.adapters`` must be merged first (``core.adapters.merge``).
        tokenizer: Its fast byte-level BPE tokenizer (GPT-2 pre-tokenizer), e.g. one from
            ``apps.code.tokenizer.train_bpe``. Ignored when ``tokenizer_source`` is given.
        path: The ``.gguf`` file to write; its folder is created.
        dtype: ``"f32"`` or ``"f16"`` (matrices in float16, norms in float32).
        tokenizer_source: A GGUF file whose ``tokenizer.*`` metadata is copied as is, e.g.
            the GGUF the model was loaded from (keeps its exact pre-tokenizer and template).
        name: ``general.name`` (optional).

    Returns:
        ``path``. Load it back with ``AutoModelForCausalLM.from_pretrained(folder,
        gguf_file=file name)`` or run it with llama.cpp.

    Raises:
        ValueError: unsupported architecture or settings, unmerged adapters, a tokenizer
            that is not byte-level BPE or has more ids than the model's embedding rows.
    """
    _check_dtype(dtype)
    arch = _arch_for(model.config, "the model")
    _check_model_config(model.config, arch)
    tensors = _model_tensors(model, arch, dtype)
    n_vocab = int(tensors["token_embd.weight"].shape[0])
    writer = _new_writer(arch, gguf.GGUFType.MODEL, dtype, name)
    _add_arch_metadata(writer, model.config, n_vocab)
    if tokenizer_source is not None:
        _copy_tokenizer_metadata(writer, tokenizer_source, n_vocab)
    else:
        _add_tokenizer_metadata(writer, tokenizer, n_vocab)
    for tensor_name, array in tensors.items():
        writer.add_tensor(tensor_name, array)
    return _save(writer, path)


# ----------------------------------------------------------------------------- tokenizer
def _backend_spec(tokenizer: Any) -> dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} has no fast (tokenizers) backend; GGUF export "
            "needs a fast byte-level BPE tokenizer (e.g. apps.code.tokenizer.train_bpe)."
        )
    return json.loads(backend.to_str())


def _gpt2_pre_tokenizer(spec: dict[str, Any]) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` for the tokenizer, or a ValueError saying why not."""
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    problems = []
    if model.get("type") != "BPE":
        problems.append(f"model type {model.get('type')!r} (needs BPE)")
    if spec.get("normalizer") is not None:
        problems.append(f"normalizer {spec['normalizer'].get('type')!r} (needs none)")
    gpt2 = (
        pre.get("type") == "ByteLevel"
        and pre.get("use_regex", True)
        and not pre.get("add_prefix_space", False)
    )
    if not gpt2:
        problems.append(f"pre-tokenizer {pre.get('type')!r} (needs GPT-2 ByteLevel, no prefix)")
    if problems:
        raise ValueError(
            f"the tokenizer cannot be written as a GGUF gpt2 vocabulary: {'; '.join(problems)}. "
            "Use a byte-level BPE tokenizer (apps.code.tokenizer.train_bpe), or pass "
            "tokenizer_source=<the GGUF the model came from> to copy its tokenizer."
        )
    return "gpt-2"


def _merges(model: dict[str, Any]) -> list[str]:
    return [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]


def _vocab_and_types(spec: dict[str, Any], n_vocab: int) -> tuple[list[str], list[int]]:
    """One token and one ``gguf.TokenType`` per embedding row."""
    by_id: dict[int, str] = {int(i): t for t, i in spec["model"]["vocab"].items()}
    types: dict[int, int] = dict.fromkeys(by_id, gguf.TokenType.NORMAL)
    for added in spec.get("added_tokens") or []:
        token, token_id = added["content"], int(added["id"])
        by_id[token_id] = token
        special = added.get("special") or (
            token.startswith(_SPECIAL_LOOKING[0]) and token.endswith(_SPECIAL_LOOKING[1])
        )
        types[token_id] = gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED
    top = max(by_id) + 1
    if top > n_vocab:
        raise ValueError(
            f"the tokenizer has ids up to {top - 1} but the model's embedding has {n_vocab} rows; "
            "call model.resize_token_embeddings(len(tokenizer)) (and train the new rows) before "
            "exporting, or export with the tokenizer the model was trained with."
        )
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(n_vocab)]
    token_types = [int(types.get(i, gguf.TokenType.UNUSED)) for i in range(n_vocab)]
    return tokens, token_types


def _adds_special(tokenizer: Any, token_id: int | None, at_start: bool) -> bool:
    """Whether encoding with special tokens puts ``token_id`` at the start (or end)."""
    if token_id is None:
        return False
    plain = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a", add_special_tokens=True)
    if len(full) <= len(plain):
        return False
    return (full[0] if at_start else full[-1]) == token_id


def _add_tokenizer_metadata(writer: gguf.GGUFWriter, tokenizer: Any, n_vocab: int) -> None:
    spec = _backend_spec(tokenizer)
    pre = _gpt2_pre_tokenizer(spec)
    tokens, token_types = _vocab_and_types(spec, n_vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(_merges(spec["model"]))
    ids = {
        writer.add_bos_token_id: tokenizer.bos_token_id,
        writer.add_eos_token_id: tokenizer.eos_token_id,
        writer.add_unk_token_id: tokenizer.unk_token_id,
        writer.add_pad_token_id: tokenizer.pad_token_id,
    }
    for add, token_id in ids.items():
        if token_id is not None and 0 <= int(token_id) < n_vocab:
            add(int(token_id))
    writer.add_add_bos_token(_adds_special(tokenizer, tokenizer.bos_token_id, at_start=True))
    writer.add_add_eos_token(_adds_special(tokenizer, tokenizer.eos_token_id, at_start=False))
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        writer.add_chat_template(template)


def _copy_tokenizer_metadata(writer: gguf.GGUFWriter, source: str | Path, n_vocab: int) -> None:
    header = _read_header(source)
    entries = {k: v for k, v in header.kv.items() if k.startswith("tokenizer.")}
    tokens = entries.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise ValueError(
            f"{str(source)!r} has no tokenizer (tokenizer.ggml.tokens); cannot copy it."
        )
    if len(tokens.value) != n_vocab:
        raise ValueError(
            f"the tokenizer of {str(source)!r} has {len(tokens.value)} tokens but the model's "
            f"embedding has {n_vocab} rows; copy the tokenizer of the GGUF this model came from."
        )
    for key, entry in entries.items():
        writer.add_key_value(key, entry.value, entry.type, sub_type=entry.sub_type)


# ----------------------------------------------------------------------------- LoRA adapters
def _resolve_base_config(base: Any) -> Any:
    """A transformers config from a config, a model folder or a base model's GGUF file."""
    if not isinstance(base, (str, Path)):
        return getattr(base, "config", base) if isinstance(base, nn.Module) else base
    from transformers import AutoConfig

    path = Path(base)
    if path.is_file() and path.suffix == ".gguf":
        gguf_metadata(path)  # a clear error for a broken file
        return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    if (path / "config.json").is_file():
        return AutoConfig.from_pretrained(str(path), local_files_only=True)
    raise FileNotFoundError(
        f"base {str(path)!r} is neither a .gguf file nor a folder with config.json; pass the "
        "base model's config, its save_pretrained folder or its GGUF."
    )


def _lora_config(config: Any, where: Path) -> Any:
    from core.adapters import LoraConfig

    if not isinstance(config, LoraConfig):
        raise ValueError(
            f"adapter {str(where)!r} is a {config.method!r} adapter; llama.cpp loads LoRA "
            "adapters only (merge it and use write_model_gguf instead)."
        )
    if config.use_dora:
        raise ValueError(
            f"adapter {str(where)!r} has use_dora=True; llama.cpp has no DoRA (no magnitude "
            "vector), so it cannot run it as an adapter. Merge it (core.adapters.merge) and "
            "export the whole model with write_model_gguf, or train with use_dora=False."
        )
    if config.modules_to_save:
        raise ValueError(
            f"adapter {str(where)!r} has modules_to_save={config.modules_to_save}; a llama.cpp "
            "adapter holds LoRA pairs only. Merge it and export the whole model with "
            "write_model_gguf, or train without modules_to_save."
        )
    return config


def _lora_pairs(
    tensors: Mapping[str, torch.Tensor], where: Path
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Module path -> (A, B) from PEFT keys ``base_model.model.<module>.lora_{A,B}.weight``."""
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        module, _, local = key.removeprefix(_PEFT_PREFIX).rpartition(".lora_")
        if local not in ("A.weight", "B.weight"):
            raise ValueError(
                f"adapter tensor {key!r} in {str(where)!r} is not a LoRA A/B factor (a DoRA "
                "magnitude or a saved module?); llama.cpp adapters hold LoRA pairs only."
            )
        halves.setdefault(module, {})[local[0]] = tensor
    pairs = {}
    for module, half in halves.items():
        if set(half) != {"A", "B"}:
            raise ValueError(
                f"adapter {str(where)!r} lacks a LoRA factor of {module!r}; re-save it."
            )
        a, b = half["A"], half["B"]
        if a.ndim != 2 or b.ndim != 2 or b.shape[1] != a.shape[0]:
            raise ValueError(
                f"LoRA factors of {module!r} in {str(where)!r} have shapes {tuple(a.shape)} and "
                f"{tuple(b.shape)}; only Linear layers (A: r x in, B: out x r) can be exported."
            )
        pairs[module] = (a, b)
    if not pairs:
        raise ValueError(f"adapter {str(where)!r} holds no LoRA tensors.")
    return pairs


def _file_alpha(config: Any, pairs: Mapping[str, tuple[torch.Tensor, ...]], where: Path) -> float:
    """The one ``adapter.lora.alpha`` with which llama.cpp's ``alpha / rank`` gives every
    module its scale here, or a ValueError when the modules need different ones."""
    alphas: dict[str, float] = {}
    for module, (a, _) in pairs.items():
        rank, scale = config.scaling_for(module)
        if rank != a.shape[0]:
            raise ValueError(
                f"adapter {str(where)!r}: {module!r} has rank {a.shape[0]} in the weights but "
                f"{rank} in adapter_config.json; re-save the adapter."
            )
        alphas[module] = scale * rank
    values = sorted(set(alphas.values()))
    if not math.isclose(values[0], values[-1], rel_tol=1e-6):
        raise ValueError(
            f"adapter {str(where)!r} scales its modules differently (alpha*scale/rank ranging "
            f"{values[0]:g}..{values[-1]:g}, from rank_pattern/alpha_pattern/use_rslora); "
            "llama.cpp applies one adapter.lora.alpha / rank to every tensor. Use one alpha (and "
            "one rank with rsLoRA), or merge the adapter and use write_model_gguf."
        )
    if values[0] == 0:
        raise ValueError(
            f"adapter {str(where)!r} has lora_alpha=0, which llama.cpp reads as 'no scaling' "
            "(scale 1) although the adapter changes nothing here; nothing sensible to export."
        )
    return float(values[0])


def _expected_shape(kind: str, config: Any) -> tuple[int, int]:
    """(out, in) of base tensor kind ``kind`` under ``config``."""
    hidden, inter, head_dim = config.hidden_size, config.intermediate_size, _head_dim(config)
    q_out = config.num_attention_heads * head_dim
    kv_out = _qk_heads("attn_k", config) * head_dim
    shapes = {
        "attn_q": (q_out, hidden),
        "attn_k": (kv_out, hidden),
        "attn_v": (kv_out, hidden),
        "attn_output": (hidden, q_out),
        "ffn_gate": (inter, hidden),
        "ffn_up": (inter, hidden),
        "ffn_down": (hidden, inter),
        "output": (config.vocab_size, hidden),
    }
    return tuple(int(n) for n in shapes[kind])


def _lora_target(module: str, arch: GgufArch, config: Any, where: Path) -> str:
    """The GGUF base tensor (``blk.0.attn_q.weight``) adapter module ``module`` changes."""
    name = gguf_tensor_name(f"{module}.weight", arch, int(config.num_hidden_layers))
    kind = _kind(name) if name else None
    if kind not in LORA_TARGETS:
        raise ValueError(
            f"adapter {str(where)!r} targets {module!r}, which has no llama.cpp LoRA tensor for "
            f"a {arch.name} base with {config.num_hidden_layers} layers. Supported targets: "
            f"{sorted(set(LORA_TARGETS.values()))}; retrain without it (target_modules)."
        )
    if kind == "output" and bool(getattr(config, "tie_word_embeddings", False)):
        raise ValueError(
            f"adapter {str(where)!r} targets {module!r}, but the base ties lm_head to the "
            "embedding, so its GGUF has no output.weight for llama.cpp to adapt; retrain without "
            "lm_head in target_modules."
        )
    return name


def export_lora_gguf(
    adapter_dir: str | Path,
    base: Any,
    path: str | Path,
    dtype: str = "f32",
    *,
    name: str | None = None,
) -> Path:
    """Write a PEFT-layout LoRA adapter as a llama.cpp adapter GGUF, atomically.

    Args:
        adapter_dir: The adapter folder (``adapter_config.json`` +
            ``adapter_model.safetensors``, as ``core.adapters.save_adapter`` writes it).
        base: The base model's transformers config (e.g. ``LlamaConfig``; a model is taken
            for its ``.config``), its ``save_pretrained`` folder, or its GGUF file. Gives the
            architecture and the head counts of the q/k permutation.
        path: The ``.gguf`` file to write.
        dtype: ``"f32"`` (what llama.cpp's converter writes by default) or ``"f16"``.
        name: ``general.name`` (optional).

    Returns:
        ``path``: run it with ``llama-cli -m <base>.gguf --lora <path>`` (the base GGUF
        written by :func:`write_model_gguf` or llama.cpp's converter).

    Raises:
        ValueError: a DoRA / non-LoRA adapter, ``modules_to_save``, per-module scales one
            alpha cannot express, a target without a llama.cpp tensor, an unsupported base
            architecture, or factors that do not fit the base config.
    """
    from core.adapters import read_adapter

    _check_dtype(dtype)
    where = Path(adapter_dir)
    adapter_config, tensors = read_adapter(where)
    config = _lora_config(adapter_config, where)
    base_config = _resolve_base_config(base)
    arch = _arch_for(base_config, f"the base model of adapter {str(where)!r}")
    pairs = _lora_pairs(tensors, where)
    alpha = _file_alpha(config, pairs, where)
    writer = _new_writer(arch, gguf.GGUFType.ADAPTER, dtype, name)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for module in sorted(pairs, key=_natural_key):
        a, b = pairs[module]
        target = _lora_target(module, arch, base_config, where)
        kind = _kind(target)
        expected = _expected_shape(kind, base_config)
        if (b.shape[0], a.shape[1]) != expected:
            raise ValueError(
                f"adapter {str(where)!r}: {module!r} changes a {b.shape[0]} x {a.shape[1]} weight "
                f"but the base config's {kind} is {expected[0]} x {expected[1]}; export against "
                "the base the adapter was trained on."
            )
        b_gguf = _to_gguf_layout(_numpy(b), kind, arch, base_config, f"{module}.lora_B")
        writer.add_tensor(f"{target}.lora_a", _cast(_numpy(a), dtype))
        writer.add_tensor(f"{target}.lora_b", _cast(b_gguf, dtype))
    return _save(writer, path)


def _natural_key(name: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in name.split("."))


# ----------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class _Entry:
    type: gguf.GGUFValueType
    value: Any
    sub_type: gguf.GGUFValueType | None = None


@dataclass(frozen=True)
class _Header:
    kv: dict[str, _Entry]
    tensors: dict[str, tuple[tuple[int, ...], gguf.GGMLQuantizationType]]  # numpy shape, type


class _Truncated(Exception):
    pass


_SCALARS = {
    gguf.GGUFValueType.UINT8: "<B",
    gguf.GGUFValueType.INT8: "<b",
    gguf.GGUFValueType.UINT16: "<H",
    gguf.GGUFValueType.INT16: "<h",
    gguf.GGUFValueType.UINT32: "<I",
    gguf.GGUFValueType.INT32: "<i",
    gguf.GGUFValueType.FLOAT32: "<f",
    gguf.GGUFValueType.BOOL: "<?",
    gguf.GGUFValueType.UINT64: "<Q",
    gguf.GGUFValueType.INT64: "<q",
    gguf.GGUFValueType.FLOAT64: "<d",
}


class _Cursor:
    """Little-endian reads from a buffer that raise :class:`_Truncated` past its end."""

    def __init__(self, buf: Any) -> None:
        self.buf, self.pos, self.size = buf, 0, len(buf)

    def take(self, fmt: str) -> Any:
        width = struct.calcsize(fmt)
        if self.pos + width > self.size:
            raise _Truncated
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += width
        return value

    def string(self) -> str:
        length = self.take("<Q")
        if self.pos + length > self.size:
            raise _Truncated
        raw = self.buf[self.pos : self.pos + length]
        self.pos += length
        return raw.decode("utf-8")

    def value(self, vtype: gguf.GGUFValueType) -> _Entry:
        if vtype in _SCALARS:
            return _Entry(vtype, self.take(_SCALARS[vtype]))
        if vtype == gguf.GGUFValueType.STRING:
            return _Entry(vtype, self.string())
        if vtype == gguf.GGUFValueType.ARRAY:
            sub = gguf.GGUFValueType(self.take("<I"))
            count = self.take("<Q")
            if sub in _SCALARS:
                fmt = _SCALARS[sub]
                end = self.pos + count * struct.calcsize(fmt)
                if end > self.size:
                    raise _Truncated
                values = np.frombuffer(self.buf[self.pos : end], dtype=fmt).tolist()
                self.pos = end
            else:
                values = [self.value(sub).value for _ in range(count)]
            return _Entry(vtype, values, sub)
        raise ValueError(f"unknown metadata value type {vtype}")


def _read_header(path: str | Path) -> _Header:
    """Metadata and tensor table of a GGUF, checking the data section is all there."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {str(path)!r} does not exist (or is not a file).")
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse_header(_Cursor(buf))
    except (_Truncated, ValueError, UnicodeDecodeError, OverflowError, KeyError) as err:
        detail = f" ({err})" if str(err) else ""
        raise ValueError(
            f"{str(path)!r} is not a GGUF file or truncated{detail}; re-download or re-export it."
        ) from None


def _parse_header(cur: _Cursor) -> _Header:
    if cur.take("<I") != gguf.GGUF_MAGIC:
        raise ValueError("no GGUF magic")
    version = cur.take("<I")
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} is not supported (little-endian v2/v3 are)")
    n_tensors, n_kv = cur.take("<Q"), cur.take("<Q")
    kv: dict[str, _Entry] = {}
    for _ in range(n_kv):
        key = cur.string()
        kv[key] = cur.value(gguf.GGUFValueType(cur.take("<I")))
    infos = []
    for _ in range(n_tensors):
        name = cur.string()
        dims = [cur.take("<Q") for _ in range(cur.take("<I"))]
        ggml_type = gguf.GGMLQuantizationType(cur.take("<I"))
        infos.append((name, tuple(reversed(dims)), ggml_type, cur.take("<Q")))
    alignment = int(kv["general.alignment"].value) if "general.alignment" in kv else 32
    data_start = -(-cur.pos // alignment) * alignment
    for name, shape, ggml_type, offset in infos:
        block, size = gguf.GGML_QUANT_SIZES[ggml_type]
        if data_start + offset + math.prod(shape) * size // block > cur.size:
            raise ValueError(f"tensor {name!r} runs past the end of the file")
    return _Header(kv, {name: (shape, ggml_type) for name, shape, ggml_type, _ in infos})


def gguf_metadata(path: str | Path) -> dict[str, Any]:
    """All metadata of a GGUF file as ``{key: value}`` (arrays as lists), e.g.
    ``gguf_metadata(p)["general.architecture"] == "llama"``.

    Reads only the header (fast even for large models) but checks that every tensor's data
    lies inside the file, so a truncated download is caught here.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a GGUF file or truncated (the message names the file).
    """
    return {key: entry.value for key, entry in _read_header(path).kv.items()}


def read_gguf_tensors(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of a GGUF file as a float/int numpy array with its numpy shape
    (a Linear weight as ``(out, in)``); quantized tensors are dequantized to float32.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a GGUF file or truncated.
    """
    _read_header(path)  # clear errors for broken files before GGUFReader's own
    reader = gguf.GGUFReader(path)
    plain = {
        gguf.GGMLQuantizationType.F32,
        gguf.GGMLQuantizationType.F16,
        gguf.GGMLQuantizationType.F64,
        gguf.GGMLQuantizationType.I8,
        gguf.GGMLQuantizationType.I16,
        gguf.GGMLQuantizationType.I32,
        gguf.GGMLQuantizationType.I64,
    }
    out = {}
    for tensor in reader.tensors:
        if tensor.tensor_type in plain:
            out[tensor.name] = np.array(tensor.data)
        else:
            out[tensor.name] = gguf.dequantize(tensor.data, tensor.tensor_type)
    return out
