"""Whisper as a fine-tuning foundation: a shorter encoder window, the decoder prompt, features.

Whisper pads every input to 30 s, and on a CPU the encoder over those 1,500 positions is
most of a training step (several times the step at a 7 s window, measured in
``docs/speech_asr.md``). :func:`trim_encoder` keeps the first ``seconds * 50`` of the
encoder's fixed sinusoidal positions, so the model takes ``seconds * 100`` mel frames;
:func:`whisper_features` pads each clip's audio to that window, the way the feature
extractor pads to 30 s. Nothing is re-initialised: the first positions of a 30 s input are
the same vectors. What it costs in WER zero-shot is measured (docs).

The decoder prompt is Whisper's: ``<|startoftranscript|><|lang|><|transcribe|>
<|notimestamps|>``, then the transcript with a leading space and ``<|endoftext|>``.
Training scores the transcript and the end token only (the prompt is forced).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

#: Whisper's audio rate and its mel frames / encoder positions per second.
SAMPLE_RATE = 16_000
FRAMES_PER_SECOND = 100
POSITIONS_PER_SECOND = 50
#: The prompt's special tokens around the language token.
START, TRANSCRIBE, NO_TIMESTAMPS, END = (
    "<|startoftranscript|>",
    "<|transcribe|>",
    "<|notimestamps|>",
    "<|endoftext|>",
)
#: Label value the loss ignores (the forced prompt, padding).
IGNORE = -100


def window_positions(seconds: float) -> int:
    """Encoder positions of a ``seconds`` window (50 per second)."""
    return round(seconds * POSITIONS_PER_SECOND)


def trim_encoder(model: nn.Module, seconds: float) -> None:
    """Make ``model`` (a ``WhisperForConditionalGeneration``) take ``seconds`` of audio.

    Keeps the first ``seconds * 50`` rows of the encoder's frozen positional table and sets
    ``config.max_source_positions`` to match: the encoder then expects ``seconds * 100`` mel
    frames, and ``generate`` treats such inputs as one short-form segment.
    """
    encoder = model.model.encoder
    full = encoder.embed_positions.num_embeddings
    positions = window_positions(seconds)
    if not 0 < positions <= full:
        raise ValueError(
            f"model.encoder_seconds={seconds} must lie in (0, {full / POSITIONS_PER_SECOND:g}] "
            f"for this Whisper ({full} encoder positions, 50 per second)."
        )
    if positions == full:
        return
    table = nn.Embedding(positions, encoder.embed_positions.embedding_dim)
    with torch.no_grad():
        table.weight.copy_(encoder.embed_positions.weight[:positions])
    table.requires_grad_(False)
    encoder.embed_positions = table
    encoder.max_source_positions = positions
    model.config.max_source_positions = positions


def feature_extractor(seconds: float, mels: int = 80):
    """Whisper's log-mel front end (16 kHz, 25 ms windows, 10 ms hop, ``mels`` bands: 80 for
    every Whisper but large-v3's 128) with its window set to ``seconds``."""
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=mels)
    # Its constructor derives these from an integer chunk_length; set them for any window.
    extractor.chunk_length = seconds
    extractor.n_samples = round(seconds * SAMPLE_RATE)
    extractor.nb_max_frames = extractor.n_samples // extractor.hop_length
    return extractor


def whisper_features(extractor, audio: np.ndarray, seconds: float, name: str) -> Tensor:
    """Log-mel features (frames, mels) of one clip padded to the window; a clip longer than
    the window is an error naming it (the extractor would cut it silently)."""
    if len(audio) > seconds * SAMPLE_RATE:
        raise ValueError(
            f"utterance {name!r} lasts {len(audio) / SAMPLE_RATE:.1f} s, longer than the "
            f"Whisper window of {seconds:g} s; raise data.window_seconds (and so "
            "model.encoder_seconds), at most 30."
        )
    features = extractor(
        audio.astype(np.float32), sampling_rate=SAMPLE_RATE, return_tensors="pt"
    ).input_features[0]
    return features.T.contiguous()


def prompt_ids(tokenizer, language: str) -> list[int]:
    """The forced decoder prompt for ``language``: start, language, transcribe, no
    timestamps; a language the model has no token for is an error naming it."""
    tokens = [START, f"<|{language}|>", TRANSCRIBE, NO_TIMESTAMPS]
    ids = tokenizer.convert_tokens_to_ids(tokens)
    unknown = [t for t, i in zip(tokens, ids, strict=True) if i in (None, tokenizer.unk_token_id)]
    if unknown:
        raise ValueError(
            f"this Whisper's tokenizer has no token {unknown[0]!r}: language {language!r} is "
            "not one it knows (use a multilingual Whisper, or drop the language)."
        )
    return ids


def decoder_batch(
    tokenizer, languages: Sequence[str], texts: Sequence[str]
) -> tuple[Tensor, Tensor]:
    """Teacher-forcing inputs and labels for a batch of transcripts.

    ``decoder_input_ids`` is prompt + transcript tokens; ``labels[i]`` is the token after
    position i, so the three forced prompt tokens after the start are :data:`IGNORE` and the
    last label is the end token. Rows are right-padded (inputs with the end token, labels
    with :data:`IGNORE`).
    """
    end = tokenizer.convert_tokens_to_ids(END)
    rows = []
    for language, text in zip(languages, texts, strict=True):
        prompt = prompt_ids(tokenizer, language)
        body = tokenizer(" " + text.strip(), add_special_tokens=False).input_ids
        inputs = prompt + body
        labels = [IGNORE] * (len(prompt) - 1) + body + [end]
        rows.append((inputs, labels))
    width = max(len(inputs) for inputs, _ in rows)
    decoder_ids = torch.full((len(rows), width), end, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (inputs, targets) in enumerate(rows):
        decoder_ids[i, : len(inputs)] = torch.tensor(inputs)
        labels[i, : len(targets)] = torch.tensor(targets)
    return decoder_ids, labels
