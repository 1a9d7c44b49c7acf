"""The log-mel frontend (checked against a numpy STFT, streaming-safe) and SpecAugment."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchaudio.functional import melscale_fbanks

from apps.speech_asr.features import (
    HOP_LENGTH,
    LOG_FLOOR,
    LOG_MEL_MEAN,
    LOG_MEL_STD,
    N_MELS,
    WIN_LENGTH,
    LogMel,
    num_frames,
    spec_augment,
)
from apps.speech_asr.utterance import SAMPLE_RATE


def _waveform(samples: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / SAMPLE_RATE
    tone = 0.3 * torch.sin(2 * math.pi * 440 * t) + 0.2 * torch.sin(2 * math.pi * 1250 * t)
    return tone + 0.05 * torch.randn(samples, generator=gen)


def _reference_log_mel(wave: np.ndarray) -> np.ndarray:
    """Independent numpy computation: periodic Hann window, |rfft|^2, HTK mel filterbank
    (no normalisation, 0 Hz to Nyquist), log(+floor), fixed scaling."""
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WIN_LENGTH) / WIN_LENGTH)
    frames = 1 + (len(wave) - WIN_LENGTH) // HOP_LENGTH
    spectra = np.stack(
        [
            np.abs(np.fft.rfft(wave[k * HOP_LENGTH : k * HOP_LENGTH + WIN_LENGTH] * window)) ** 2
            for k in range(frames)
        ]
    )
    fbank = melscale_fbanks(WIN_LENGTH // 2 + 1, 0.0, SAMPLE_RATE / 2, N_MELS, SAMPLE_RATE)
    mel = spectra @ fbank.double().numpy()
    return (np.log(mel + LOG_FLOOR) - LOG_MEL_MEAN) / LOG_MEL_STD


def test_log_mel_matches_a_numpy_reference() -> None:
    wave = _waveform(4000)
    features = LogMel()(wave)
    assert features.shape == (1 + (4000 - 400) // 160, N_MELS) == (num_frames(4000), N_MELS)
    expected = _reference_log_mel(wave.double().numpy())
    np.testing.assert_allclose(features.numpy(), expected, atol=2e-4, rtol=1e-4)


def test_log_mel_batches_like_single_clips() -> None:
    frontend = LogMel()
    waves = torch.stack([_waveform(3200, seed) for seed in range(3)])
    batch = frontend(waves)
    assert batch.shape == (3, num_frames(3200), N_MELS)
    for i in range(3):
        torch.testing.assert_close(batch[i], frontend(waves[i]), atol=1e-5, rtol=0)


def test_log_mel_is_streaming_safe() -> None:
    """center=False: features of any prefix, or of audio starting on a hop boundary, are
    exactly the matching frames of the whole clip (no edge padding that later audio
    would change), so a live stream can compute them chunk by chunk."""
    frontend = LogMel()
    wave = _waveform(16000)
    full = frontend(wave)
    for cut in (400, 2345, 8000, 15999):
        prefix = frontend(wave[:cut])
        torch.testing.assert_close(prefix, full[: num_frames(cut)], atol=1e-5, rtol=0)
    for hop in (1, 17, 50):
        tail = frontend(wave[hop * HOP_LENGTH :])
        torch.testing.assert_close(tail, full[hop : hop + tail.shape[0]], atol=1e-5, rtol=0)


def test_num_frames() -> None:
    assert [num_frames(n) for n in (0, 399, 400, 559, 560, 16000)] == [0, 0, 1, 1, 2, 98]


def test_log_mel_rejects_bad_waveforms() -> None:
    frontend = LogMel()
    with pytest.raises(ValueError, match="at least 400 samples"):
        frontend(torch.zeros(399))
    with pytest.raises(ValueError, match="mono"):
        frontend(torch.zeros(2, 2, 1000))


def test_silence_is_finite() -> None:
    features = LogMel()(torch.zeros(1600))
    assert torch.isfinite(features).all()
    assert torch.allclose(features, torch.full_like(features, features[0, 0].item()))


# ---------------------------------------------------------------------- SpecAugment
def _intervals(mask: torch.Tensor) -> list[tuple[int, int]]:
    """(start, width) of the runs of True in a 1-D bool tensor."""
    runs, start = [], None
    for i, flag in enumerate([*mask.tolist(), False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append((start, i - start))
            start = None
    return runs


def test_spec_augment_masks_follow_the_policy() -> None:
    features = torch.randn(4, 120, N_MELS) + 10.0  # no zeros of its own
    lengths = torch.tensor([120, 90, 30, 12])
    masked_any = 0
    for seed in range(20):
        out = spec_augment(features, lengths, torch.Generator().manual_seed(seed))
        assert out.shape == features.shape
        changed = out != features
        assert (out[changed] == 0).all()
        for b in range(4):
            length = int(lengths[b])
            # Time masks cover at most 40 of sample 0's 120 frames and none of the padding
            # of the others, so a bin changed on every frame is a frequency mask; frequency
            # masks cover at most 30 of 80 bins, so a frame changed at every bin is a time mask.
            columns = changed[b].all(0)
            rows = changed[b].all(1)
            for start, width in _intervals(rows):
                assert start + width <= length
            freq_runs = _intervals(columns)
            assert sum(w for _, w in freq_runs) <= 2 * 15
            assert all(w <= 30 for _, w in freq_runs)  # two masks may touch
            # Every changed cell is in a masked bin or a masked frame.
            assert (changed[b] == (columns[None, :] | rows[:, None])).all()
            time_cells = rows[:length].sum().item()
            assert time_cells <= 2 * min(20, length)
            masked_any += int(columns.any() or rows.any())
    assert masked_any > 60  # masks are drawn (widths can be 0 only sometimes)


def test_spec_augment_is_seeded_and_leaves_its_input_alone() -> None:
    features = torch.randn(2, 50, N_MELS)
    before = features.clone()
    lengths = torch.tensor([50, 40])
    a = spec_augment(features, lengths, torch.Generator().manual_seed(3))
    b = spec_augment(features, lengths, torch.Generator().manual_seed(3))
    c = spec_augment(features, lengths, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(features, before)
    torch.manual_seed(0)
    d = spec_augment(features, lengths)  # the global RNG
    assert d.shape == features.shape


def test_spec_augment_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="batch, frames, n_mels"):
        spec_augment(torch.zeros(10, N_MELS), torch.tensor([10]))
    with pytest.raises(ValueError, match="lengths"):
        spec_augment(torch.zeros(2, 10, N_MELS), torch.tensor([10]))
