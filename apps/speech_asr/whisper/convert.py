"""CTranslate2 (faster-whisper) Whisper models ⇄ ``transformers`` Whisper, tensor for tensor.

:func:`ctranslate2_to_transformers` turns a faster-whisper folder (``model.bin``,
``config.json``, ``tokenizer.json``) into a ``save_pretrained`` folder that
``WhisperForConditionalGeneration`` / ``WhisperProcessor`` load and that
``model.generate(features, language="de", task="transcribe")`` works with; weights become
float32 (float16 → float32 is exact). :func:`transformers_to_ctranslate2` goes back, writing
the names, fusions, scalars and aliases CTranslate2's own converter (4.x) writes, so a
fine-tuned, merged model runs in faster-whisper again.

Both directions use one table, :func:`tensor_mappings`, and both refuse to drop anything: a
CTranslate2 variable the table does not place, or a ``transformers`` parameter it leaves
unfilled, is an error naming it. What the mapping does, and why:

- **Fused projections.** CTranslate2 fuses self-attention q, k, v into
  ``self_attention/linear_0`` and cross-attention k, v into ``attention/linear_1`` (rows
  concatenated: the output dimension). They are split into equal row blocks.
- **Key bias.** ``transformers``' Whisper has no bias on ``k_proj`` (neither has OpenAI's);
  CTranslate2 stores zeros in that block. A non-zero key bias would not change the model
  either: it adds ``q·b_k`` to every score of a query's row, and softmax is invariant to a
  constant added to a row, so the attention weights are the same. The block is therefore
  dropped on reading (exact in exact arithmetic, whatever it holds) and written as zeros.
- **Output projection.** ``decoder/projection/weight`` is ``proj_out.weight``. CTranslate2
  stores it as an alias of ``decoder/embeddings/weight`` when the two are equal (Whisper
  ties them); then the converted model ties them too (``tie_word_embeddings``), otherwise it
  keeps them separate.
- **Scalars** (rank-0 variables, :data:`SCALARS`): ``encoder/num_heads`` and
  ``decoder/num_heads`` give the head counts (a file without them gets the count of
  OpenAI's model of that width, :data:`HEADS_BY_WIDTH`). ``decoder/activation`` (GELU),
  ``pre_norm``, ``scale_embeddings``, ``alibi``, ``start_from_zero_embedding`` must have the
  values Whisper has, since ``transformers``' Whisper cannot represent others.
  ``alignment_layer`` / ``alignment_heads`` are CTranslate2 run-time settings for returning
  attention (Whisper's word alignment uses ``config.json``'s ``alignment_heads``
  instead), and ``alibi_use_positive_positions`` / ``scale_alibi`` only matter with ALiBi:
  accepted as they are, and written with CTranslate2's values.
- The generation config follows OpenAI's ``whisper-*`` ones on the Hub: special-token ids
  from ``tokenizer.json``, ``lang_to_id`` from the ``lang_ids`` of ``config.json``,
  ``suppress_tokens`` / ``begin_suppress_tokens`` from ``suppress_ids(_begin)``,
  ``alignment_heads``, ``max_length`` = the decoder's positions, no forced decoder ids.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from core.atomic import atomic_directory, atomic_write_text

from .ctranslate2 import (
    CTranslate2Model,
    alias_duplicates,
    read_model_bin,
    read_spec_name,
    write_model_bin,
)

if TYPE_CHECKING:
    from transformers import GenerationConfig, WhisperForConditionalGeneration

__all__ = [
    "CT2_FILES",
    "HEADS_BY_WIDTH",
    "SCALARS",
    "WHISPER_SPEC",
    "Scalar",
    "TensorMapping",
    "WhisperDims",
    "convert_into",
    "ct2_to_hf_state_dict",
    "ct2_vocabulary",
    "ctranslate2_to_transformers",
    "hf_to_ct2_variables",
    "tensor_mappings",
    "transformers_to_ctranslate2",
]

WHISPER_SPEC = "WhisperSpec"
#: What a CTranslate2 Whisper folder must hold for the conversion.
CT2_FILES = ("model.bin", "config.json", "tokenizer.json")
#: Attention heads of OpenAI's Whisper sizes, by width (tiny, base, small, medium, large).
HEADS_BY_WIDTH = {384: 6, 512: 8, 768: 12, 1024: 16, 1280: 20}
#: Raised when the conversion writes something different (a new cache entry).
CONVERT_VERSION = 1
_SAMPLE_RATE, _HOP_LENGTH = 16_000, 160
_FASTER_WHISPER_HINT = (
    "a faster-whisper (CTranslate2) folder holds model.bin, config.json, tokenizer.json "
    "and vocabulary.txt (or vocabulary.json)"
)
_LANGUAGE_TOKEN = re.compile(r"^<\|[a-z]{2,3}\|>$")  # <|de|>, <|haw|>, <|yue|>
_NON_LANGUAGE_SPECIALS = {
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|notimestamps|>",
}


# ----------------------------------------------------------------------------- the mapping
@dataclass(frozen=True)
class TensorMapping:
    """One CTranslate2 variable and the ``transformers`` parameters it is made of.

    ``hf`` lists the parameters whose rows are concatenated (dim 0) into the variable, in
    order; ``None`` is a block ``transformers`` has no parameter for (the key bias: zeros
    when written, dropped when read; see the module docstring).
    """

    ct2: str
    hf: tuple[str | None, ...]


@dataclass(frozen=True)
class Scalar:
    """A rank-0 CTranslate2 variable of a Whisper model.

    Attributes:
        dtype: Its stored dtype.
        value: What CTranslate2 writes for Whisper (``None``: the head count, from the model).
        required: Whether a read file must hold ``value`` (``transformers`` cannot represent
            another); otherwise any value is accepted (a run-time setting of CTranslate2).
    """

    dtype: torch.dtype
    value: int | None
    required: bool


#: Every scalar CTranslate2 4.x writes for a Whisper model (older versions write fewer).
SCALARS: dict[str, Scalar] = {
    "encoder/num_heads": Scalar(torch.int16, None, True),
    "decoder/num_heads": Scalar(torch.int16, None, True),
    "decoder/activation": Scalar(torch.int8, 3, True),  # ctranslate2 Activation.GELU
    "decoder/pre_norm": Scalar(torch.int8, 1, True),
    "decoder/scale_embeddings": Scalar(torch.int8, 0, True),
    "decoder/alibi": Scalar(torch.int8, 0, True),
    "decoder/start_from_zero_embedding": Scalar(torch.int8, 0, True),
    "decoder/alibi_use_positive_positions": Scalar(torch.int8, 0, False),
    "decoder/scale_alibi": Scalar(torch.int8, 0, False),
    "decoder/alignment_layer": Scalar(torch.int16, -1, False),
    "decoder/alignment_heads": Scalar(torch.int16, 1, False),
}
_SCALAR_MEANING = {
    "decoder/activation": "the FFN activation (3 = GELU)",
    "decoder/pre_norm": "pre-layer-norm blocks (1)",
    "decoder/scale_embeddings": "embeddings scaled by sqrt(d_model) (0)",
    "decoder/alibi": "ALiBi positions (0)",
    "decoder/start_from_zero_embedding": "a zero start embedding (0)",
}


def tensor_mappings(encoder_layers: int, decoder_layers: int) -> list[TensorMapping]:
    """The complete CTranslate2 ⇄ ``transformers`` name table of a Whisper model.

    Used by both directions, so they cannot disagree. Covers every tensor of both sides
    (scalars are in :data:`SCALARS`).
    """
    table: list[TensorMapping] = []

    def linear(ct2: str, modules: Iterable[str], bias: bool = True) -> None:
        modules = tuple(modules)
        table.append(TensorMapping(f"{ct2}/weight", tuple(f"{m}.weight" for m in modules)))
        if bias:
            parts = tuple(None if m.endswith("k_proj") else f"{m}.bias" for m in modules)
            table.append(TensorMapping(f"{ct2}/bias", parts))

    def norm(ct2: str, module: str) -> None:
        table.append(TensorMapping(f"{ct2}/gamma", (f"{module}.weight",)))
        table.append(TensorMapping(f"{ct2}/beta", (f"{module}.bias",)))

    def attention(ct2: str, module: str) -> None:
        linear(f"{ct2}/linear_0", (f"{module}.{p}" for p in ("q_proj", "k_proj", "v_proj")))
        linear(f"{ct2}/linear_1", [f"{module}.out_proj"])

    def position(side: str, module: str) -> None:
        table.append(
            TensorMapping(
                f"{side}/position_encodings/encodings", (f"{module}.embed_positions.weight",)
            )
        )

    def ffn(ct2: str, module: str) -> None:
        norm(f"{ct2}/layer_norm", f"{module}.final_layer_norm")
        linear(f"{ct2}/linear_0", [f"{module}.fc1"])
        linear(f"{ct2}/linear_1", [f"{module}.fc2"])

    enc = "model.encoder"
    linear("encoder/conv1", [f"{enc}.conv1"])
    linear("encoder/conv2", [f"{enc}.conv2"])
    position("encoder", enc)
    norm("encoder/layer_norm", f"{enc}.layer_norm")
    for i in range(encoder_layers):
        ct2, hf = f"encoder/layer_{i}", f"{enc}.layers.{i}"
        norm(f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm")
        attention(f"{ct2}/self_attention", f"{hf}.self_attn")
        ffn(f"{ct2}/ffn", hf)

    dec = "model.decoder"
    table.append(TensorMapping("decoder/embeddings/weight", (f"{dec}.embed_tokens.weight",)))
    position("decoder", dec)
    norm("decoder/layer_norm", f"{dec}.layer_norm")
    for i in range(decoder_layers):
        ct2, hf = f"decoder/layer_{i}", f"{dec}.layers.{i}"
        norm(f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm")
        attention(f"{ct2}/self_attention", f"{hf}.self_attn")
        cross = f"{hf}.encoder_attn"
        norm(f"{ct2}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm")
        linear(f"{ct2}/attention/linear_0", [f"{cross}.q_proj"])
        linear(f"{ct2}/attention/linear_1", [f"{cross}.k_proj", f"{cross}.v_proj"])
        linear(f"{ct2}/attention/linear_2", [f"{cross}.out_proj"])
        ffn(f"{ct2}/ffn", hf)
    table.append(TensorMapping("decoder/projection/weight", ("proj_out.weight",)))
    return table


@dataclass(frozen=True)
class WhisperDims:
    """The sizes of a Whisper model, as read from its tensors and scalars."""

    num_mel_bins: int
    d_model: int
    vocab_size: int
    encoder_layers: int
    decoder_layers: int
    encoder_attention_heads: int
    decoder_attention_heads: int
    encoder_ffn_dim: int
    decoder_ffn_dim: int
    max_source_positions: int
    max_target_positions: int
    tie_word_embeddings: bool


def _layer_count(names: Iterable[str], side: str) -> int:
    found = {int(m.group(1)) for n in names if (m := re.match(rf"^{side}/layer_(\d+)/", n))}
    return max(found) + 1 if found else 0


def _need(model: CTranslate2Model, name: str) -> torch.Tensor:
    if name not in model.variables:
        raise ValueError(
            f"{model.path} lacks the variable {name!r}, which every CTranslate2 Whisper "
            f"model has; it is not a complete Whisper model: {_FASTER_WHISPER_HINT}."
        )
    return model.variables[name]


def _heads(model: CTranslate2Model, side: str, d_model: int) -> int:
    name = f"{side}/num_heads"
    if name in model.variables:
        heads = int(model.variables[name].item())
    elif d_model in HEADS_BY_WIDTH:
        heads = HEADS_BY_WIDTH[d_model]
    else:
        raise ValueError(
            f"{model.path} has no {name!r} and a width of {d_model}, which is none of "
            f"OpenAI's Whisper sizes {sorted(HEADS_BY_WIDTH)}; the head count is unknown. "
            "Convert the model again with CTranslate2 >= 3.0, which stores it."
        )
    if heads <= 0 or d_model % heads:
        raise ValueError(
            f"{model.path}: {name} = {heads} does not divide the width {d_model}; the file "
            "is corrupt."
        )
    return heads


def _check_whisper(model: CTranslate2Model) -> None:
    if model.spec_name != WHISPER_SPEC:
        raise ValueError(
            f"{model.path} holds a {model.spec_name} model; expected a Whisper "
            f"({WHISPER_SPEC}) model: {_FASTER_WHISPER_HINT}."
        )
    quantized = sorted(
        name
        for name, t in model.variables.items()
        if name.endswith("_scale") or (t.dim() > 0 and not t.dtype.is_floating_point)
    )
    if quantized:
        raise ValueError(
            f"{model.path} is a quantized CTranslate2 model ({quantized[0]!r} is "
            f"{model.variables[quantized[0]].dtype}); its weights are not the model's, and "
            "this converter does not dequantize them. Use a float16/float32 copy (the "
            "original faster-whisper folder, or ct2-transformers-converter --quantization "
            "float16)."
        )
    for name, scalar in SCALARS.items():
        if name not in model.variables or not scalar.required or scalar.value is None:
            continue
        value = int(model.variables[name].item())
        if value != scalar.value:
            raise ValueError(
                f"{model.path}: {name} = {value}, but transformers' Whisper has "
                f"{_SCALAR_MEANING[name]} = {scalar.value}; this model is not a Whisper model "
                "transformers can run."
            )


def ct2_to_hf_state_dict(
    model: CTranslate2Model,
) -> tuple[dict[str, torch.Tensor], WhisperDims]:
    """The float32 ``WhisperForConditionalGeneration`` state dict of a CTranslate2 Whisper.

    Raises:
        ValueError: not a WhisperSpec model, a quantized one, a scalar ``transformers``
            cannot represent, a missing variable, a fused tensor that does not split, or a
            variable the table does not place (named, not skipped).
    """
    _check_whisper(model)
    names = model.variables
    embeddings = _need(model, "decoder/embeddings/weight")
    conv1 = _need(model, "encoder/conv1/weight")
    conv2 = _need(model, "encoder/conv2/weight")
    vocab_size, d_model = embeddings.shape
    if conv1.dim() != 3 or conv1.shape[0] != d_model or conv1.shape[2] != 3:
        raise ValueError(
            f"{model.path}: encoder/conv1/weight has shape {list(conv1.shape)}; Whisper's is "
            f"[{d_model}, n_mels, 3]. Not a Whisper model transformers can run."
        )
    if list(conv2.shape) != [d_model, d_model, 3]:
        raise ValueError(
            f"{model.path}: encoder/conv2/weight has shape {list(conv2.shape)}; Whisper's is "
            f"[{d_model}, {d_model}, 3]. Not a Whisper model transformers can run."
        )
    projection = _need(model, "decoder/projection/weight")
    tied = model.aliases.get("decoder/projection/weight") == "decoder/embeddings/weight" or (
        projection.shape == embeddings.shape and torch.equal(projection, embeddings)
    )
    dims = WhisperDims(
        num_mel_bins=int(conv1.shape[1]),
        d_model=int(d_model),
        vocab_size=int(vocab_size),
        encoder_layers=_layer_count(names, "encoder"),
        decoder_layers=_layer_count(names, "decoder"),
        encoder_attention_heads=_heads(model, "encoder", d_model),
        decoder_attention_heads=_heads(model, "decoder", d_model),
        encoder_ffn_dim=int(_need(model, "encoder/layer_0/ffn/linear_0/weight").shape[0]),
        decoder_ffn_dim=int(_need(model, "decoder/layer_0/ffn/linear_0/weight").shape[0]),
        max_source_positions=int(_need(model, "encoder/position_encodings/encodings").shape[0]),
        max_target_positions=int(_need(model, "decoder/position_encodings/encodings").shape[0]),
        tie_word_embeddings=bool(tied),
    )
    state: dict[str, torch.Tensor] = {}
    used = set(SCALARS) & set(names)
    for mapping in tensor_mappings(dims.encoder_layers, dims.decoder_layers):
        tensor = _need(model, mapping.ct2)
        used.add(mapping.ct2)
        if tensor.dim() == 0 or tensor.shape[0] % len(mapping.hf):
            raise ValueError(
                f"{model.path}: {mapping.ct2} has shape {list(tensor.shape)}, which does not "
                f"split into {len(mapping.hf)} equal row blocks ({mapping.hf}); the model is "
                "corrupt or not a standard Whisper."
            )
        for hf, block in zip(mapping.hf, tensor.chunk(len(mapping.hf)), strict=True):
            if hf is not None:  # None: the key bias, which softmax cancels (module docstring)
                state[hf] = block.to(torch.float32, copy=True).contiguous()
    unplaced = sorted(set(names) - used)
    if unplaced:
        raise ValueError(
            f"{model.path} holds {len(unplaced)} variable(s) a transformers Whisper has no "
            f"place for: {', '.join(unplaced[:8])}{' ...' if len(unplaced) > 8 else ''}. "
            "Refusing to drop them; this is not a standard Whisper (e.g. a lite-whisper "
            "low-rank model)."
        )
    return state, dims


def hf_to_ct2_variables(model: WhisperForConditionalGeneration) -> dict[str, torch.Tensor]:
    """CTranslate2 WhisperSpec variables (fused, with scalars) of a ``transformers`` Whisper.

    Tensors keep the model's dtype (cast them to write float16). Fails, naming it, on any
    parameter the table does not place (PEFT adapters: merge them first).
    """
    config = model.config
    if getattr(config, "model_type", None) != "whisper" or not hasattr(model, "proj_out"):
        raise TypeError(
            f"transformers_to_ctranslate2 needs a WhisperForConditionalGeneration, got "
            f"{type(model).__name__}; a PEFT model must be merged first "
            "(model.merge_and_unload())."
        )
    if config.activation_function != "gelu" or config.scale_embedding:
        raise ValueError(
            f"this Whisper uses activation {config.activation_function!r} and "
            f"scale_embedding={config.scale_embedding}; CTranslate2's WhisperSpec runs GELU "
            "without embedding scaling, so it cannot be written for faster-whisper."
        )
    state = {k: v.detach() for k, v in model.state_dict().items()}
    variables: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for mapping in tensor_mappings(config.encoder_layers, config.decoder_layers):
        missing = [hf for hf in mapping.hf if hf is not None and hf not in state]
        if missing:
            raise ValueError(
                f"the model has no parameter {missing[0]!r} (for {mapping.ct2}); it is not a "
                "standard WhisperForConditionalGeneration."
            )
        present = [state[hf] for hf in mapping.hf if hf is not None]
        blocks = [
            state[hf] if hf is not None else torch.zeros_like(present[0]) for hf in mapping.hf
        ]
        used.update(hf for hf in mapping.hf if hf is not None)
        variables[mapping.ct2] = torch.cat(blocks) if len(blocks) > 1 else blocks[0]
    unplaced = sorted(set(state) - used)
    if unplaced:
        raise ValueError(
            f"the model has {len(unplaced)} parameter(s) a CTranslate2 WhisperSpec has no "
            f"place for: {', '.join(unplaced[:8])}{' ...' if len(unplaced) > 8 else ''}. "
            "Merge adapters first (model.merge_and_unload()); refusing to drop them."
        )
    heads = {
        "encoder/num_heads": config.encoder_attention_heads,
        "decoder/num_heads": config.decoder_attention_heads,
    }
    for name, scalar in SCALARS.items():
        value = heads[name] if scalar.value is None else scalar.value
        variables[name] = torch.tensor(value, dtype=scalar.dtype)
    return variables


# ------------------------------------------------------------------- config and tokenizer
def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{path} is not readable JSON ({err}); it should be the {what}: {_FASTER_WHISPER_HINT}."
        ) from err


def _int_list(config: Mapping[str, Any], key: str, path: Path, default: Any = None) -> Any:
    value = config.get(key, default)
    if value is None:
        return None

    def ok(v: Any) -> bool:
        if isinstance(v, list):
            return all(ok(x) for x in v)
        return isinstance(v, int) and not isinstance(v, bool)

    if not isinstance(value, list) or not ok(value):
        raise ValueError(
            f"{path}: {key!r} should be a list of token ids (or [layer, head] pairs), got "
            f"{str(value)[:80]}; the file is not a CTranslate2 Whisper config."
        )
    return value


def _read_ct2_config(path: Path, dims: WhisperDims) -> dict[str, Any]:
    """``suppress_ids``, ``suppress_ids_begin``, ``lang_ids``, ``alignment_heads`` (checked)."""
    raw = _read_json(path, "CTranslate2 Whisper config")
    if not isinstance(raw, dict):
        raise ValueError(f"{path} should hold a JSON object; {_FASTER_WHISPER_HINT}.")
    config = {
        "suppress_ids": _int_list(raw, "suppress_ids", path) or [],
        "suppress_ids_begin": _int_list(raw, "suppress_ids_begin", path) or [],
        "lang_ids": _int_list(raw, "lang_ids", path) or [],
        "alignment_heads": _int_list(raw, "alignment_heads", path),
    }
    if config["alignment_heads"] is None:  # CTranslate2's default: the last half of layers
        config["alignment_heads"] = _default_alignment_heads(
            dims.decoder_layers, dims.decoder_attention_heads
        )
    for pair in config["alignment_heads"]:
        if len(pair) != 2 or not (
            0 <= pair[0] < dims.decoder_layers and 0 <= pair[1] < dims.decoder_attention_heads
        ):
            raise ValueError(
                f"{path}: alignment head {pair} is not a [layer, head] of this model "
                f"({dims.decoder_layers} layers, {dims.decoder_attention_heads} heads)."
            )
    for key in ("suppress_ids", "suppress_ids_begin", "lang_ids"):
        bad = [i for i in config[key] if not -1 <= i < dims.vocab_size]
        if bad:
            raise ValueError(
                f"{path}: {key} holds {bad[:5]}, outside the vocabulary of {dims.vocab_size}; "
                "config.json belongs to another model."
            )
    return config


def _default_alignment_heads(layers: int, heads: int) -> list[list[int]]:
    return [list(p) for p in itertools.product(range(layers // 2, layers), range(heads))]


def _tokenizer_json(path: Path) -> dict[str, Any]:
    data = _read_json(path, "tokenizer file (a Hugging Face tokenizers JSON)")
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ValueError(
            f"{path} is not a Hugging Face tokenizers file (no 'model' object); "
            f"{_FASTER_WHISPER_HINT}."
        )
    return data


def _special_ids(path: Path, dims: WhisperDims) -> dict[str, int]:
    """Ids of Whisper's special tokens in ``tokenizer.json`` (checked to fit the model)."""
    data = _tokenizer_json(path)
    added = {t["content"]: int(t["id"]) for t in data.get("added_tokens", [])}
    required = ("<|endoftext|>", "<|startoftranscript|>", "<|transcribe|>", "<|translate|>")
    missing = [t for t in (*required, "<|notimestamps|>") if t not in added]
    if missing:
        raise ValueError(
            f"{path} lacks Whisper's special token(s) {', '.join(missing)}; it is not a "
            f"Whisper tokenizer: {_FASTER_WHISPER_HINT}."
        )
    too_big = {t: i for t, i in added.items() if i >= dims.vocab_size}
    if too_big:
        raise ValueError(
            f"{path} has token ids {sorted(too_big.values())[:5]} beyond the model's "
            f"{dims.vocab_size} embeddings; tokenizer.json belongs to another model."
        )
    return added


