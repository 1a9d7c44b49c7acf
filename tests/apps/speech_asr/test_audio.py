import logging

import numpy as np
import pytest
import soundfile as sf

from apps.speech_asr import audio
from apps.speech_asr.audio import AudioError, audio_duration, load_audio, mp3_supported
from apps.speech_asr.utterance import SAMPLE_RATE


@pytest.fixture(autouse=True)
def fresh_notices(caplog):
    """Each test starts with no conversion announced yet and INFO captured."""
    audio._NOTICED.clear()
    caplog.set_level(logging.INFO, logger="apps.speech_asr.audio")
    yield
    audio._NOTICED.clear()


def _sine(freq, rate, seconds, amplitude=0.5):
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(x):
    spectrum = np.abs(np.fft.rfft(x))
    return np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)[spectrum.argmax()]


def _notices(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "apps.speech_asr.audio"]


def test_mono_16k_comes_back_unchanged(tmp_path, caplog):
    x = _sine(440, SAMPLE_RATE, 0.5)
    sf.write(tmp_path / "a.wav", x, SAMPLE_RATE, subtype="FLOAT")
    y = load_audio(tmp_path / "a.wav")
    assert y.dtype == np.float32 and y.ndim == 1
    np.testing.assert_array_equal(y, x)
    assert _notices(caplog) == []  # nothing converted, nothing logged
    # 16-bit PCM is scaled to [-1, 1)
    sf.write(tmp_path / "b.flac", x, SAMPLE_RATE, subtype="PCM_16")
    np.testing.assert_allclose(load_audio(tmp_path / "b.flac"), x, atol=1 / 2**15)


def test_stereo_is_averaged_and_logged_once(tmp_path, caplog):
    left, right = _sine(300, SAMPLE_RATE, 0.25), _sine(500, SAMPLE_RATE, 0.25, 0.2)
    for name in ("s1.wav", "s2.wav"):
        sf.write(tmp_path / name, np.stack([left, right], axis=1), SAMPLE_RATE, subtype="FLOAT")
    y1 = load_audio(tmp_path / "s1.wav")
    load_audio(tmp_path / "s2.wav")
    np.testing.assert_allclose(y1, (left + right) / 2, atol=1e-7)
    messages = _notices(caplog)
    assert len(messages) == 1, messages
    assert "2-channel audio" in messages[0] and "s1.wav" in messages[0]


@pytest.mark.parametrize(("rate", "fmt"), [(8000, "wav"), (44100, "flac"), (22050, "wav")])
def test_other_rates_are_resampled_and_logged_once_per_rate(tmp_path, caplog, rate, fmt):
    x = _sine(440, rate, 1.0)
    sf.write(tmp_path / f"a.{fmt}", x, rate)
    sf.write(tmp_path / f"b.{fmt}", x, rate)
    y = load_audio(tmp_path / f"a.{fmt}")
    load_audio(tmp_path / f"b.{fmt}")
    assert len(y) == SAMPLE_RATE  # one second stays one second
    assert _peak_hz(y) == pytest.approx(440, abs=1.5)  # the pitch survives resampling
    core = slice(1000, -1000)  # away from the filter's edge effects
    assert np.abs(y[core]).max() == pytest.approx(0.5, abs=0.02)
    messages = _notices(caplog)
    assert len(messages) == 1, messages
    assert f"{rate} Hz audio" in messages[0] and "resampled to 16000 Hz" in messages[0]


def test_a_stereo_8k_file_is_mixed_and_resampled_with_one_line_each(tmp_path, caplog):
    x = _sine(440, 8000, 0.5)
    sf.write(tmp_path / "t.wav", np.stack([x, x], axis=1), 8000)
    y = load_audio(tmp_path / "t.wav")
    assert len(y) == SAMPLE_RATE // 2
    assert _peak_hz(y) == pytest.approx(440, abs=3)
    messages = _notices(caplog)
    assert len(messages) == 2 and any("mono" in m for m in messages)


