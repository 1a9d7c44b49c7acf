"""The acoustic frontend: 80-bin log-mel features that stream, and SpecAugment for training.

Frames are 25 ms Hann windows every 10 ms with ``center=False``: frame ``k`` depends only on
samples ``[160 k, 160 k + 400)``, so computing features chunk by chunk as audio arrives gives
exactly the frames of the whole clip (no reflection padding at the edges that a later chunk
would change). The log energies are scaled by fixed constants instead of per-utterance
mean/variance normalisation, which would need the whole utterance before the first frame.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchaudio.transforms import MelSpectrogram

from .utterance import SAMPLE_RATE

#: Mel bins per frame.
N_MELS = 80
#: Analysis window: 25 ms at 16 kHz.
WIN_LENGTH = 400
#: Frame hop: 10 ms at 16 kHz.
HOP_LENGTH = 160
#: Window and hop in milliseconds (used by the latency arithmetic).
WINDOW_MS = 1000.0 * WIN_LENGTH / SAMPLE_RATE
HOP_MS = 1000.0 * HOP_LENGTH / SAMPLE_RATE
#: Added to the mel energies before the log, so silence is finite.
LOG_FLOOR = 1e-6
#: Fixed affine scaling of ``log(mel + LOG_FLOOR)``, so features are roughly zero-mean and
#: unit-variance without looking at the utterance. Measured on espeak-ng speech (es, de, lt,
#: is at espeak's own level, peak about 0.8) with white noise at 10 and 30 dB SNR: mean -1.6,
#: standard deviation 2.7; rounded toward quieter real recordings. Changing them changes
#: every feature: foundations trained before must be trained again.
LOG_MEL_MEAN = -2.0
LOG_MEL_STD = 3.0

#: SpecAugment defaults (LibriSpeech "LD" policy, two masks of each kind).
FREQ_MASKS = 2
FREQ_MASK_WIDTH = 15
TIME_MASKS = 2
TIME_MASK_WIDTH = 20


def num_frames(samples: int) -> int:
    """Feature frames :class:`LogMel` returns for a clip of ``samples`` samples (0 when the
    clip is shorter than one 25 ms window)."""
    return 0 if samples < WIN_LENGTH else 1 + (samples - WIN_LENGTH) // HOP_LENGTH


class LogMel(nn.Module):
    """Waveform (16 kHz float) -> scaled log-mel features, 80 bins every 10 ms.

    ``forward(waveform)`` takes ``(samples,)`` or ``(batch, samples)`` and returns
    ``(frames, 80)`` or ``(batch, frames, 80)`` with ``frames = 1 + (samples - 400) // 160``.
    Streaming-safe: see the module docstring.
    """

    def __init__(self, n_mels: int = N_MELS) -> None:
        super().__init__()
        self.n_mels = n_mels
        self.mel = MelSpectrogram(
            sample_rate=SAMPLE_RATE,
            n_fft=WIN_LENGTH,
            win_length=WIN_LENGTH,
            hop_length=HOP_LENGTH,
            n_mels=n_mels,
            center=False,
            power=2.0,
        )

    def forward(self, waveform: Tensor) -> Tensor:
        if waveform.dim() not in (1, 2):
            raise ValueError(
                f"LogMel takes a waveform of shape (samples,) or (batch, samples); got shape "
                f"{tuple(waveform.shape)}. Mix stereo down to mono first."
            )
        if waveform.shape[-1] < WIN_LENGTH:
            raise ValueError(
                f"LogMel needs at least {WIN_LENGTH} samples (one 25 ms window at "
                f"{SAMPLE_RATE} Hz); got {waveform.shape[-1]}. Drop or pad clips this short."
            )
        mel = self.mel(waveform.float())  # (..., n_mels, frames)
        return ((torch.log(mel + LOG_FLOOR) - LOG_MEL_MEAN) / LOG_MEL_STD).transpose(-1, -2)


def spec_augment(
    features: Tensor,
    lengths: Tensor,
    generator: torch.Generator | None = None,
    freq_masks: int = FREQ_MASKS,
    freq_width: int = FREQ_MASK_WIDTH,
    time_masks: int = TIME_MASKS,
    time_width: int = TIME_MASK_WIDTH,
    value: float = 0.0,
) -> Tensor:
    """SpecAugment (Park et al. 2019) without time warping: a copy of ``features`` with, per
    sample, ``freq_masks`` bands of up to ``freq_width`` mel bins and ``time_masks`` spans of
    up to ``time_width`` frames set to ``value`` (0: the scaled features' mean).

    Args:
        features: ``(batch, frames, n_mels)``.
        lengths: ``(batch,)`` valid frames per sample; time masks fall inside them.
        generator: Draws the masks (seeded: the same masks every run); the global RNG
            when ``None``.

    Mask widths are drawn uniformly from ``[0, width]`` (a time mask at most the sample's
    length) and their starts uniformly where the mask fits, as in the paper.
    """
    if features.dim() != 3:
        raise ValueError(
            f"spec_augment takes features of shape (batch, frames, n_mels); got "
            f"{tuple(features.shape)}."
        )
    batch, frames, bins = features.shape
    lengths = torch.as_tensor(lengths).clamp(max=frames)
    if lengths.shape != (batch,):
        raise ValueError(
            f"spec_augment: lengths has shape {tuple(lengths.shape)}; expected ({batch},)."
        )
    out = features.clone()
    for b in range(batch):
        for _ in range(freq_masks):
            start, width = _draw_span(bins, freq_width, generator)
            out[b, :, start : start + width] = value
        for _ in range(time_masks):
            start, width = _draw_span(int(lengths[b]), time_width, generator)
            out[b, start : start + width, :] = value
    return out


def _draw_span(size: int, max_width: int, generator: torch.Generator | None) -> tuple[int, int]:
    """(start, width) of one mask: width uniform in ``[0, min(max_width, size)]``, start
    uniform among the positions where it fits."""
    width = int(torch.randint(0, min(max_width, size) + 1, (1,), generator=generator))
    start = int(torch.randint(0, size - width + 1, (1,), generator=generator))
    return start, width