def _tokenizer(path: Path, added: Mapping[str, int], dims: WhisperDims) -> Any:
    """A ``WhisperTokenizerFast`` from ``tokenizer.json`` with Whisper's special-token roles."""
    from transformers import WhisperTokenizerFast

    extra = [t for t, _ in sorted(added.items(), key=lambda kv: kv[1]) if t != "<|endoftext|>"]
    return WhisperTokenizerFast(
        tokenizer_file=str(path),
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=extra,
        model_max_length=dims.max_target_positions,
    )


def _generation_config(
    ct2_config: Mapping[str, Any], added: Mapping[str, int], path: Path, dims: WhisperDims
) -> GenerationConfig:
    """The generation config OpenAI's ``openai/whisper-*`` checkpoints ship, for this model."""
    from transformers import GenerationConfig

    by_id = {i: t for t, i in added.items()}
    lang_to_id = {}
    for token_id in ct2_config["lang_ids"]:
        token = by_id.get(token_id)
        if token is None or not _LANGUAGE_TOKEN.match(token):
            raise ValueError(
                f"{path}: lang_ids holds {token_id}, which tokenizer.json names "
                f"{token!r}, not a language token like '<|de|>'; config.json and "
                "tokenizer.json belong to different models."
            )
        lang_to_id[token] = token_id
    eot = added["<|endoftext|>"]
    fields: dict[str, Any] = {
        "alignment_heads": ct2_config["alignment_heads"],
        "begin_suppress_tokens": ct2_config["suppress_ids_begin"],
        "bos_token_id": eot,
        "decoder_start_token_id": added["<|startoftranscript|>"],
        "eos_token_id": eot,
        "forced_decoder_ids": None,
        "is_multilingual": bool(lang_to_id),
        "max_initial_timestamp_index": 50,
        "max_length": dims.max_target_positions,
        "no_timestamps_token_id": added["<|notimestamps|>"],
        "pad_token_id": eot,
        "return_timestamps": False,
        "suppress_tokens": ct2_config["suppress_ids"],
        "task_to_id": {
            "transcribe": added["<|transcribe|>"],
            "translate": added["<|translate|>"],
        },
    }
    if lang_to_id:
        fields["lang_to_id"] = lang_to_id
    if "<|startofprev|>" in added:
        fields["prev_sot_token_id"] = added["<|startofprev|>"]
    return GenerationConfig(**fields)


