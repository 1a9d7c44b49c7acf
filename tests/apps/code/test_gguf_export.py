"""GGUF export: whole models that transformers loads back, llama.cpp LoRA adapters, errors.

Everything runs on a 2-layer Llama of width 32 and a 300-id BPE (see ``gguf_fixtures``).
The LoRA checks replay what llama.cpp computes, ``W' + alpha / r * lora_b @ lora_a`` on the
base GGUF's (permuted) tensors, against the GGUF of the model merged in transformers space.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

from apps.code.gguf_export import (
    export_lora_gguf,
    gguf_metadata,
    permute_qk_rows,
    read_gguf_tensors,
    unpermute_qk_rows,
    write_model_gguf,
)
from core.adapters import LoraConfig, adapter_tensors, inject, merge, save_adapter
from tests.apps.code.gguf_fixtures import (
    CODE_SAMPLE,
    tiny_llama,
    tiny_tokenizer,
    write_tiny_llama_gguf,
)

ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GGUF_KINDS = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
HEADS = {"attn_q": 4, "attn_k": 2}  # the tiny model's heads and kv heads


@pytest.fixture(autouse=True)
def _quiet():
    transformers.logging.set_verbosity_error()


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, object]:
    """(GGUF of the tiny tied Llama of seed 0, its tokenizer)."""
    path = tmp_path_factory.mktemp("base") / "tiny.gguf"
    _, tokenizer = write_tiny_llama_gguf(path)
    return path, tokenizer


def _load(path: Path):
    return AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, attn_implementation="eager"
    ).eval()


def _logits(model, tokenizer) -> torch.Tensor:
    ids = torch.tensor([tokenizer(CODE_SAMPLE)["input_ids"]])
    with torch.no_grad():
        return model(ids).logits


def _lora_model(tokenizer, config: LoraConfig, seed: int = 1):
    """The tiny base (seed 0) with adapter ``config`` injected and random non-zero B."""
    model = tiny_llama(len(tokenizer))
    inject(model, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, param in adapter_tensors(model, "default").items():
            if ".lora_B." in key:
                param.copy_(0.2 * torch.randn(param.shape, generator=gen))
    return model


# ----------------------------------------------------------------------------- whole models
@pytest.mark.parametrize("tied", [True, False])
def test_model_loads_back_in_transformers(tmp_path, tied):
    path = tmp_path / "model.gguf"
    model, tokenizer = write_tiny_llama_gguf(path, seed=3, tie_word_embeddings=tied)
    loaded = _load(path)
    assert loaded.config.tie_word_embeddings is tied
    torch.testing.assert_close(
        _logits(loaded, tokenizer), _logits(model, tokenizer), atol=1e-5, rtol=0
    )
    names = set(read_gguf_tensors(path))
    assert ("output.weight" in names) is not tied
    assert {"token_embd.weight", "output_norm.weight", "blk.1.ffn_down.weight"} <= names


def test_tokenizer_loads_back_and_encodes_the_same(base):
    path, tokenizer = base
    loaded = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    ids = tokenizer(CODE_SAMPLE)["input_ids"]
    assert loaded(CODE_SAMPLE)["input_ids"] == ids
    assert loaded.decode(ids) == CODE_SAMPLE
    assert loaded.eos_token == loaded.bos_token == loaded.pad_token == "<|endoftext|>"
    assert loaded.convert_tokens_to_ids("<fim_middle>") == tokenizer.convert_tokens_to_ids(
        "<fim_middle>"
    )


def test_model_metadata(base):
    path, tokenizer = base
    meta = gguf_metadata(path)
    expected = {
        "general.architecture": "llama",
        "general.type": "model",
        "llama.block_count": 2,
        "llama.context_length": 128,
        "llama.embedding_length": 32,
        "llama.feed_forward_length": 64,
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2,
        "llama.rope.freq_base": 10000.0,
        "llama.rope.dimension_count": 8,
        "llama.vocab_size": len(tokenizer),
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.bos_token_id": 0,
        "tokenizer.ggml.eos_token_id": 0,
        "tokenizer.ggml.padding_token_id": 0,
        "tokenizer.ggml.add_bos_token": False,
    }
    assert {k: meta.get(k) for k in expected} == expected
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    assert meta["tokenizer.ggml.tokens"][0] == "<|endoftext|>"
    assert meta["tokenizer.ggml.token_type"][0] == gguf.TokenType.CONTROL
    assert meta["tokenizer.ggml.token_type"][-1] == gguf.TokenType.NORMAL
    assert len(meta["tokenizer.ggml.tokens"]) == len(tokenizer)
    assert all(len(merge.split(" ")) == 2 for merge in meta["tokenizer.ggml.merges"])


def test_qk_rows_permuted_as_llama_cpp_does(base):
    # One head of 4 rows: [x0, x1, y0, y1] (transformers' halves) -> [x0, y0, x1, y1].
    rows = np.arange(4.0).reshape(4, 1)
    assert permute_qk_rows(rows, 1).ravel().tolist() == [0.0, 2.0, 1.0, 3.0]
    w = np.random.default_rng(0).normal(size=(16, 3))
    assert np.array_equal(unpermute_qk_rows(permute_qk_rows(w, 2), 2), w)
    path, tokenizer = base
    model = tiny_llama(len(tokenizer))
    tensors = read_gguf_tensors(path)
    attn = model.model.layers[1].self_attn
    for kind, weight in (("attn_q", attn.q_proj.weight), ("attn_k", attn.k_proj.weight)):
        stored = tensors[f"blk.1.{kind}.weight"]
        assert not np.array_equal(stored, weight.detach().numpy())
        assert np.array_equal(unpermute_qk_rows(stored, HEADS[kind]), weight.detach().numpy())
    assert np.array_equal(tensors["blk.1.attn_v.weight"], attn.v_proj.weight.detach().numpy())


def test_f16_keeps_norms_in_f32(tmp_path):
    path = tmp_path / "f16.gguf"
    model, tokenizer = write_tiny_llama_gguf(path, dtype="f16")
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert gguf_metadata(path)["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    with torch.no_grad():  # the model as f16 matrices and f32 vectors compute it
        for param in model.parameters():
            if param.ndim == 2:
                param.copy_(param.half().float())
    torch.testing.assert_close(
        _logits(_load(path), tokenizer), _logits(model, tokenizer), atol=1e-5, rtol=0
    )


def test_embedding_rows_beyond_the_tokenizer_become_pad_tokens(tmp_path):
    tokenizer = tiny_tokenizer()
    model = tiny_llama(len(tokenizer) + 4)
    path = write_model_gguf(model, tokenizer, tmp_path / "padded.gguf")
    meta = gguf_metadata(path)
    assert meta["tokenizer.ggml.tokens"][-1] == f"[PAD{len(tokenizer) + 3}]"
    assert meta["tokenizer.ggml.token_type"][-1] == gguf.TokenType.UNUSED
    torch.testing.assert_close(_logits(_load(path), tokenizer), _logits(model, tokenizer))


def test_more_tokens_than_embedding_rows_is_refused(tmp_path):
    tokenizer = tiny_tokenizer()
    model = tiny_llama(len(tokenizer) - 10)
    with pytest.raises(ValueError, match="resize_token_embeddings"):
        write_model_gguf(model, tokenizer, tmp_path / "small.gguf")
    assert not (tmp_path / "small.gguf").exists()


def test_tokenizer_copied_from_a_source_gguf(base, tmp_path):
    path, tokenizer = base
    copy = write_model_gguf(
        tiny_llama(len(tokenizer), seed=5), None, tmp_path / "copy.gguf", tokenizer_source=path
    )
    source, copied = gguf_metadata(path), gguf_metadata(copy)
    keys = [k for k in source if k.startswith("tokenizer.")]
    assert keys and {k: copied[k] for k in keys} == {k: source[k] for k in keys}


def test_unmerged_adapters_are_refused(base, tmp_path):
    _, tokenizer = base
    model = _lora_model(tokenizer, LoraConfig(r=4, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match=r"core\.adapters\.merge"):
        write_model_gguf(model, tokenizer, tmp_path / "unmerged.gguf")


def test_write_is_atomic(base, tmp_path, monkeypatch):
    _, tokenizer = base
    path = write_model_gguf(tiny_llama(len(tokenizer)), tokenizer, tmp_path / "m.gguf")
    before = path.read_bytes()

    def crash(self, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", crash)
    with pytest.raises(OSError, match="disk full"):
        write_model_gguf(tiny_llama(len(tokenizer), seed=9), tokenizer, path)
    assert path.read_bytes() == before  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]  # no temporary file left


# ----------------------------------------------------------------------------- LoRA
@pytest.fixture(scope="module")
def lora(base, tmp_path_factory):
    """(adapter model, adapter folder, adapter GGUF) for r=4, alpha=8 on all seven targets."""
    _, tokenizer = base
    folder = tmp_path_factory.mktemp("lora")
    model = _lora_model(tokenizer, LoraConfig(r=4, alpha=8, target_modules=ALL_TARGETS))
    save_adapter(model, folder / "adapter")
    out = export_lora_gguf(folder / "adapter", model.config, folder / "adapter.gguf")
    return model, folder / "adapter", out


def test_lora_gguf_layout_and_values(lora):
    model, _, path = lora
    meta = gguf_metadata(path)
    assert meta["general.type"] == "adapter"
    assert meta["general.architecture"] == "llama"
    assert meta["adapter.type"] == "lora"
    assert meta["adapter.lora.alpha"] == 8.0
    reader = gguf.GGUFReader(path)
    names = {t.name for t in reader.tensors}
    expected = {
        f"blk.{i}.{kind}.weight.lora_{ab}" for i in range(2) for kind in GGUF_KINDS for ab in "ab"
    }
    assert names == expected
    tensors = read_gguf_tensors(path)
    state = adapter_tensors(model, "default")
    for t in reader.tensors:  # GGUF dims are numpy's reversed: lora_a ne = [in, r]
        assert tuple(t.shape.tolist()) == tensors[t.name].shape[::-1]
    for i in range(2):
        for kind, module in zip(GGUF_KINDS, ALL_TARGETS, strict=True):
            block = "self_attn" if kind.startswith("attn") else "mlp"
            prefix = f"model.layers.{i}.{block}.{module}"
            a = state[f"{prefix}.lora_A.weight"].detach().numpy()
            b = state[f"{prefix}.lora_B.weight"].detach().numpy()
            lora_a = tensors[f"blk.{i}.{kind}.weight.lora_a"]
            lora_b = tensors[f"blk.{i}.{kind}.weight.lora_b"]
            assert lora_a.shape == (4, a.shape[1]) and lora_b.shape == (b.shape[0], 4)
            assert np.array_equal(lora_a, a)
            if kind in HEADS:
                assert not np.array_equal(lora_b, b)
                assert np.array_equal(unpermute_qk_rows(lora_b, HEADS[kind]), b)
            else:
                assert np.array_equal(lora_b, b)


def test_lora_matches_the_merged_model_as_llama_cpp_computes_it(base, lora, tmp_path):
    base_path, tokenizer = base
    model, _, lora_path = lora
    expected = _logits(model, tokenizer)
    merge(model)
    try:
        merged_path = write_model_gguf(model, tokenizer, tmp_path / "merged.gguf")
    finally:
        from core.adapters import unmerge

        unmerge(model)
    # transformers on the merged GGUF computes what the adapter model computes
    torch.testing.assert_close(_logits(_load(merged_path), tokenizer), expected, atol=1e-4, rtol=0)
    # llama.cpp: W' + alpha / r * lora_b @ lora_a, all in the (permuted) GGUF space
    base_t, merged_t = read_gguf_tensors(base_path), read_gguf_tensors(merged_path)
    adapter = read_gguf_tensors(lora_path)
    scale = gguf_metadata(lora_path)["adapter.lora.alpha"] / 4
    targets = {name.removesuffix(".lora_a") for name in adapter if name.endswith(".lora_a")}
    assert len(targets) == 14
    for name, merged_w in merged_t.items():
        w = base_t[name]
        if name in targets:
            w = w + scale * adapter[f"{name}.lora_b"] @ adapter[f"{name}.lora_a"]
        np.testing.assert_allclose(merged_w, w, atol=1e-5, rtol=0, err_msg=name)


def test_lora_base_given_as_gguf_file(base, lora, tmp_path):
    base_path, _ = base
    _, folder, path = lora
    again = export_lora_gguf(folder, base_path, tmp_path / "again.gguf")
    assert again.read_bytes() == path.read_bytes()


@pytest.mark.parametrize(
    ("config", "alpha"),
    [
        (LoraConfig(r=4, alpha=8, use_rslora=True, target_modules=["q_proj"]), 16.0),
        (
            LoraConfig(
                r=4, alpha=8, rank_pattern={"k_proj": 2}, target_modules=["q_proj", "k_proj"]
            ),
            8.0,
        ),
    ],
    ids=["rslora", "rank_pattern"],
)
def test_lora_alpha_expresses_the_scales(base, tmp_path, config, alpha):
    _, tokenizer = base
    model = _lora_model(tokenizer, config)
    save_adapter(model, tmp_path / "adapter")
    out = export_lora_gguf(tmp_path / "adapter", model.config, tmp_path / "a.gguf", dtype="f16")
    assert gguf_metadata(out)["adapter.lora.alpha"] == alpha
    tensors = read_gguf_tensors(out)
    assert tensors["blk.0.attn_q.weight.lora_b"].dtype == np.float16
    if config.rank_pattern:
        assert tensors["blk.0.attn_k.weight.lora_a"].shape == (2, 32)


def test_lora_alpha_pattern_is_refused(base, tmp_path):
    _, tokenizer = base
    config = LoraConfig(
        r=4, alpha=8, alpha_pattern={"k_proj": 2}, target_modules=["q_proj", "k_proj"]
    )
    model = _lora_model(tokenizer, config)
    save_adapter(model, tmp_path / "adapter")
    with pytest.raises(ValueError, match=r"adapter\.lora\.alpha"):
        export_lora_gguf(tmp_path / "adapter", model.config, tmp_path / "a.gguf")


# ----------------------------------------------------------------------------- errors
def test_dora_is_refused(base, tmp_path):
    _, tokenizer = base
    model = _lora_model(tokenizer, LoraConfig(r=4, use_dora=True, target_modules=["q_proj"]))
    save_adapter(model, tmp_path / "adapter")
    with pytest.raises(ValueError, match=r"use_dora=True.*no DoRA"):
        export_lora_gguf(tmp_path / "adapter", model.config, tmp_path / "a.gguf")
    assert not (tmp_path / "a.gguf").exists()


def test_tied_lm_head_target_is_refused(base, tmp_path):
    _, tokenizer = base
    model = _lora_model(tokenizer, LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    save_adapter(model, tmp_path / "adapter")
    with pytest.raises(ValueError, match="ties lm_head"):
        export_lora_gguf(tmp_path / "adapter", model.config, tmp_path / "a.gguf")


def test_target_without_gguf_name_is_refused(lora, tmp_path):
    from core.adapters.io import read_adapter_files, write_adapter_dir

    _, folder, _ = lora
    config, tensors = read_adapter_files(folder)
    renamed = {
        k.replace("layers.1.mlp.up_proj", "layers.1.mlp.extra_proj"): v for k, v in tensors.items()
    }
    write_adapter_dir(tmp_path / "adapter", renamed, config)
    with pytest.raises(
        ValueError, match=r"extra_proj.*no llama\.cpp LoRA tensor.*Supported targets"
    ):
        export_lora_gguf(tmp_path / "adapter", tiny_llama(300).config, tmp_path / "a.gguf")


def test_adapter_that_does_not_fit_the_base_is_refused(lora, tmp_path):
    _, folder, _ = lora
    other = tiny_llama(300).config
    other.intermediate_size = 48
    with pytest.raises(ValueError, match="ffn_down is 32 x 48; export against the base"):
        export_lora_gguf(folder, other, tmp_path / "a.gguf")


def test_unknown_architecture_is_refused(lora, tmp_path):
    _, folder, _ = lora
    qwen = Qwen2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
    with pytest.raises(ValueError, match=r"model_type='qwen2'.*\['llama'\]"):
        export_lora_gguf(folder, qwen, tmp_path / "a.gguf")
    model = transformers.Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=4, num_key_value_heads=2,
        )
    )  # fmt: skip
    with pytest.raises(ValueError, match="model_type='qwen2'"):
        write_model_gguf(model, tiny_tokenizer(), tmp_path / "q.gguf")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_broken_files_are_named(base, tmp_path, damage):
    path, _ = base
    data = path.read_bytes()
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(
        {"truncated": data[: len(data) // 2], "garbage": b"not a gguf" * 10, "empty": b""}[damage]
    )
    for reader in (gguf_metadata, read_gguf_tensors):
        with pytest.raises(ValueError, match=r"broken\.gguf.*not a GGUF file or truncated"):
            reader(broken)
    header_only = tmp_path / "header.gguf"
    header_only.write_bytes(data[:200])
    with pytest.raises(ValueError, match="not a GGUF file or truncated"):
        gguf_metadata(header_only)
