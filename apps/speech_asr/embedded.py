"""The embedded corpus: seeded multilingual speech synthesized here, no download needed.

Each utterance is 3-8 real words of its language (``wordfreq``'s most frequent words, drawn
with Zipf-like weights: pseudo-words would make WER needlessly harsh), normalised with
``text.normalize`` and spoken by espeak-ng (:mod:`.synth`):

* **Speakers**: a speaker is an espeak-ng variant (``+m1`` ... ``+f4``) at a base pitch and a
  base speaking rate. The variants are split between train, dev and test
  (:data:`SPLIT_VARIANTS`), so no test (or dev) voice is ever heard in training, in any
  language; speaker ids do not name the language, so disjointness holds across languages too.
* **Speed perturbation**: each utterance scales its speaker's rate by a factor drawn from
  ``speed``, and jitters the pitch by a few steps.
* **Noise**: white or pink noise added at an SNR drawn from ``noise_snr_db`` (relative to
  the speech's power), over the speech and 0.05-0.25 s of silence before and after it; a
  random gain.

Utterance ``i`` of a (language, split, seed) draws everything from its own generator, seeded
by those four values: it is the same whatever the count, so a corpus of 40 utterances is the
first 40 of one of 300. Each (language, split) is cached by its config
(``core.cache.cached``, kind ``corpus``) as int16 audio, and returned as float32.
"""

from __future__ import annotations

import functools
import importlib.metadata
import unicodedata
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.cache import cached

from .synth import MAX_PITCH, MAX_RATE, MIN_RATE, resample_int16, synthesizer
from .text import known_language, normalize
from .utterance import SAMPLE_RATE, Utterance

__all__ = [
    "CORPUS_VERSION",
    "SPLITS",
    "SPLIT_VARIANTS",
    "Speaker",
    "embedded_corpus",
    "embedded_split",
    "speakers",
    "word_list",
]

#: Raise when the build changes what it produces (a new cache entry).
CORPUS_VERSION = 1
SPLITS = ("train", "dev", "test")
#: espeak-ng voice variants per split: no dev or test voice is heard in training.
SPLIT_VARIANTS: dict[str, tuple[str, ...]] = {
    "train": ("m1", "m2", "m4", "m5", "m7", "f1", "f3"),
    "dev": ("m6", "f4"),
    "test": ("m3", "f2"),
}
#: Base pitches (espeak-ng 0..99) and speaking rates (words per minute) of the speakers.
PITCHES = (35, 50, 65)
RATES = (135, 155, 175)
#: Most frequent words per language the sentences draw from.
VOCABULARY_SIZE = 3000
#: Per-utterance pitch jitter (espeak-ng steps), gain (dB) and silence before and after the
#: speech (seconds; espeak-ng leaves none, recordings have some).
PITCH_JITTER = 4
GAIN_DB = (-6.0, 0.0)
PAD_SECONDS = (0.05, 0.25)


@dataclass(frozen=True)
class Speaker:
    """A synthetic speaker: an espeak-ng variant at a base pitch and speaking rate."""

    variant: str
    pitch: int
    rate: int

    @property
    def id(self) -> str:
        """``"espeak-m3-p50"``: the same id in every language (the same voice)."""
        return f"espeak-{self.variant}-p{self.pitch}"


def speakers(split: str) -> list[Speaker]:
    """The speakers of ``split`` (``train``: 21, ``dev`` and ``test``: 6 each)."""
    _check_split(split)
    return [
        Speaker(variant, pitch, RATES[(v + p) % len(RATES)])
        for v, variant in enumerate(SPLIT_VARIANTS[split])
        for p, pitch in enumerate(PITCHES)
    ]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split {split!r} must be one of {', '.join(SPLITS)}.")