def ct2_vocabulary(tokenizer_json: str | Path, vocab_size: int) -> list[str]:
    """The token list CTranslate2 stores beside a Whisper model (``vocabulary.json/.txt``).

    As CTranslate2's converter makes it: the tokenizer's tokens by id (which must run
    0..n-1 without gaps), then timestamp tokens ``<|0.00|>``, ``<|0.02|>``... up to
    ``vocab_size`` (``tokenizer.json`` files of Whisper usually lack them).
    """
    path = Path(tokenizer_json)
    data = _tokenizer_json(path)
    by_id: dict[int, str] = {int(i): t for t, i in data["model"].get("vocab", {}).items()}
    by_id.update({int(t["id"]): t["content"] for t in data.get("added_tokens", [])})
    if sorted(by_id) != list(range(len(by_id))):
        raise ValueError(
            f"{path}: token ids do not run 0..{len(by_id) - 1} without gaps; CTranslate2's "
            "vocabulary is a list by id, so it cannot be written."
        )
    if len(by_id) > vocab_size:
        raise ValueError(
            f"{path} has {len(by_id)} tokens but the model only {vocab_size} embeddings; "
            "the tokenizer belongs to another model."
        )
    tokens = [by_id[i] for i in range(len(by_id))]
    tokens.extend("<|%.2f|>" % (i * 0.02) for i in range(vocab_size - len(tokens)))
    return tokens


