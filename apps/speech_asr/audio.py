"""Read an audio file as the app's waveform: mono float32 at 16 kHz.

Audio is decoded with ``soundfile`` (libsndfile): ``torchaudio.load`` needs torchcodec and
FFmpeg, which a plain ``pip install`` does not bring. Everything the model sees is one
channel at :data:`~apps.speech_asr.utterance.SAMPLE_RATE`, so a file with several channels
is averaged to one and any other sample rate is resampled with
``torchaudio.functional.resample`` (windowed sinc). Each conversion is logged once per
process and kind (``stereo``, each source rate), not once per file, so a corpus of 8 kHz
telephone clips gives one line and not thousands.

A file that cannot be used raises :class:`AudioError` (a ``ValueError``) that names the
file and the fix: missing, not decodable (corrupt bytes, a format libsndfile does not know),
MP3 on a libsndfile without an MPEG decoder, no samples, non-finite samples, or longer
than ``max_seconds`` (checked from the header before decoding, so an hour-long file costs
nothing).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from .utterance import SAMPLE_RATE

__all__ = ["AudioError", "audio_duration", "load_audio", "mp3_supported", "to_model_rate"]

log = logging.getLogger(__name__)

#: Formats whose decoding needs an optional libsndfile codec, by file suffix.
_NEEDS_CODEC = {".mp3": "MP3"}

_CONVERT = "convert it to FLAC or WAV (e.g. `ffmpeg -i IN.mp3 -ac 1 -ar 16000 OUT.flac`)"

# What has been announced already: ("stereo",), ("rate", 8000), ...
_NOTICED: set[tuple[object, ...]] = set()
_NOTICED_LOCK = threading.Lock()


class AudioError(ValueError):
    """An audio file that cannot be read as a clip; the message names the file and the fix."""


def _notice(key: tuple[object, ...], message: str, *args: object) -> None:
    """Log ``message`` at INFO the first time ``key`` is seen in this process."""
    with _NOTICED_LOCK:
        if key in _NOTICED:
            return
        _NOTICED.add(key)
    log.info(message, *args)


def mp3_supported() -> bool:
    """Whether this ``soundfile``'s libsndfile decodes MP3 (libsndfile >= 1.1 does)."""
    import soundfile as sf

    return "MP3" in sf.available_formats()


def _check_codec(path: Path) -> None:
    """Raise before decoding when the file's format needs a codec libsndfile lacks."""
    import soundfile as sf

    codec = _NEEDS_CODEC.get(path.suffix.lower())
    if codec is not None and codec not in sf.available_formats():
        raise AudioError(
            f"audio file {str(path)!r} is {codec}, and this soundfile's libsndfile "
            f"({sf.__libsndfile_version__}) has no {codec} decoder; upgrade it "
            '(`pip install -U "soundfile>=0.12"`, whose wheels bundle libsndfile 1.1+ with '
            f"MP3) or {_CONVERT}."
        )


def _open_error(path: Path, err: Exception) -> AudioError:
    """The :class:`AudioError` for a file libsndfile refused to open."""
    if not path.exists():
        return AudioError(f"audio file {str(path)!r} does not exist; fix the path or remove it.")
    if path.is_dir():
        return AudioError(f"audio path {str(path)!r} is a folder, not a file; fix the path.")
    hint = (
        f"re-encode it or {_CONVERT}"
        if path.suffix.lower() in _NEEDS_CODEC
        else "replace it with a valid WAV/FLAC/OGG file or remove it from the data set"
    )
    return AudioError(f"audio file {str(path)!r} cannot be decoded ({err}); {hint}.")


def audio_duration(path: str | Path, max_seconds: float | None = None) -> float:
    """Seconds of audio in ``path``, read from its header (no decoding).

    Raises :class:`AudioError` when the file is missing or unreadable, holds no samples, or
    is longer than ``max_seconds`` (``None``: no limit), so a reader can reject a corpus row
    before any audio is decoded.
    """
    import soundfile as sf

    path = Path(path)
    _check_codec(path)
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise _open_error(path, err) from err
    if info.samplerate <= 0 or info.frames <= 0:
        raise AudioError(
            f"audio file {str(path)!r} holds no samples; remove it from the data set or "
            "re-export the recording."
        )
    seconds = info.frames / info.samplerate
    _check_length(path, seconds, max_seconds)
    return seconds


def _check_length(path: Path, seconds: float, max_seconds: float | None) -> None:
    if max_seconds is None:
        return
    if not max_seconds > 0:
        raise ValueError(f"max_seconds={max_seconds} must be positive (or None for no limit).")
    if seconds > max_seconds:
        raise AudioError(
            f"audio file {str(path)!r} is {seconds:.1f} s long, over the {max_seconds:g} s "
            "limit; raise the limit (data.max_seconds), or cut the clip into shorter ones "
            "or remove it from the data set."
        )


def to_model_rate(waveform: np.ndarray, sample_rate: int, source: str = "audio") -> np.ndarray:
    """``waveform`` (frames,) or (frames, channels) as mono float32 at 16 kHz.

    Channels are averaged (the usual downmix; it keeps a centred voice at full level);
    another rate is resampled with ``torchaudio.functional.resample``. Each kind of
    conversion is logged once per process. ``source`` names the input in the log.
    """
    data = np.asarray(waveform, dtype=np.float32)
    if data.ndim == 2:
        if data.shape[1] > 1:
            _notice(
                ("channels", data.shape[1]),
                "speech_asr: %d-channel audio (first: %s) is mixed down to mono",
                data.shape[1],
                source,
            )
            data = data.mean(axis=1, dtype=np.float32)
        else:
            data = data[:, 0]
    elif data.ndim != 1:
        raise AudioError(f"{source}: expected (frames,) or (frames, channels), got {data.shape}.")
    if sample_rate != SAMPLE_RATE:
        import torch
        from torchaudio.functional import resample

        _notice(
            ("rate", int(sample_rate)),
            "speech_asr: %d Hz audio (first: %s) is resampled to %d Hz",
            sample_rate,
            source,
            SAMPLE_RATE,
        )
        data = resample(torch.from_numpy(np.ascontiguousarray(data)), sample_rate, SAMPLE_RATE)
        data = data.numpy()
    return np.ascontiguousarray(data, dtype=np.float32)


def load_audio(path: str | Path, max_seconds: float | None = 30.0) -> np.ndarray:
    """The clip at ``path`` as a mono float32 waveform at 16 kHz.

    Args:
        path: Any format libsndfile decodes (WAV, FLAC, OGG/Vorbis, and MP3 with
            libsndfile >= 1.1).
        max_seconds: Longest clip accepted (``None``: no limit); longer is an error, never a
            silent cut, since a cut clip no longer matches its transcript.

    Raises:
        AudioError: The file is missing, cannot be decoded (the message says how to fix
            it), holds no samples or non-finite ones, or is longer than ``max_seconds``.
    """
    import soundfile as sf

    path = Path(path)
    audio_duration(path, max_seconds)  # header checks first: cheap, and before decoding
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise _open_error(path, err) from err
    _check_length(path, data.shape[0] / rate, max_seconds)  # a header may under-count (MP3)
    if not np.isfinite(data).all():
        raise AudioError(
            f"audio file {str(path)!r} contains NaN or infinite samples; re-export it or "
            "remove it from the data set."
        )
    return to_model_rate(data, rate, source=str(path))