@functools.lru_cache(maxsize=64)
def word_list(language: str, size: int = VOCABULARY_SIZE) -> tuple[tuple[str, ...], np.ndarray]:
    """The words sentences of ``language`` draw from, and their sampling probabilities.

    ``wordfreq``'s ``size`` most frequent words, kept where :func:`text.normalize` leaves the
    word as it is (only the language's letters) and, for one-letter words, only vowels (``y``,
    ``á``, ``į`` are words; ``l`` and ``d`` are French elisions cut from ``l'``, ``d'``).
    Probabilities are Zipf-like, ``1 / (rank + 10)``: frequent words recur, rare ones appear.
    """
    lang = known_language(language)
    import wordfreq

    words = []
    for word in wordfreq.top_n_list(lang.wordfreq, size):
        if normalize(word, lang) != word or " " in word:
            continue
        if len(word) == 1 and unicodedata.normalize("NFD", word)[0] not in "aeiouy":
            continue
        words.append(word)
    if len(words) < 50:
        raise ValueError(
            f"wordfreq has only {len(words)} usable words for {lang.code!r}; the embedded "
            "corpus needs at least 50 (check the language's alphabet in text.LANGUAGES)."
        )
    weights = 1.0 / (np.arange(len(words)) + 10.0)
    return tuple(words), weights / weights.sum()


def _generator(seed: int, language: str, split: str, index: int) -> np.random.Generator:
    """The generator of one utterance: independent of the corpus size."""
    key = [seed, zlib.crc32(language.encode()), SPLITS.index(split), index]
    return np.random.default_rng(key)


def _noise(rng: np.random.Generator, length: int, color: str) -> np.ndarray:
    """Unit-power white or pink (1/f power) noise."""
    if color == "pink":  # shaped in the frequency domain, at a power-of-two length (fast)
        size = 1 << max(length - 1, 1).bit_length()
        spectrum = np.fft.rfft(rng.standard_normal(size))
        frequencies = np.arange(len(spectrum), dtype=np.float64)
        frequencies[0] = 1.0
        noise = np.fft.irfft(spectrum / np.sqrt(frequencies), n=size)[:length]
    else:
        noise = rng.standard_normal(length)
    return noise / max(np.sqrt(np.mean(noise**2)), 1e-12)


def _mix(
    rng: np.random.Generator, speech: np.ndarray, snr_db: float | None
) -> tuple[np.ndarray, str]:
    """``speech`` padded with silence, noise at ``snr_db`` (None: clean), a random gain;
    the peak kept below 0.99 (int16-safe)."""
    color = "none"
    power = np.mean(speech.astype(np.float64) ** 2)  # of the speech alone, not the pads
    before, after = (int(rng.uniform(*PAD_SECONDS) * SAMPLE_RATE) for _ in range(2))
    out = np.pad(speech.astype(np.float64), (before, after))
    if snr_db is not None:
        color = str(rng.choice(["white", "pink"]))
        out = out + _noise(rng, len(out), color) * np.sqrt(power / 10 ** (snr_db / 10))
    out *= 10 ** (rng.uniform(*GAIN_DB) / 20)
    peak = np.max(np.abs(out))
    if peak > 0.99:
        out *= 0.99 / peak
    return out, color


def _utterance(
    language: str,
    split: str,
    index: int,
    seed: int,
    split_speakers: list[Speaker],
    words: tuple[int, int],
    speed: tuple[float, float],
    noise_snr_db: tuple[float, float] | None,
) -> dict[str, Any]:
    """Text, speaker and int16 audio of utterance ``index`` (see the module docstring)."""
    lang = known_language(language)
    rng = _generator(seed, lang.code, split, index)
    vocabulary, probabilities = word_list(lang.code)
    count = int(rng.integers(words[0], words[1] + 1))
    text = " ".join(vocabulary[i] for i in rng.choice(len(vocabulary), count, p=probabilities))
    speaker = split_speakers[int(rng.integers(len(split_speakers)))]
    rate = int(np.clip(round(speaker.rate * rng.uniform(*speed)), MIN_RATE, MAX_RATE))
    pitch = int(
        np.clip(speaker.pitch + rng.integers(-PITCH_JITTER, PITCH_JITTER + 1), 0, MAX_PITCH)
    )
    engine = synthesizer()
    native = engine.speak_native(text, f"{lang.espeak_voice}+{speaker.variant}", rate, pitch)
    speech = resample_int16(native, engine.native_rate)
    snr = None if noise_snr_db is None else float(rng.uniform(*noise_snr_db))
    mixed, color = _mix(rng, speech, snr)
    audio = torch.from_numpy(np.round(mixed * 32768.0).astype(np.int16))
    return {
        "text": text,
        "speaker": speaker.id,
        "audio": audio,
        "rate": rate,
        "pitch": pitch,
        "snr_db": snr,
        "noise": color,
    }


