"""espeak-ng synthesis through the bundled library: format, determinism, voices, errors."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from apps.speech_asr.embedded import SPLIT_VARIANTS
from apps.speech_asr.synth import (
    EspeakSynthesizer,
    SynthesisError,
    resample_int16,
    synthesizer,
)
from apps.speech_asr.text import LANGUAGES
from apps.speech_asr.utterance import SAMPLE_RATE


@pytest.fixture(scope="module")
def engine() -> EspeakSynthesizer:
    return synthesizer()


def test_speak_returns_float32_mono_at_16k(engine: EspeakSynthesizer) -> None:
    assert engine.native_rate == 22050
    native = engine.speak_native("hola mundo", "es+m3")
    audio = engine.speak("hola mundo", "es+m3")
    assert native.dtype == np.int16 and native.ndim == 1
    assert audio.dtype == np.float32 and audio.ndim == 1
    expected = len(native) * SAMPLE_RATE / engine.native_rate
    assert abs(len(audio) - expected) <= 1
    assert 0.3 < len(audio) / SAMPLE_RATE < 2.0  # two words
    assert 0.1 < np.abs(audio).max() <= 1.0
    # the resampled wave is the native one at another rate: same energy per second
    assert np.mean(audio**2) == pytest.approx(np.mean((native / 32768.0) ** 2), rel=0.05)


def test_same_arguments_give_identical_audio(engine: EspeakSynthesizer) -> None:
    """libespeak-ng keeps state between utterances; each call must start afresh."""
    first = engine.speak("una frase de prueba", "es+f2", rate=170, pitch=40)
    engine.speak("etwas ganz anderes dazwischen", "de+m1", rate=300, pitch=90)
    again = engine.speak("una frase de prueba", "es+f2", rate=170, pitch=40)
    np.testing.assert_array_equal(first, again)
    other = EspeakSynthesizer()
    try:
        np.testing.assert_array_equal(other.speak("una frase de prueba", "es+f2", 170, 40), first)
    finally:
        other.close()


def test_breath_noise_does_not_follow_the_clock(engine: EspeakSynthesizer) -> None:
    """espeak_Initialize seeds the breath noise (+f3 breathes) with time(NULL), in seconds."""
    first = engine.speak_native("una frase de prueba", "es+f3")
    time.sleep(1.05)
    np.testing.assert_array_equal(engine.speak_native("una frase de prueba", "es+f3"), first)


def test_voices_pitch_and_rate_change_the_audio(engine: EspeakSynthesizer) -> None:
    text = "þetta er góð setning"
    male, female = engine.speak(text, "is+m3"), engine.speak(text, "is+f2")
    assert len(male) != len(female) or not np.array_equal(male, female)
    low, high = engine.speak(text, "is+m3", pitch=20), engine.speak(text, "is+m3", pitch=80)
    assert len(low) != len(high) or not np.array_equal(low, high)
    slow, fast = engine.speak(text, "is+m3", rate=100), engine.speak(text, "is+m3", rate=300)
    assert len(fast) < 0.6 * len(slow)


def test_every_language_and_split_variant_is_a_voice(engine: EspeakSynthesizer) -> None:
    for lang in LANGUAGES.values():
        assert len(engine.speak_native("a", lang.espeak_voice)) > 0, lang.code
    for variants in SPLIT_VARIANTS.values():
        for variant in variants:
            assert len(engine.speak_native("a", f"es+{variant}")) > 0, variant


def test_bad_arguments_are_clear_errors(engine: EspeakSynthesizer) -> None:
    with pytest.raises(ValueError, match="empty"):
        engine.speak("  ", "es")
    with pytest.raises(ValueError, match="no voice 'xx-nope'"):
        engine.speak("hola", "xx-nope")
    with pytest.raises(ValueError, match=r"rate=20 .* 80\.\.450"):
        engine.speak("hola", "es", rate=20)
    with pytest.raises(ValueError, match=r"pitch=120 .* 0\.\.99"):
        engine.speak("hola", "es", pitch=120)
    # after an error the engine still works and is still deterministic
    np.testing.assert_array_equal(engine.speak("hola", "es"), engine.speak("hola", "es"))


def test_missing_library_names_the_install(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(SynthesisError, match="pip install espeakng-loader"):
        EspeakSynthesizer(library=tmp_path / "libespeak-ng.so", data=tmp_path)
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # import fails
    with pytest.raises(SynthesisError, match="pip install espeakng-loader"):
        EspeakSynthesizer()


def test_close_unloads_and_removes_the_private_copy() -> None:
    engine = EspeakSynthesizer()
    folder = engine._folder
    assert folder.is_dir()
    engine.close()
    assert not folder.exists()
    with pytest.raises(SynthesisError, match="closed"):
        engine.speak("hola", "es")


def test_shared_instance_and_threads_agree(engine: EspeakSynthesizer) -> None:
    assert synthesizer() is engine
    texts = [f"número {word}" for word in ("uno", "dos", "tres", "cuatro")]
    expected = [engine.speak(t, "es+m1") for t in texts]
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        results[i] = engine.speak(texts[i], "es+m1")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, audio in enumerate(expected):
        np.testing.assert_array_equal(results[i], audio)


def test_resample_int16() -> None:
    tone = (np.sin(2 * np.pi * 440 * np.arange(22050) / 22050) * 16000).astype(np.int16)
    out = resample_int16(tone, 22050)
    assert out.dtype == np.float32 and len(out) == SAMPLE_RATE
    spectrum = np.abs(np.fft.rfft(out))
    assert np.argmax(spectrum) == 440  # 1 s of audio: bin = Hz
    from torchaudio.functional import resample

    reference = resample(torch.from_numpy(tone / 32768.0).float(), 22050, SAMPLE_RATE)
    np.testing.assert_allclose(out, reference.numpy(), atol=2e-5)  # float32 rounding
    same = resample_int16(tone, SAMPLE_RATE)
    np.testing.assert_allclose(same, tone / 32768.0, atol=1e-7)


def test_a_removed_private_copy_is_restored(engine: EspeakSynthesizer) -> None:
    """A temp-folder cleaner may delete the private library copy mid-run; the next
    utterance copies it back and speaks the same as before."""
    import shutil

    before = engine.speak("labas rytas", "lt")
    shutil.rmtree(engine._folder)
    assert np.array_equal(engine.speak("labas rytas", "lt"), before)