def test_empty_corrupt_missing_and_non_finite_files_are_clear_errors(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), SAMPLE_RATE)
    with pytest.raises(AudioError, match=r"empty\.wav' holds no samples; remove it"):
        load_audio(tmp_path / "empty.wav")
    (tmp_path / "corrupt.flac").write_bytes(b"RIFF\x00\x00 not audio at all" * 10)
    with pytest.raises(AudioError, match=r"corrupt\.flac' cannot be decoded .*replace it"):
        load_audio(tmp_path / "corrupt.flac")
    with pytest.raises(AudioError, match=r"gone\.wav' does not exist; fix the path"):
        load_audio(tmp_path / "gone.wav")
    with pytest.raises(AudioError, match="is a folder"):
        load_audio(tmp_path)
    x = np.zeros(100, dtype=np.float32)
    x[10] = np.nan
    sf.write(tmp_path / "nan.wav", x, SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nan\.wav' contains NaN"):
        load_audio(tmp_path / "nan.wav")
    assert issubclass(AudioError, ValueError)


def test_a_truncated_file_names_the_file(tmp_path):
    sf.write(tmp_path / "full.flac", _sine(440, SAMPLE_RATE, 1.0), SAMPLE_RATE)
    (tmp_path / "cut.flac").write_bytes((tmp_path / "full.flac").read_bytes()[:200])
    with pytest.raises(AudioError, match=r"cut\.flac' cannot be decoded"):
        load_audio(tmp_path / "cut.flac")


def test_the_length_limit(tmp_path):
    sf.write(tmp_path / "long.wav", np.zeros(3 * 8000, dtype=np.float32), 8000)
    assert audio_duration(tmp_path / "long.wav") == pytest.approx(3.0)
    with pytest.raises(AudioError, match=r"long\.wav' is 3\.0 s long, over the 2 s limit"):
        load_audio(tmp_path / "long.wav", max_seconds=2.0)
    with pytest.raises(AudioError, match=r"data\.max_seconds"):
        audio_duration(tmp_path / "long.wav", max_seconds=2.5)
    assert len(load_audio(tmp_path / "long.wav", max_seconds=3.0)) == 3 * SAMPLE_RATE
    assert len(load_audio(tmp_path / "long.wav", max_seconds=None)) == 3 * SAMPLE_RATE
    with pytest.raises(ValueError, match="must be positive"):
        load_audio(tmp_path / "long.wav", max_seconds=0)


@pytest.mark.skipif(not mp3_supported(), reason="this libsndfile has no MP3 codec")
def test_mp3_decodes_when_libsndfile_has_the_codec(tmp_path):
    x = _sine(440, 48000, 1.0, 0.3)
    sf.write(tmp_path / "a.mp3", x, 48000, format="MP3")
    y = load_audio(tmp_path / "a.mp3")
    assert abs(len(y) - SAMPLE_RATE) < 0.05 * SAMPLE_RATE
    assert _peak_hz(y) == pytest.approx(440, abs=3)


def test_mp3_without_a_decoder_names_the_fix(tmp_path, monkeypatch):
    (tmp_path / "clip.mp3").write_bytes(b"ID3" + bytes(200))
    without_mp3 = {k: v for k, v in sf.available_formats().items() if k != "MP3"}
    monkeypatch.setattr(sf, "available_formats", lambda: without_mp3)
    assert not mp3_supported()
    with pytest.raises(AudioError) as err:
        load_audio(tmp_path / "clip.mp3")
    message = str(err.value)
    assert "clip.mp3" in message and "no MP3 decoder" in message
    assert "soundfile>=0.12" in message and "ffmpeg -i IN.mp3" in message


def test_an_mp3_that_fails_to_decode_suggests_converting(tmp_path):
    (tmp_path / "bad.mp3").write_bytes(b"definitely not mpeg" * 5)
    with pytest.raises(AudioError, match=r"bad\.mp3' cannot be decoded .*ffmpeg"):
        load_audio(tmp_path / "bad.mp3")