def _check_range(name: str, value: tuple, low: float, high: float) -> tuple:
    if len(value) != 2 or not low <= value[0] <= value[1] <= high:
        raise ValueError(
            f"{name}={value!r} must be (low, high) with {low} <= low <= high <= {high}."
        )
    return tuple(value)


def embedded_split(
    language: str,
    split: str,
    count: int,
    seed: int = 0,
    noise_snr_db: tuple[float, float] | None = (10.0, 30.0),
    cache_dir: str | Path | None = None,
    words: tuple[int, int] = (3, 8),
    speed: tuple[float, float] = (0.85, 1.15),
) -> list[Utterance]:
    """``count`` synthesized utterances of ``language`` for ``split``, from the cache.

    Args:
        language: A code of ``text.LANGUAGES``.
        split: ``train``, ``dev`` or ``test`` (each has its own speakers).
        count: Utterances (0 gives an empty list).
        seed: Seeds text, speakers, speed, pitch and noise.
        noise_snr_db: SNR range of the additive white/pink noise; ``None``: clean speech.
        cache_dir: Folder for the cache entry instead of the user cache.
        words: Range of words per utterance.
        speed: Range of the speaking-rate factor (speed perturbation).

    Returns:
        Utterances with ids ``"<language>-<split>-<index>"``, the normalised text, the speaker
        id and float32 audio at 16 kHz. The same arguments give identical audio.
    """
    lang = known_language(language)
    _check_split(split)
    if int(count) != count or count < 0:
        raise ValueError(f"count={count!r} for {lang.code} {split} must be an integer >= 0.")
    words = _check_range("words", words, 1, 50)
    speed = _check_range("speed", speed, MIN_RATE / max(RATES), MAX_RATE / min(RATES))
    if noise_snr_db is not None:
        noise_snr_db = _check_range("noise_snr_db", noise_snr_db, -20.0, 100.0)
    if count == 0:
        return []
    split_speakers = speakers(split)
    config = {
        "version": CORPUS_VERSION,
        "language": lang.code,
        "split": split,
        "count": int(count),
        "seed": int(seed),
        "noise_snr_db": noise_snr_db,
        "words": words,
        "speed": speed,
        "vocabulary_size": VOCABULARY_SIZE,
        "alphabet": lang.characters,
        "speakers": [(s.variant, s.pitch, s.rate) for s in split_speakers],
        "pitch_jitter": PITCH_JITTER,
        "gain_db": GAIN_DB,
        "pad_seconds": PAD_SECONDS,
        "espeakng_loader": _version("espeakng-loader"),
        "wordfreq": _version("wordfreq"),
    }

    def build() -> dict[str, list]:
        rows = [
            _utterance(lang.code, split, i, int(seed), split_speakers, words, speed, noise_snr_db)
            for i in range(int(count))
        ]
        return {key: [row[key] for row in rows] for key in rows[0]}

    value = cached("corpus", config, build, app="speech_asr", cache_dir=cache_dir)
    return [
        Utterance(
            id=f"{lang.code}-{split}-{i:05d}",
            language=lang.code,
            text=value["text"][i],
            speaker=value["speaker"][i],
            audio=value["audio"][i].numpy().astype(np.float32) / np.float32(32768.0),
        )
        for i in range(int(count))
    ]


def embedded_corpus(
    counts: Mapping[str, int],
    split: str,
    seed: int = 0,
    noise_snr_db: tuple[float, float] | None = (10.0, 30.0),
    cache_dir: str | Path | None = None,
) -> list[Utterance]:
    """The utterances of several languages for one split: ``counts`` maps language -> count.

    Languages come in the order of ``counts``; each is :func:`embedded_split` (cached
    separately, so adding a language does not rebuild the others).
    """
    out: list[Utterance] = []
    for language, count in counts.items():
        out.extend(
            embedded_split(
                language, split, count, seed=seed, noise_snr_db=noise_snr_db, cache_dir=cache_dir
            )
        )
    return out


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
