"""Batched streaming decoding: equal to full-utterance decoding, streams of different lengths
in one batch, carried CTC / RNN-T state, per-stream adapter routing, and the latency figure.

Where streaming may differ from full decoding: nowhere by construction. The network pads a
whole utterance with zero frames to whole segments plus the look-ahead, and a stream that
ends is padded the same way, so even the last frames (whose look-ahead is padding) match;
encoder frames agree to float rounding (~1e-6) and tokens agree unless two labels' scores
tie within that rounding (random test models have no such ties; checked here).
"""

from __future__ import annotations

import copy

import pytest
import torch

from apps.speech_asr.model import ADAPTER_TARGETS, BLANK, FoundationConfig, SpeechModel
from apps.speech_asr.streaming import (
    StreamingRecognizer,
    algorithmic_latency_ms,
    ctc_collapse,
    greedy_decode,
    latency_breakdown_ms,
    rnnt_greedy,
    stream_decode,
    stream_encode,
)
from core.adapters import AdapterBank, BottleneckConfig, LoraConfig

from .reference import collapse_path

ATOL = 1e-5
LENGTHS = [83, 50, 17, 64, 3]


def tiny(decoder: str = "ctc", **overrides) -> SpeechModel:
    torch.manual_seed(0)
    config = FoundationConfig(
        d_model=32,
        num_layers=2,
        num_heads=4,
        ffn_dim=64,
        vocab_size=12,
        dropout=0.0,
        decoder=decoder,
        predictor_dim=16,
        joint_dim=24,
        **overrides,
    )
    return SpeechModel(config).eval()