# ------------------------------------------------------------------------ the directions
def _missing_ct2_files(folder: Path) -> list[str]:
    return [name for name in CT2_FILES if not (folder / name).is_file()]


def check_ct2_folder(folder: str | Path) -> Path:
    """``folder`` as a Path, after checking it holds :data:`CT2_FILES` (else an error)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no CTranslate2 Whisper folder at {str(folder)!r}; {_FASTER_WHISPER_HINT}."
        )
    missing = _missing_ct2_files(folder)
    if missing:
        raise FileNotFoundError(
            f"{folder} lacks {', '.join(missing)} "
            f"({', '.join(str(folder / m) for m in missing)} not found); "
            f"{_FASTER_WHISPER_HINT}. Copy the missing file(s) from the model's source."
        )
    return folder


def convert_into(
    ct2_folder: str | Path, folder: str | Path, sha256: str | None = None
) -> dict[str, Any]:
    """Write the ``transformers`` folder of a CTranslate2 Whisper into the existing ``folder``.

    Not atomic by itself: callers give it a fresh temporary folder
    (:func:`ctranslate2_to_transformers`, :func:`core.cache.cached_dir`). Returns the facts
    also written to ``source.json`` (source, sha256, sizes, tying, converter version).
    """
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

    ct2_folder, folder = check_ct2_folder(ct2_folder), Path(folder)
    model_bin = ct2_folder / "model.bin"
    spec = read_spec_name(model_bin)  # refuse another model before reading its weights
    if spec != WHISPER_SPEC:
        raise ValueError(
            f"{model_bin} holds a {spec} model; expected a Whisper ({WHISPER_SPEC}) model: "
            f"{_FASTER_WHISPER_HINT}."
        )
    ct2 = read_model_bin(model_bin)
    state, dims = ct2_to_hf_state_dict(ct2)
    del ct2
    ct2_config = _read_ct2_config(ct2_folder / "config.json", dims)
    tokenizer_path = ct2_folder / "tokenizer.json"
    added = _special_ids(tokenizer_path, dims)
    generation = _generation_config(ct2_config, added, ct2_folder / "config.json", dims)
    tokenizer = _tokenizer(tokenizer_path, added, dims)

    eot, sot = added["<|endoftext|>"], added["<|startoftranscript|>"]
    config = WhisperConfig(
        **{k: v for k, v in asdict(dims).items()},
        activation_function="gelu",
        scale_embedding=False,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
        suppress_tokens=ct2_config["suppress_ids"],
        begin_suppress_tokens=ct2_config["suppress_ids_begin"],
        median_filter_width=7,
        architectures=["WhisperForConditionalGeneration"],
    )
    with torch.device("meta"):  # no random init: every tensor comes from the file
        model = WhisperForConditionalGeneration(config)
    expected = set(model.state_dict())
    unfilled, unknown = sorted(expected - set(state)), sorted(set(state) - expected)
    if unfilled or unknown:  # the table and transformers disagree: a bug, never skipped
        raise RuntimeError(
            f"converting {model_bin}: transformers' Whisper parameters left unfilled "
            f"{unfilled[:5]}, converted tensors it does not have {unknown[:5]}; the name "
            "table (apps.speech_asr.whisper.convert.tensor_mappings) needs updating for this "
            "transformers version."
        )
    model.load_state_dict(state, strict=True, assign=True)
    if dims.tie_word_embeddings:
        model.tie_weights()
    left = [
        n for n, t in itertools.chain(model.named_parameters(), model.named_buffers()) if t.is_meta
    ]
    if left:  # a tensor transformers adds that no table entry fills: never save it empty
        raise RuntimeError(
            f"converting {model_bin}: transformers' Whisper tensors {left[:5]} were not "
            "filled; the name table (apps.speech_asr.whisper.convert.tensor_mappings) needs "
            "updating for this transformers version."
        )
    model.generation_config = generation
    model.eval()

    frames = 2 * dims.max_source_positions  # conv2 has stride 2
    chunk_length = frames * _HOP_LENGTH // _SAMPLE_RATE if frames % 100 == 0 else 30
    features = WhisperFeatureExtractor(
        feature_size=dims.num_mel_bins,
        sampling_rate=_SAMPLE_RATE,
        hop_length=_HOP_LENGTH,
        chunk_length=chunk_length,
        n_fft=400,
    )
    processor = WhisperProcessor(feature_extractor=features, tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    facts = {
        "source": str(ct2_folder.resolve()),
        "sha256": sha256,
        "spec": WHISPER_SPEC,
        "dims": asdict(dims),
        "parameters": sum(p.numel() for p in model.parameters()),
        "converted_by": f"apps.speech_asr.whisper.convert v{CONVERT_VERSION}",
    }
    atomic_write_text(folder / "source.json", json.dumps(facts, indent=2) + "\n")
    return facts


def ctranslate2_to_transformers(
    ct2_folder: str | Path, out_folder: str | Path, *, overwrite: bool = False
) -> Path:
    """Convert a CTranslate2 (faster-whisper) Whisper folder into a ``transformers`` folder.

    ``out_folder`` gets the float32 model (``model.safetensors``, ``config.json``),
    ``generation_config.json``, the processor (tokenizer and feature extractor) and
    ``source.json``, all at once (a temporary folder renamed at the end).

    Args:
        ct2_folder: Holds ``model.bin``, ``config.json`` and ``tokenizer.json``.
        out_folder: The folder to create.
        overwrite: Replace an existing ``out_folder``.

    Raises:
        FileNotFoundError: a needed file is missing (named).
        ValueError: not a Whisper model, a quantized one, or files that disagree.
    """
    check_ct2_folder(ct2_folder)
    with atomic_directory(out_folder, overwrite=overwrite) as tmp:
        convert_into(ct2_folder, tmp)
    return Path(out_folder)


def _ct2_config(model: WhisperForConditionalGeneration, tokenizer_json: Path | None) -> dict:
    """The CTranslate2 ``config.json`` of a model, as CTranslate2's converter fills it."""
    gen, config = model.generation_config, model.config
    suppress = getattr(gen, "suppress_tokens", None)
    begin = getattr(gen, "begin_suppress_tokens", None)
    heads = getattr(gen, "alignment_heads", None) or _default_alignment_heads(
        config.decoder_layers, config.decoder_attention_heads
    )
    lang_to_id = getattr(gen, "lang_to_id", None)
    if lang_to_id:
        lang_ids = sorted(int(i) for i in lang_to_id.values())
    elif tokenizer_json is not None:
        data = _tokenizer_json(tokenizer_json)
        lang_ids = sorted(
            int(t["id"])
            for t in data.get("added_tokens", [])
            if t["content"] not in _NON_LANGUAGE_SPECIALS and _LANGUAGE_TOKEN.match(t["content"])
        )
    else:
        lang_ids = []
    return {
        "alignment_heads": [list(map(int, p)) for p in heads],
        "lang_ids": lang_ids,
        "suppress_ids": list(suppress if suppress is not None else config.suppress_tokens or []),
        "suppress_ids_begin": list(
            begin if begin is not None else config.begin_suppress_tokens or []
        ),
    }


