"""The Whisper recipe: the decoder prompt and labels, the trimmed encoder window, features,
per-language routing, and a tiny fit + test through the speech app's command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from apps.speech_asr.whisper.model import (
    IGNORE,
    decoder_batch,
    feature_extractor,
    prompt_ids,
    trim_encoder,
    whisper_features,
)

from .tiny_whisper import write_tiny_whisper


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return write_tiny_whisper(tmp_path_factory.mktemp("tiny_whisper"))


@pytest.fixture(scope="module")
def tokenizer(tiny_folder):
    from transformers import WhisperTokenizerFast

    return WhisperTokenizerFast.from_pretrained(str(tiny_folder))


def test_decoder_batch_predicts_the_transcript_after_the_forced_prompt(tokenizer) -> None:
    decoder_ids, labels = decoder_batch(tokenizer, ["lt", "de"], ["labas rytas", "ja"])
    end = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    for row, (lang, text) in enumerate([("lt", "labas rytas"), ("de", "ja")]):
        body = tokenizer(" " + text, add_special_tokens=False).input_ids
        prompt = prompt_ids(tokenizer, lang)
        n = len(prompt) + len(body)
        assert decoder_ids[row, :n].tolist() == prompt + body
        # labels[i] is the token after position i; the forced prompt is not scored
        assert labels[row, : len(prompt) - 1].tolist() == [IGNORE] * (len(prompt) - 1)
        assert labels[row, len(prompt) - 1 : n].tolist() == [*body, end]
        assert (labels[row, n:] == IGNORE).all() and (decoder_ids[row, n:] == end).all()
    assert tokenizer.decode(decoder_ids[0]).startswith("<|startoftranscript|><|lt|><|transcribe|>")


def test_prompt_refuses_a_language_whisper_does_not_know(tokenizer) -> None:
    with pytest.raises(ValueError, match="<\\|xx\\|>"):
        prompt_ids(tokenizer, "xx")


def test_trimmed_encoder_keeps_the_first_positions_and_takes_the_short_window(tiny_folder) -> None:
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(str(tiny_folder))
    full = model.model.encoder.embed_positions.weight.detach().clone()
    trim_encoder(model, 2.0)
    table = model.model.encoder.embed_positions
    assert table.num_embeddings == 100 and not table.weight.requires_grad
    torch.testing.assert_close(table.weight, full[:100], rtol=0, atol=0)
    out = model.model.encoder(torch.randn(1, 80, 200)).last_hidden_state
    assert out.shape == (1, 100, 16)
    with pytest.raises(ValueError, match="Whisper expects"):
        model.model.encoder(torch.randn(1, 80, 3000))
    with pytest.raises(ValueError, match="encoder_seconds=31"):
        trim_encoder(model, 31.0)


def test_window_features_equal_the_start_of_whispers_30_second_features() -> None:
    """Padding the audio to the window, not to 30 s, leaves the clip's frames unchanged
    (the log-mel's range clamp takes its maximum from the speech, not the padding)."""
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(16_000 * 2)).astype(np.float32)
    short = whisper_features(feature_extractor(4.0), audio, 4.0, "clip")
    full = whisper_features(feature_extractor(30.0), audio, 30.0, "clip")
    assert short.shape == (400, 80) and full.shape == (3000, 80)
    torch.testing.assert_close(short, full[:400], rtol=0, atol=1e-5)


def test_a_clip_longer_than_the_window_is_an_error_naming_it() -> None:
    audio = np.zeros(16_000 * 3, dtype=np.float32)
    with pytest.raises(ValueError, match=r"'lt-7'.*3\.0 s.*data\.window_seconds"):
        whisper_features(feature_extractor(2.0), audio, 2.0, "lt-7")


TINY_WHISPER = [
    "--trainer.max_steps", "2", "--trainer.val_check_interval", "1",
    "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1",
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    "--data.train_utterances", "{lt: 4, is: 4}", "--data.languages", "[lt, is]",
    "--data.head_languages", "[de]", "--data.dev_utterances", "2",
    "--data.test_utterances", "3", "--data.batch_size", "4", "--data.eval_batch_size", "16",
    "--model.init_args.max_new_tokens", "3", "--model.init_args.num_beams", "2",
    "--model.init_args.warmup_steps", "1",
]  # fmt: skip


@pytest.fixture(scope="module")
def whisper_run(tiny_folder, tmp_path_factory):
    from apps.speech_asr.train import CONFIG_DIR, main

    root = tmp_path_factory.mktemp("whisper_run")
    cli = main(
        ["--config", str(CONFIG_DIR / "whisper.yaml"), "--model.init_args.pretrained",
         str(tiny_folder),
         *TINY_WHISPER, "--trainer.default_root_dir", str(root)]
    )  # fmt: skip
    return cli, Path(cli.trainer.log_dir)