def features_for(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random features, padded with garbage past each length."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(len(lengths), max(lengths) + 3, 80, generator=gen)
    lens = torch.tensor(lengths)
    features[torch.arange(features.shape[1])[None] >= lens[:, None]] = -50.0
    return features, lens


@torch.no_grad()
def _margin(model: SpeechModel, features: torch.Tensor, lengths: torch.Tensor) -> float:
    """Smallest gap between the best and second-best CTC label over real frames (the
    rounding-tie guard: token equality is promised when it is far above 1e-5)."""
    log_probs, out_lengths = model(features, lengths)
    top = log_probs.topk(2, dim=-1).values
    gaps = top[..., 0] - top[..., 1]
    return min(float(gaps[b, : out_lengths[b]].min()) for b in range(len(lengths)))


# ---------------------------------------------------------------------- streaming == full
@pytest.mark.parametrize("chunk_frames", [1, 7, 16, 20, 50, 1000])
@pytest.mark.parametrize("memory", [0, 2])
@pytest.mark.parametrize("lengths", [LENGTHS, [64, 50, 17, 3]])
def test_streaming_encoder_equals_full_utterance_on_every_frame(
    chunk_frames: int, memory: int, lengths: list[int]
) -> None:
    """Whatever the chunk size (buffered to segments), the encoder frames and CTC
    log-probabilities of a batch of streams equal the full-utterance ones on every real
    frame, the last ones included. (The second batch's longest stream ends on a segment
    boundary: there the Emformer's own padding mask would hide the zero frames that end
    the shorter streams' last segments, which streaming attends to.)"""
    model = tiny(max_memory_size=memory)
    features, lengths = features_for(lengths)
    full, full_lengths = model.encode(features, lengths)
    streamed, stream_lengths = stream_encode(model, features, lengths, chunk_frames)
    assert stream_lengths.tolist() == full_lengths.tolist() == ((lengths + 3) // 4).tolist()
    assert streamed.shape == full.shape
    full_lp, stream_lp = model.ctc_log_probs(full), model.ctc_log_probs(streamed)
    for b, n in enumerate(full_lengths.tolist()):
        torch.testing.assert_close(streamed[b, :n], full[b, :n], atol=ATOL, rtol=0)
        torch.testing.assert_close(stream_lp[b, :n], full_lp[b, :n], atol=ATOL, rtol=0)


@pytest.mark.parametrize("decoder", ["ctc", "rnnt"])
def test_stream_decode_equals_greedy_decode(decoder: str) -> None:
    model = tiny(decoder)
    features, lengths = features_for(LENGTHS)
    if decoder == "ctc":
        assert _margin(model, features, lengths) > 1e-3
    full = greedy_decode(model, features, lengths)
    assert any(full)  # a random model emits tokens
    for chunk_frames in (None, 5, 33):
        assert stream_decode(model, features, lengths, chunk_frames) == full
    for b, n in enumerate(LENGTHS):  # and each stream alone
        alone = stream_decode(model, features[b : b + 1, :n], lengths[b : b + 1])
        assert alone[0] == full[b]


def test_recognizer_emits_tokens_as_segments_complete() -> None:
    """accept() returns tokens as soon as a segment and its look-ahead have arrived; the
    pieces, with finish(), add up to the full decoding, and nothing is emitted twice."""
    model = tiny()
    features, lengths = features_for([83, 50])
    recognizer = StreamingRecognizer(model)
    state = recognizer.init(2)
    pieces: list[list[list[int]]] = []
    emitted_after: list[int] = []
    for start in range(0, 83, 10):
        chunk = features[:, start : start + 10]
        pieces.append(recognizer.accept(chunk, state, (lengths - start).clamp(0, chunk.shape[1])))
        emitted_after.append(state.frames_done)
    pieces.append(recognizer.finish(state))
    joined = [[token for piece in pieces for token in piece[b]] for b in range(2)]
    assert joined == state.tokens == greedy_decode(model, features, lengths)
    # After 20 frames one window (segment 16 + look-ahead 4) was available: 4 encoder frames.
    assert emitted_after[:3] == [0, 4, 4]
    assert recognizer.finish(state) == [[], []]


def test_recognizer_rejects_misuse() -> None:
    model = tiny()
    recognizer = StreamingRecognizer(model)
    state = recognizer.init(2)
    recognizer.accept(torch.randn(2, 10, 80), state, torch.tensor([10, 4]))  # stream 1 ends
    with pytest.raises(ValueError, match=r"streams \[1\] already ended"):
        recognizer.accept(torch.randn(2, 10, 80), state)
    with pytest.raises(ValueError, match="chunk must have shape"):
        recognizer.accept(torch.randn(3, 10, 80), state)
    with pytest.raises(ValueError, match="lengths must hold"):
        recognizer.accept(torch.randn(2, 10, 80), state, torch.tensor([11, 0]))
    recognizer.finish(state)
    with pytest.raises(ValueError, match="finished"):
        recognizer.accept(torch.randn(2, 10, 80), state)
    model.train()
    with pytest.raises(RuntimeError, match="eval mode"):
        recognizer.accept(torch.randn(2, 10, 80), recognizer.init(2))
    with pytest.raises(ValueError, match="chunk_frames"):
        stream_decode(model.eval(), *features_for([20]), chunk_frames=-1)


def test_decoding_restores_training_mode() -> None:
    model = tiny().train()
    features, lengths = features_for([30])
    stream_decode(model, features, lengths)
    greedy_decode(model, features, lengths)
    assert model.training


# ---------------------------------------------------------------------- greedy pieces
def test_ctc_collapse_carries_the_previous_label_across_chunks() -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (4, 30), generator=gen)  # many repeats and blanks
    lengths = torch.tensor([30, 22, 1, 9])
    valid = torch.arange(30)[None] < lengths[:, None]
    expected = [collapse_path(labels[b, : lengths[b]].tolist()) for b in range(4)]
    whole, _ = ctc_collapse(labels, valid)
    assert whole == expected
    for cut in range(1, 30):
        first, previous = ctc_collapse(labels[:, :cut], valid[:, :cut])
        second, _ = ctc_collapse(labels[:, cut:], valid[:, cut:], previous)
        assert [a + b for a, b in zip(first, second, strict=True)] == expected


def _reference_rnnt_greedy(model: SpeechModel, encoded: torch.Tensor, max_symbols: int) -> list:
    """Unbatched greedy RNN-T, one frame and one label at a time."""
    tokens: list[int] = []
    out, state = model.predictor_start(1, encoded.device)
    for t in range(encoded.shape[0]):
        for _ in range(max_symbols):
            logits = model.joint(encoded[t : t + 1], out)
            best = int(logits.argmax(-1))
            if best == BLANK:
                break
            tokens.append(best)
            step, state = model.predictor(torch.tensor([[best]]), state)
            out = step[:, 0]
    return tokens


@torch.no_grad()
def test_batched_rnnt_greedy_equals_one_stream_at_a_time() -> None:
    model = tiny("rnnt")
    features, lengths = features_for(LENGTHS)
    encoded, out_lengths = model.encode(features, lengths)
    valid = torch.arange(encoded.shape[1])[None] < out_lengths[:, None]
    for max_symbols in (1, 3):
        start = model.predictor_start(len(LENGTHS), encoded.device)
        batched, _ = rnnt_greedy(model, encoded, valid, start, max_symbols)
        for b, n in enumerate(out_lengths.tolist()):
            assert batched[b] == _reference_rnnt_greedy(model, encoded[b, :n], max_symbols)
        assert greedy_decode(model, features, lengths, max_symbols) == batched


# ---------------------------------------------------------------------- adapters per stream
def adapted(kind: str, decoder: str = "ctc") -> tuple[SpeechModel, AdapterBank, SpeechModel]:
    model = tiny(decoder)
    bare = copy.deepcopy(model)
    config = (
        BottleneckConfig(target_modules=ADAPTER_TARGETS, bottleneck_dim=8)
        if kind == "bottleneck"
        else LoraConfig(r=4, target_modules=ADAPTER_TARGETS)
    )
    bank = AdapterBank(model, config, names=["lt", "lv", "is"])
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return model.eval(), bank, bare.eval()


IDS = torch.tensor([0, 1, 2, -1, 0])


@pytest.mark.parametrize("decoder", ["ctc", "rnnt"])
@pytest.mark.parametrize("kind", ["bottleneck", "lora"])
def test_mixed_language_streaming_equals_each_stream_alone(kind: str, decoder: str) -> None:
    """One batch of streams in three languages (and one on the bare foundation): each
    stream's tokens equal its own stream decoded alone on its adapter, and the full
    utterance decoded with the same routing."""
    model, bank, bare = adapted(kind, decoder)
    features, lengths = features_for(LENGTHS)
    with bank.route(IDS):
        mixed = stream_decode(model, features, lengths, chunk_frames=9)
        assert mixed == greedy_decode(model, features, lengths)
    for b, n in enumerate(LENGTHS):
        with bank.route(IDS[b : b + 1]):
            assert stream_decode(model, features[b : b + 1, :n], lengths[b : b + 1]) == [mixed[b]]
    plain = stream_decode(bare, features, lengths)
    assert mixed[3] == plain[3]
    assert any(mixed[b] != plain[b] for b in (0, 1, 2, 4))


@pytest.mark.parametrize("kind", ["bottleneck", "lora"])
def test_streaming_path_runs_the_adapters(kind: str) -> None:
    """Emformer.infer (streaming) calls the adapted feed-forward layers: streamed encoder
    frames with adapters equal the full-utterance ones with adapters, per stream, and
    differ from the bare foundation's."""
    model, bank, bare = adapted(kind)
    features, lengths = features_for(LENGTHS)
    with bank.route(IDS):
        full, out_lengths = model.encode(features, lengths)
        streamed, _ = stream_encode(model, features, lengths, chunk_frames=16)
    bare_streamed, _ = stream_encode(bare, features, lengths, chunk_frames=16)
    for b, n in enumerate(out_lengths.tolist()):
        torch.testing.assert_close(streamed[b, :n], full[b, :n], atol=ATOL, rtol=0)
        gap = float((streamed[b, :n] - bare_streamed[b, :n]).abs().max())
        assert gap < ATOL if IDS[b] < 0 else gap > 1e-2


# ---------------------------------------------------------------------- latency
def test_algorithmic_latency() -> None:
    """Default: segment 4 x 40 ms + look-ahead 1 x 40 ms + the 25 ms window's 15 ms past
    its hop = 215 ms (200 ms without the window)."""
    config = FoundationConfig()
    assert latency_breakdown_ms(config) == {
        "segment": 160.0,
        "look_ahead": 40.0,
        "window": 15.0,
        "total": 215.0,
    }
    assert algorithmic_latency_ms(config) == 215.0
    assert algorithmic_latency_ms(config, include_window=False) == 200.0
    wide = FoundationConfig(stride=2, segment_length=8, right_context_length=2)
    assert algorithmic_latency_ms(wide) == 8 * 20 + 2 * 20 + 15


def test_latency_matches_when_the_recognizer_decodes() -> None:
    """The first segment's tokens come out once (segment + look-ahead) x stride feature
    frames have arrived, and not one frame earlier: the frames the latency counts."""
    model = tiny()
    config = model.config
    recognizer = StreamingRecognizer(model)
    state = recognizer.init(1)
    needed = config.window_frames  # 20 feature frames = 19 hops + one 25 ms window
    recognizer.accept(torch.randn(1, needed - 1, 80), state)
    assert state.frames_done == 0
    recognizer.accept(torch.randn(1, 1, 80), state)
    assert state.frames_done == config.segment_length
    audio_ms = (needed - 1) * 10 + 25
    assert audio_ms == algorithmic_latency_ms(config)
