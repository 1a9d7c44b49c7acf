"""Speech synthesis with espeak-ng, through the library ``espeakng-loader`` bundles.

The embedded corpus needs speech in many languages from many speakers without a download:
espeak-ng speaks 131 languages, with speaker variants (``"is+m3"``, ``"es+f2"``), pitch and
speaking rate. ``pip install espeakng-loader`` brings the shared library and its voice data,
which this module drives through ctypes (no executable, no system package).

Determinism: libespeak-ng keeps state from one utterance to the next in C statics that its
API never resets (the pitch flutter's phase, the roughness cycle counter, gain control), so
the same call gives different audio depending on what was said before; and
``espeak_Initialize`` seeds the generator of the breath noise (variants ``+f2``, ``+f3``...)
with the clock. Each :class:`EspeakSynthesizer` therefore loads a private copy of the library,
unloads and reloads it (``dlclose``, a few milliseconds) before every utterance and seeds the
noise generator with a constant: every call starts from the same state, and the same
arguments always give the same samples.
"""

from __future__ import annotations

import _ctypes
import ctypes
import functools
import os
import shutil
import tempfile
import threading
import weakref
from pathlib import Path

import numpy as np
import torch

from .utterance import SAMPLE_RATE

__all__ = [
    "MAX_PITCH",
    "MAX_RATE",
    "MIN_RATE",
    "EspeakSynthesizer",
    "SynthesisError",
    "synthesizer",
]

#: espeak-ng's words-per-minute range without its ``sonic`` speed-up.
MIN_RATE, MAX_RATE = 80, 450
#: espeak-ng's pitch parameter runs 0..99 (50 is the voice's own).
MAX_PITCH = 99

# speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
_RATE, _PITCH = 1, 3  # espeak_PARAMETER: espeakRATE, espeakPITCH
_NOISE_SEED = 0  # espeak-ng's own generator (breath noise of variants such as +f2, +f3)
_INSTALL_HINT = "pip install espeakng-loader (or pip install -e '.[speech_asr]')"

_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class SynthesisError(RuntimeError):
    """espeak-ng is missing or failed; the message says what to install or change."""


def _bundled_paths() -> tuple[Path, Path]:
    """The shared library and voice data ``espeakng-loader`` ships."""
    try:
        import espeakng_loader
    except ImportError as err:
        raise SynthesisError(
            f"the embedded speech corpus needs espeak-ng: {_INSTALL_HINT} ({err})."
        ) from err
    return Path(espeakng_loader.get_library_path()), Path(espeakng_loader.get_data_path())