def transformers_to_ctranslate2(
    model: WhisperForConditionalGeneration,
    out_folder: str | Path,
    tokenizer_json_path: str | Path | None = None,
    *,
    dtype: str = "float16",
    overwrite: bool = False,
) -> Path:
    """Write a ``transformers`` Whisper as a CTranslate2 (faster-whisper) folder.

    ``model.bin`` gets CTranslate2's names, fusions (zeros for the key bias), scalars and
    aliases (equal tensors stored once, the tied output projection among them);
    ``config.json`` the suppressed, language and alignment ids from the generation config.
    With ``tokenizer_json_path``, ``tokenizer.json`` is copied and ``vocabulary.json``
    written, which faster-whisper needs to load the folder; without it a warning says so.

    Args:
        model: A (merged) ``WhisperForConditionalGeneration``.
        out_folder: The folder to create (atomically).
        tokenizer_json_path: The model's ``tokenizer.json``.
        dtype: ``"float16"`` (faster-whisper's usual), ``"float32"`` or ``"bfloat16"``.
        overwrite: Replace an existing ``out_folder``.
    """
    dtypes = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}
    if dtype not in dtypes:
        raise ValueError(f"dtype {dtype!r}: choose one of {', '.join(dtypes)}.")
    tokenizer_json = Path(tokenizer_json_path) if tokenizer_json_path is not None else None
    if tokenizer_json is not None and not tokenizer_json.is_file():
        raise FileNotFoundError(
            f"tokenizer file {str(tokenizer_json)!r} does not exist; pass the model's "
            "tokenizer.json (a saved WhisperProcessor folder holds one)."
        )
    variables = hf_to_ct2_variables(model)
    stored, aliases = alias_duplicates(variables)  # on the model's precision, as CTranslate2
    target = dtypes[dtype]
    stored = {
        k: v.to(target) if v.dim() > 0 and v.dtype.is_floating_point else v
        for k, v in stored.items()
    }
    ct2_config = _ct2_config(model, tokenizer_json)
    vocabulary = ct2_vocabulary(tokenizer_json, model.config.vocab_size) if tokenizer_json else None
    with atomic_directory(out_folder, overwrite=overwrite) as tmp:
        write_model_bin(tmp / "model.bin", WHISPER_SPEC, stored, aliases)
        text = json.dumps(ct2_config, indent=2, sort_keys=True) + "\n"
        (tmp / "config.json").write_text(text, encoding="utf-8")
        if tokenizer_json is not None and vocabulary is not None:
            shutil.copyfile(tokenizer_json, tmp / "tokenizer.json")
            (tmp / "vocabulary.json").write_text(json.dumps(vocabulary, indent=2), "utf-8")
    if tokenizer_json is None:
        warnings.warn(
            f"{out_folder}: written without tokenizer.json and vocabulary.json, which "
            "faster-whisper needs to load it; pass tokenizer_json_path= to include them.",
            stacklevel=2,
        )
    return Path(out_folder)