def test_whisper_recipe_trains_only_the_per_language_loras(whisper_run) -> None:
    cli, _ = whisper_run
    module = cli.model
    assert type(module).__name__ == "WhisperAdapterModule"
    assert module.adapter_bank.names == ["lt", "is"]
    trainable = [n for n, p in module.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n or "adapter_bank" in n for n in trainable)
    encoder = [n for n in trainable if ".encoder." in n]
    decoder = [n for n in trainable if ".decoder." in n]
    assert encoder and decoder  # LoRA on both sides
    assert module.expected_frames == 700  # the recipe's 7 s window


def test_whisper_run_reports_zero_shot_and_adapted_per_language(whisper_run) -> None:
    cli, run_dir = whisper_run
    metrics = cli.trainer.callback_metrics
    for variant in ("zero_shot", "adapted"):
        for lang in ("lt", "is", "de"):
            assert f"test/{variant}/wer/{lang}" in metrics
    # the head language goes through no adapter: identical transcripts
    assert float(metrics["test/head_unchanged"]) == 1.0
    report = (run_dir / "report.md").read_text()
    assert "zero-shot WER" in report and "head (adapters off)" in report
    assert "| lt | tail (own LoRA) | 3 |" in report


def test_per_sample_routing_uses_each_languages_own_adapter(whisper_run) -> None:
    """A mixed batch's logits equal those of each sample run alone on its own adapter."""
    cli, _ = whisper_run
    module = cli.model.eval()
    with torch.no_grad():
        for p in module.model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
        batch = next(iter(cli.datamodule.test_dataloader()))
        features = module.input_features(batch)
        langs = batch["languages"]
        ids, _ = decoder_batch(module.tokenizer, langs, batch["texts"])
        with module.route(langs):
            mixed = module(features, ids)
        for i, lang in enumerate(langs):
            with module.route([lang]):
                alone = module(features[i : i + 1], ids[i : i + 1])
            torch.testing.assert_close(mixed[i : i + 1], alone, rtol=1e-4, atol=1e-4)
        assert len(set(langs)) > 1


def test_a_window_mismatch_between_data_and_model_is_a_clear_error(whisper_run) -> None:
    cli, _ = whisper_run
    batch = {"features": torch.zeros(1, 300, 80), "feature_lengths": torch.tensor([300])}
    with pytest.raises(ValueError, match=r"data\.window_seconds"):
        cli.model.input_features(batch)


def test_metrics_file_holds_the_per_language_rates(whisper_run) -> None:
    _, run_dir = whisper_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    flat = json.dumps(metrics)
    assert "zero_shot/cer/lt" in flat and "adapted/cer/is" in flat


def test_only_untrained_lora_counts_as_the_identity(whisper_run) -> None:
    cli, _ = whisper_run
    module = cli.model
    factors = {n: p for n, p in module.model.named_parameters() if n.endswith("lora_B")}
    assert not module.adapters_are_identity()  # trained: B moved away from zero
    saved = {n: p.detach().clone() for n, p in factors.items()}
    with torch.no_grad():
        for p in factors.values():
            p.zero_()
        assert module.adapters_are_identity()
        for n, p in factors.items():
            p.copy_(saved[n])


def test_whisper_benchmark_runs_seeds_alone_and_windows(tiny_folder, tmp_path) -> None:
    from apps.speech_asr.whisper import benchmark

    extra = [a for a in TINY_WHISPER if a not in ("--data.languages", "[lt, is]")]
    extra[extra.index("{lt: 4, is: 4}")] = "{lt: 4, lv: 4, sl: 4, is: 4}"
    summary = benchmark.run(
        ["--seeds", "0", "--alone", "0", "--windows", "6.5", "--out", str(tmp_path),
         "--model.pretrained", str(tiny_folder), *extra]
    )  # fmt: skip
    records = json.loads((tmp_path / "results.json").read_text())
    kinds = [r["kind"] for r in records]
    assert kinds == ["mixed", "alone_lt", "alone_lv", "alone_sl", "alone_is", "window_6.5"]
    assert records[1]["languages"] == ["lt"]
    text = summary.read_text()
    for heading in ("Zero-shot against per-language LoRA", "each language alone", "window"):
        assert heading in text
    assert (tmp_path / "wer_per_language.png").is_file()
    # --resume keeps every finished run
    again = benchmark.run(["--seeds", "0", "--out", str(tmp_path), "--resume"])
    assert "1 runs" in again.read_text()