class EspeakSynthesizer:
    """Text to speech with espeak-ng: mono float32 waveforms at :data:`SAMPLE_RATE`.

    Thread-safe (one utterance at a time per instance). Each instance loads its own copy of
    the library, so two instances never share state.

    Args:
        library: ``libespeak-ng.so`` to use; default: the one ``espeakng-loader`` bundles.
        data: The ``espeak-ng-data`` folder; default: the bundled one.
    """

    def __init__(self, library: str | Path | None = None, data: str | Path | None = None) -> None:
        if library is None or data is None:
            bundled_library, bundled_data = _bundled_paths()
            library = library or bundled_library
            data = data or bundled_data
        library, data = Path(library), Path(data)
        for label, path in [("library", library), ("voice data", data)]:
            if not path.exists():
                raise SynthesisError(
                    f"espeak-ng {label} {str(path)!r} does not exist; reinstall it: "
                    f"{_INSTALL_HINT}."
                )
        self.data = data
        # A private copy: dlclose unloads it for sure (nobody else holds this path), which
        # is what resets the library's static state between utterances.
        self._source = library
        self._folder = Path(tempfile.mkdtemp(prefix="espeak-ng-"))
        self._library = self._folder / library.name
        shutil.copyfile(library, self._library)
        self._lock = threading.Lock()
        self._chunks: list[np.ndarray] = []
        self._callback = _SynthCallback(self._collect)  # kept alive as long as self
        self._holder: list[ctypes.CDLL] = []  # the loaded library, if any
        self._finalizer = weakref.finalize(self, _release, self._holder, self._folder, os.getpid())
        self._fresh = False
        self.native_rate = self._load()

    # ------------------------------------------------------------------ library handling
    def _collect(self, wav: ctypes.Array, count: int, events: int) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0  # 0: go on synthesizing

    def _load(self) -> int:
        """(Re)load the private library copy and initialise it; return its sample rate."""
        self._unload()
        if not self._library.is_file():  # a temp-folder cleaner removed the private copy
            self._folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self._source, self._library)
        try:
            lib = ctypes.CDLL(str(self._library))
        except OSError as err:
            raise SynthesisError(
                f"cannot load espeak-ng from {str(self._library)!r} ({err}); {_INSTALL_HINT}."
            ) from err
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
        ]  # fmt: skip
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(self.data).encode(), 0)
        if rate <= 0:
            _ctypes.dlclose(lib._handle)
            raise SynthesisError(
                f"espeak-ng could not start with the voice data {str(self.data)!r} (status "
                f"{rate}); reinstall it: {_INSTALL_HINT}."
            )
        lib.espeak_SetSynthCallback(self._callback)
        self._holder.append(lib)
        self._fresh = True
        return int(rate)

    def _unload(self) -> None:
        _unload(self._holder)

    def close(self) -> None:
        """Unload the library and delete its private copy (the instance is unusable after)."""
        with self._lock:
            self._finalizer()

    # ------------------------------------------------------------------ synthesis
    def speak_native(self, text: str, voice: str, rate: int = 160, pitch: int = 50) -> np.ndarray:
        """``text`` spoken by ``voice``: int16 samples at :attr:`native_rate` (22050 Hz).

        Args:
            text: What to say (UTF-8; not SSML).
            voice: An espeak-ng voice, optionally with a variant: ``"is"``, ``"is+m3"``,
                ``"es+f2"`` (variants ``m1``-``m8``, ``f1``-``f5``, ...).
            rate: Speaking rate in words per minute, 80..450.
            pitch: Base pitch, 0..99 (50: the voice's own).

        Raises:
            ValueError: empty text, an unknown voice, rate or pitch out of range, or text
                espeak-ng says nothing for.
        """
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"text {text!r} is empty: give espeak-ng something to say.")
        if not MIN_RATE <= int(rate) <= MAX_RATE:
            raise ValueError(f"rate={rate} words per minute must be in {MIN_RATE}..{MAX_RATE}.")
        if not 0 <= int(pitch) <= MAX_PITCH:
            raise ValueError(f"pitch={pitch} must be in 0..{MAX_PITCH} (50 is the voice's own).")
        encoded = text.replace("\x00", " ").encode("utf-8")
        with self._lock:
            if not self._holder:
                raise SynthesisError("this EspeakSynthesizer was closed; create a new one.")
            if not self._fresh:
                self._load()
            lib = self._holder[-1]
            self._fresh = False
            status = lib.espeak_SetVoiceByName(voice.encode("utf-8"))
            if status != 0:
                raise ValueError(
                    f"espeak-ng has no voice {voice!r} (status {status}); use a language code "
                    "such as 'es' or 'is', optionally with a variant: 'is+m3', 'es+f2'."
                )
            lib.espeak_SetParameter(_RATE, int(rate), 0)
            lib.espeak_SetParameter(_PITCH, int(pitch), 0)
            # espeak_Initialize seeds the breath-noise generator with the clock: fix it.
            lib.espeak_ng_SetRandSeed(_NOISE_SEED)
            self._chunks = []
            status = lib.espeak_Synth(encoded, len(encoded) + 1, 0, 0, 0, _CHARS_UTF8, None, None)
            chunks, self._chunks = self._chunks, []
        if status != 0:
            raise SynthesisError(f"espeak-ng failed on {text!r} with voice {voice!r} ({status}).")
        if not chunks:
            raise ValueError(f"espeak-ng produced no audio for {text!r} with voice {voice!r}.")
        return np.concatenate(chunks)

    def speak(self, text: str, voice: str, rate: int = 160, pitch: int = 50) -> np.ndarray:
        """``text`` spoken by ``voice``: mono float32 in [-1, 1] at :data:`SAMPLE_RATE`.

        Resampled from espeak-ng's 22050 Hz with torchaudio's sinc resampler. The same
        arguments always give the same samples. See :meth:`speak_native` for the arguments.
        """
        native = self.speak_native(text, voice, rate=rate, pitch=pitch)
        return resample_int16(native, self.native_rate)


def resample_int16(samples: np.ndarray, rate: int) -> np.ndarray:
    """int16 samples at ``rate`` as float32 in [-1, 1] at :data:`SAMPLE_RATE`."""
    wave = torch.from_numpy(samples.astype(np.float32) / 32768.0)
    if rate != SAMPLE_RATE:
        with torch.no_grad():
            wave = _resampler(int(rate))(wave)
    return wave.clamp_(-1.0, 1.0).numpy()


@functools.lru_cache(maxsize=8)
def _resampler(rate: int) -> torch.nn.Module:
    """``torchaudio.transforms.Resample`` to 16 kHz: ``torchaudio.functional.resample``'s
    filter (equal to float32 rounding), with its sinc kernel computed once, not per call."""
    from torchaudio.transforms import Resample

    return Resample(rate, SAMPLE_RATE)


def _unload(holder: list[ctypes.CDLL]) -> None:
    """Terminate and unload the library in ``holder`` (its static state goes with it)."""
    while holder:
        lib = holder.pop()
        lib.espeak_Terminate()
        _ctypes.dlclose(lib._handle)


def _release(holder: list[ctypes.CDLL], folder: Path, owner: int) -> None:
    """Unload the library in ``holder`` and delete its private copy's folder (only in the
    process that made it: a forked worker leaves the parent's copy alone)."""
    _unload(holder)
    if os.getpid() == owner:
        shutil.rmtree(folder, ignore_errors=True)


_SHARED: EspeakSynthesizer | None = None
_SHARED_LOCK = threading.Lock()


def synthesizer() -> EspeakSynthesizer:
    """The process-wide :class:`EspeakSynthesizer`, created on first use."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = EspeakSynthesizer()
        return _SHARED
