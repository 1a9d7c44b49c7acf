"""The embedded corpus: determinism, disjoint speakers, counts, text, noise, the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from apps.speech_asr import embedded
from apps.speech_asr.embedded import (
    PITCHES,
    SPLIT_VARIANTS,
    SPLITS,
    _mix,
    _noise,
    _utterance,
    embedded_corpus,
    embedded_split,
    speakers,
    word_list,
)
from apps.speech_asr.text import LANGUAGES, CharVocabulary, normalize
from apps.speech_asr.utterance import SAMPLE_RATE


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("corpus_cache")


def _same(a: list, b: list) -> bool:
    return [u.text for u in a] == [u.text for u in b] and all(
        np.array_equal(x.audio, y.audio) for x, y in zip(a, b, strict=True)
    )


def test_same_seed_same_corpus_other_seed_other_corpus(cache: Path, tmp_path: Path) -> None:
    first = embedded_split("is", "train", 6, seed=0, cache_dir=cache)
    rebuilt = embedded_split("is", "train", 6, seed=0, cache_dir=tmp_path)  # built again
    assert list(tmp_path.glob("corpus-*.pt"))
    assert _same(first, rebuilt)
    assert [u.speaker for u in first] == [u.speaker for u in rebuilt]
    other = embedded_split("is", "train", 6, seed=1, cache_dir=cache)
    assert [u.text for u in other] != [u.text for u in first]
    assert not any(np.array_equal(a.audio, b.audio) for a, b in zip(first, other, strict=True))
    # utterance i does not depend on the count: 3 utterances are the first 3 of 6
    assert _same(embedded_split("is", "train", 3, seed=0, cache_dir=cache), first[:3])


def test_train_speakers_are_disjoint_from_dev_and_test(cache: Path) -> None:
    ids = {split: {s.id for s in speakers(split)} for split in SPLITS}
    assert len(ids["train"]) == len(SPLIT_VARIANTS["train"]) * len(PITCHES)
    assert not ids["train"] & ids["test"] and not ids["train"] & ids["dev"]
    assert not ids["dev"] & ids["test"]
    used = {
        split: {u.speaker for u in embedded_corpus({"lt": 12, "sl": 12}, split, cache_dir=cache)}
        for split in SPLITS
    }
    for split in SPLITS:
        assert used[split] <= ids[split]
    assert not used["train"] & used["test"] and not used["train"] & used["dev"]
    assert len(used["train"]) > 5  # many voices, not one


def test_counts_are_honoured_in_order(cache: Path) -> None:
    corpus = embedded_corpus({"lt": 5, "is": 3, "lv": 0}, "dev", cache_dir=cache)
    assert [u.language for u in corpus] == ["lt"] * 5 + ["is"] * 3
    assert len({u.id for u in corpus}) == 8
    assert corpus[0].id == "lt-dev-00000" and corpus[-1].id == "is-dev-00002"
    assert embedded_split("lt", "test", 0, cache_dir=cache) == []


def test_text_is_normalised_real_words_encodable(cache: Path) -> None:
    vocab = CharVocabulary.for_languages(sorted(LANGUAGES))
    for lang in ("es", "de", "lt", "lv", "sl", "is"):
        words = set(word_list(lang)[0])
        for u in embedded_split(lang, "test", 5, cache_dir=cache):
            assert normalize(u.text, lang) == u.text
            assert 3 <= len(u.text.split()) <= 8
            assert set(u.text.split()) <= words
            assert vocab.decode(vocab.encode(u.text)) == u.text
            CharVocabulary.for_languages([lang]).encode(u.text)  # its own letters only
            assert u.audio is not None and u.audio.dtype == np.float32
            assert 0.5 < u.duration < 6.0
            assert np.abs(u.audio).max() <= 0.99 + 1e-4
            # the CTC loss needs at least one 40 ms frame per character
            assert len(u.text) < u.duration / 0.04


def test_word_lists_are_real_words_with_zipf_weights() -> None:
    words, probabilities = word_list("es")
    assert len(words) > 2500 and len(set(words)) == len(words)
    assert {"de", "la", "que", "y"} <= set(words)
    assert "l" not in words  # one-letter consonants are elision fragments
    assert probabilities.sum() == pytest.approx(1.0)
    assert np.all(np.diff(probabilities) < 0)  # more frequent, more likely
    assert set("".join(word_list("lt")[0])) <= set(LANGUAGES["lt"].alphabet)


def test_speed_and_pitch_vary_per_utterance() -> None:
    pool = speakers("train")
    rows = [_utterance("es", "train", i, 0, pool, (3, 8), (0.85, 1.15), (10, 30)) for i in range(8)]
    by_id = {s.id: s for s in pool}
    for row in rows:
        speaker = by_id[row["speaker"]]
        assert 0.85 * speaker.rate - 1 <= row["rate"] <= 1.15 * speaker.rate + 1
        assert abs(row["pitch"] - speaker.pitch) <= embedded.PITCH_JITTER
        assert 10 <= row["snr_db"] <= 30 and row["noise"] in ("white", "pink")
    factors = [row["rate"] / by_id[row["speaker"]].rate for row in rows]
    assert len(set(factors)) >= len(rows) // 2 and max(factors) - min(factors) > 0.1
    assert {row["noise"] for row in rows} == {"white", "pink"}


def test_noise_is_mixed_at_the_drawn_snr() -> None:
    rng = np.random.default_rng(0)
    speech = (np.sin(np.arange(32000) * 0.05) * 0.3).astype(np.float32)
    for snr in (5.0, 20.0):
        out, color = _mix(np.random.default_rng(1), speech, snr)
        # find the speech inside the padded output and the gain by least squares
        best = max(
            range(len(out) - len(speech) + 1),
            key=lambda k: abs(np.dot(out[k : k + len(speech)], speech)),
        )
        segment = out[best : best + len(speech)]
        gain = np.dot(segment, speech) / np.dot(speech, speech)
        noise = out.copy()
        noise[best : best + len(speech)] -= gain * speech
        measured = 10 * np.log10(gain**2 * np.mean(speech**2) / np.mean(noise**2))
        assert measured == pytest.approx(snr, abs=0.3), color
    clean, color = _mix(rng, speech, None)
    assert color == "none" and np.count_nonzero(clean) == np.count_nonzero(speech)


@pytest.mark.parametrize(("color", "slope"), [("white", 0.0), ("pink", -1.0)])
def test_noise_colors(color: str, slope: float) -> None:
    noise = _noise(np.random.default_rng(0), 2**16, color)
    assert np.mean(noise**2) == pytest.approx(1.0)
    power = np.abs(np.fft.rfft(noise)) ** 2
    bands = [(2**k, 2 ** (k + 1)) for k in range(4, 14)]  # octaves
    levels = [np.log2(power[lo:hi].mean()) for lo, hi in bands]
    fitted = np.polyfit(np.arange(len(bands)), levels, 1)[0]  # log2 power per octave
    assert fitted == pytest.approx(slope, abs=0.15)


def test_cache_hit_returns_the_stored_corpus(cache: Path, monkeypatch) -> None:
    first = embedded_split("sl", "dev", 4, seed=3, cache_dir=cache)

    def fail(*args, **kwargs):
        raise AssertionError("a cache hit must not synthesize")

    monkeypatch.setattr(embedded, "_utterance", fail)
    again = embedded_split("sl", "dev", 4, seed=3, cache_dir=cache)
    assert _same(first, again) and [u.id for u in first] == [u.id for u in again]
    with pytest.raises(AssertionError, match="must not synthesize"):  # a new config builds
        embedded_split("sl", "dev", 4, seed=4, cache_dir=cache)


def test_bad_arguments(cache: Path) -> None:
    with pytest.raises(ValueError, match="known codes"):
        embedded_split("xx", "train", 3, cache_dir=cache)
    with pytest.raises(ValueError, match="split 'val'"):
        embedded_split("es", "val", 3, cache_dir=cache)
    with pytest.raises(ValueError, match="count=-1"):
        embedded_split("es", "train", -1, cache_dir=cache)
    with pytest.raises(ValueError, match="noise_snr_db"):
        embedded_split("es", "train", 3, noise_snr_db=(30, 10), cache_dir=cache)


def test_clean_corpus_has_no_noise(cache: Path) -> None:
    clean = embedded_split("is", "train", 2, noise_snr_db=None, cache_dir=cache)
    noisy = embedded_split("is", "train", 2, cache_dir=cache)
    assert [u.text for u in clean] == [u.text for u in noisy]
    for u in clean:  # the silence padding stays silent without noise
        assert u.audio is not None
        assert np.all(u.audio[: int(0.04 * SAMPLE_RATE)] == 0)
