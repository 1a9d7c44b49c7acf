"""The data module: mixed-language batches, the on-disk path end to end, skipped rows."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from apps.speech_asr.data import SpeechDataModule, collate
from apps.speech_asr.embedded import embedded_split

from .conftest import TINY


def _jsonl_corpus(root, per_language: int = 4) -> None:
    """A JSONL corpus of real (synthesized) speech in three languages: train/dev/test, one
    file stereo at 44.1 kHz and one at 8 kHz, a row whose file is missing, one with an
    empty transcript."""
    rows = []
    for lang in ("lt", "is", "es"):
        for split in ("train", "dev", "test"):
            for u in embedded_split(lang, split, per_language, noise_snr_db=None):
                name = f"{u.id}.flac"
                audio, rate = u.audio, 16_000
                if u.id.endswith("00000") and split == "train":
                    rate = 44_100 if lang == "lt" else 8_000
                    audio = np.interp(
                        np.arange(int(len(u.audio) * rate / 16_000)) * 16_000 / rate,
                        np.arange(len(u.audio)),
                        u.audio,
                    ).astype(np.float32)
                    if lang == "lt":
                        audio = np.stack([audio, audio], axis=1)
                sf.write(root / name, audio, rate)
                rows.append({"audio": name, "text": u.text, "language": lang, "split": split})
    rows.append({"audio": "gone.flac", "text": "labas", "language": "lt", "split": "train"})
    rows.append({"audio": rows[0]["audio"], "text": " ", "language": "lt", "split": "train"})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _jsonl_data(root, **options) -> SpeechDataModule:
    return SpeechDataModule(
        source="jsonl",
        root=str(root / "manifest.jsonl"),
        languages=["lt", "is"],
        head_languages=["es"],
        batch_size=8,
        **options,
    )


def test_training_batches_mix_languages_and_pad(tmp_path, caplog) -> None:
    _jsonl_corpus(tmp_path)
    data = _jsonl_data(tmp_path)
    with caplog.at_level(logging.INFO):
        data.setup("fit")
    assert len(data.splits["train"]) == 8  # 4 lt + 4 is; the missing file and empty text skipped
    assert "missing" in caplog.text and "resampl" in caplog.text.lower()
    batch = next(iter(data.train_dataloader()))
    assert set(batch["languages"]) == {"lt", "is"}
    lengths, targets = batch["feature_lengths"], batch["target_lengths"]
    assert batch["features"].shape[:2] == (8, int(lengths.max()))
    for i in range(8):  # padding is zero, and the targets decode to the transcripts
        assert batch["features"][i, int(lengths[i]) :].abs().sum() == 0
        ids = batch["targets"][i, : int(targets[i])].tolist()
        assert data.vocabulary.decode(ids) == batch["texts"][i]


def test_test_split_holds_tail_and_head_languages(tmp_path) -> None:
    _jsonl_corpus(tmp_path)
    data = _jsonl_data(tmp_path)
    data.setup("test")
    assert data.splits["test"].languages == ["lt", "is", "es"]


def test_transcripts_longer_than_the_audio_allows_are_skipped(tmp_path, caplog) -> None:
    _jsonl_corpus(tmp_path)
    data = _jsonl_data(tmp_path, stride=40)  # 400 ms per network frame: too few frames
    with caplog.at_level(logging.WARNING), pytest.raises(ValueError, match="every utterance"):
        data.setup("fit")
    assert "more characters than network frames" in caplog.text


def test_the_app_trains_and_tests_on_a_jsonl_corpus(tmp_path) -> None:
    from apps.speech_asr.train import main

    _jsonl_corpus(tmp_path)
    cli = main(
        ["--config", str(TINY), "--data.source", "jsonl",
         "--data.root", str(tmp_path / "manifest.jsonl"), "--data.languages", "[lt, is]",
         "--data.head_languages", "[es]", "--trainer.limit_test_batches", "null",
         "--trainer.default_root_dir", str(tmp_path / "runs")]
    )  # fmt: skip
    metrics = json.loads((tmp_path / "runs" / "version_0" / "metrics.json").read_text())["test"]
    assert {"test/cer/lt", "test/cer/is", "test/cer/es"} <= set(metrics)
    assert cli.model.adapter_bank.names == ["lt", "is"]


def test_collate_keeps_each_sample_with_its_language() -> None:
    from apps.speech_asr.data import Example

    examples = [
        Example(torch.ones(5, 80), torch.tensor([3, 4]), "lt", "ab", "a"),
        Example(torch.ones(3, 80), torch.tensor([5]), "es", "c", "b"),
    ]
    batch = collate(examples)
    assert batch["languages"] == ["lt", "es"] and batch["ids"] == ["a", "b"]
    assert batch["feature_lengths"].tolist() == [5, 3]
    assert batch["targets"].tolist() == [[3, 4], [5, 0]]
