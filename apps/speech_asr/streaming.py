"""Decoding: batched streaming (a state per stream, chunk by chunk) and full-utterance greedy.

A :class:`StreamingRecognizer` runs a batch of streams in lockstep: feature frames arrive in
chunks of any size, are buffered, and every time a segment plus its look-ahead is available
for the batch the Emformer advances one segment (``Emformer.infer``, one state per stream,
batched). CTC decoding collapses repeats and drops blanks with the previous frame's label
carried across chunk boundaries; RNN-T decoding is greedy with each stream's predictor state
carried. Streams of different lengths share a batch: a stream that ended is fed zero frames
(the network's padding rule, see ``model.py``) and its tokens stop at its last frame.

Because the network pads a whole utterance exactly as a stream's end is padded, streaming
and full-utterance decoding compute the same encoder frames on every real frame (to float
rounding, ~1e-6) and so the same tokens, unless two labels tie within that rounding.

Per-sample adapters are the caller's: ``with bank.route(ids): stream_decode(model, ...)``;
every call here keeps the whole batch (finished streams included), so routing holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .features import HOP_MS, WINDOW_MS
from .model import BLANK, FoundationConfig, SpeechModel

#: Most labels greedy RNN-T decoding emits on one encoder frame.
MAX_SYMBOLS_PER_FRAME = 5


@dataclass
class StreamState:
    """Everything a batch of streams carries between chunks (one row per stream).

    Attributes:
        buffer: Feature frames received but not yet consumed ``(B, n, n_mels)``.
        received: Feature frames each stream has sent (its length once it ended).
        ended: Whether each stream has ended (later frames are zero padding).
        frames_done: Encoder frames decoded so far (the same for every stream: lockstep).
        encoder_states: The Emformer's per-layer states, batched over streams.
        previous: CTC: each stream's label on its last decoded frame (blank at the start).
        predictor: RNN-T: each stream's predictor output and LSTM state after its last label.
        tokens: Every token emitted so far, per stream.
        encoded: The encoder frames per step, when asked for (``keep_encoded``).
        finished: Set by :meth:`StreamingRecognizer.finish`.
    """

    buffer: Tensor
    received: Tensor
    ended: Tensor
    previous: Tensor
    frames_done: int = 0
    encoder_states: list[list[Tensor]] | None = None
    predictor: tuple[Tensor, tuple[Tensor, Tensor]] | None = None
    tokens: list[list[int]] = field(default_factory=list)
    encoded: list[Tensor] | None = None
    finished: bool = False

    @property
    def batch_size(self) -> int:
        return self.buffer.shape[0]


class StreamingRecognizer:
    """Greedy streaming decoding of a batch of streams with one :class:`SpeechModel`.

    >>> rec = StreamingRecognizer(model)                          # doctest: +SKIP
    >>> state = rec.init(batch_size=3)                            # doctest: +SKIP
    >>> new = rec.accept(chunk, state)   # chunk: (3, frames, 80)  # doctest: +SKIP
    >>> new = rec.finish(state)          # pad the ends, flush      # doctest: +SKIP

    The model must be in eval mode (dropout would make streaming output random).
    """

    def __init__(self, model: SpeechModel, max_symbols: int = MAX_SYMBOLS_PER_FRAME) -> None:
        self.model = model
        self.config: FoundationConfig = model.config
        self.max_symbols = max_symbols

    def init(self, batch_size: int, keep_encoded: bool = False) -> StreamState:
        """A fresh state for ``batch_size`` streams (``keep_encoded``: also keep every
        encoder frame, for checking against full-utterance encoding)."""
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1.")
        device = self.model.input_proj.weight.device
        dtype = self.model.input_proj.weight.dtype
        state = StreamState(
            buffer=torch.zeros(batch_size, 0, self.config.n_mels, device=device, dtype=dtype),
            received=torch.zeros(batch_size, dtype=torch.long, device=device),
            ended=torch.zeros(batch_size, dtype=torch.bool, device=device),
            previous=torch.full((batch_size,), BLANK, dtype=torch.long, device=device),
            tokens=[[] for _ in range(batch_size)],
            encoded=[] if keep_encoded else None,
        )
        if self.model.is_rnnt:
            with torch.no_grad():
                state.predictor = self.model.predictor_start(batch_size, device)
        return state

    @torch.no_grad()
    def accept(
        self, chunk: Tensor, state: StreamState, lengths: Tensor | list[int] | None = None
    ) -> list[list[int]]:
        """Feed ``chunk`` ``(B, n, n_mels)`` (the next ``n`` feature frames of every stream)
        and return the tokens that became final, per stream.

        ``lengths`` (B,) says how many of the ``n`` frames are real per stream (default all);
        a stream with fewer has ended, and its later chunks must hold no real frames.
        """
        self._check_chunk(chunk, state, lengths)
        n = chunk.shape[1]
        valid = torch.full_like(state.received, n) if lengths is None else torch.as_tensor(lengths)
        valid = valid.long().to(state.received.device)
        if bool((state.ended & (valid > 0)).any()):
            rows = (state.ended & (valid > 0)).nonzero().flatten().tolist()
            raise ValueError(
                f"streams {rows} already ended (an earlier chunk had fewer real frames than "
                "its size) but got more frames; start a new state for a new utterance."
            )
        keep = torch.arange(n, device=chunk.device) < valid[:, None].to(chunk.device)
        chunk = torch.where(keep[..., None], chunk, chunk.new_zeros(()))
        state.buffer = torch.cat([state.buffer, chunk.to(state.buffer.dtype)], dim=1)
        state.received += valid
        state.ended |= valid < n
        new: list[list[int]] = [[] for _ in range(state.batch_size)]
        while state.buffer.shape[1] >= self.config.window_frames:
            self._step(state, new)
        return new

    @torch.no_grad()
    def finish(self, state: StreamState) -> list[list[int]]:
        """End every stream: pad with zero frames until each stream's last frame has been
        decoded with its (zero) look-ahead, and return the last tokens per stream."""
        if state.finished:
            return [[] for _ in range(state.batch_size)]
        state.ended[:] = True
        new: list[list[int]] = [[] for _ in range(state.batch_size)]
        needed = int(self._encoder_lengths(state).max())
        while state.frames_done < needed:
            missing = self.config.window_frames - state.buffer.shape[1]
            if missing > 0:
                pad = state.buffer.new_zeros(state.batch_size, missing, state.buffer.shape[2])
                state.buffer = torch.cat([state.buffer, pad], dim=1)
            self._step(state, new)
        state.finished = True
        return new

    # ------------------------------------------------------------------ internals
    def _check_chunk(
        self, chunk: Tensor, state: StreamState, lengths: Tensor | list[int] | None
    ) -> None:
        if self.model.training:
            raise RuntimeError(
                "StreamingRecognizer needs the model in eval mode (dropout would randomise "
                "the output): call model.eval() first."
            )
        if state.finished:
            raise ValueError("this stream state is finished; start a new one with init().")
        expected = (state.batch_size, self.config.n_mels)
        if chunk.dim() != 3 or (chunk.shape[0], chunk.shape[2]) != expected:
            raise ValueError(
                f"chunk must have shape ({state.batch_size}, frames, {self.config.n_mels}) for "
                f"this state; got {tuple(chunk.shape)}."
            )
        if lengths is not None:
            lengths = torch.as_tensor(lengths)
            if lengths.shape != (state.batch_size,) or bool(
                ((lengths < 0) | (lengths > chunk.shape[1])).any()
            ):
                raise ValueError(
                    f"lengths must hold one count in [0, {chunk.shape[1]}] per stream; got "
                    f"{lengths.tolist()}."
                )

    def _encoder_lengths(self, state: StreamState) -> Tensor:
        """Encoder frames per stream: all received frames, stacked (rounded up)."""
        stride = self.config.stride
        return (state.received + stride - 1) // stride

    def _step(self, state: StreamState, new: list[list[int]]) -> None:
        """Encode one segment of every stream and decode its frames."""
        window = state.buffer[:, : self.config.window_frames]
        state.buffer = state.buffer[:, self.config.hop_frames :]
        encoded, state.encoder_states = self.model.encode_window(window, state.encoder_states)
        seg = encoded.shape[1]
        frame = state.frames_done + torch.arange(seg, device=encoded.device)
        # A stream still open has sent every frame of this segment; an ended one has
        # real frames up to its stacked length only.
        valid = ~state.ended[:, None] | (frame[None] < self._encoder_lengths(state)[:, None])
        state.frames_done += seg
        if state.encoded is not None:
            state.encoded.append(encoded)
        if self.model.is_rnnt:
            assert state.predictor is not None
            tokens, state.predictor = rnnt_greedy(
                self.model, encoded, valid, state.predictor, self.max_symbols
            )
        else:
            labels = self.model.ctc_log_probs(encoded).argmax(-1)
            tokens, state.previous = ctc_collapse(labels, valid, state.previous)
        for b, row in enumerate(tokens):
            new[b] += row
            state.tokens[b] += row


# ---------------------------------------------------------------------- greedy decoding
def ctc_collapse(
    labels: Tensor, valid: Tensor, previous: Tensor | None = None
) -> tuple[list[list[int]], Tensor]:
    """CTC greedy output of per-frame best labels ``(B, T)``: drop repeats, then blanks.

    ``valid`` (B, T) marks real frames (a prefix per row); ``previous`` (B,) is each row's
    label on the frame before (blank at an utterance start), so chunks decode as one
    sequence. Returns the tokens per row and the label of each row's last real frame.
    """
    if previous is None:
        previous = torch.full(labels.shape[:1], BLANK, dtype=labels.dtype, device=labels.device)
    before = torch.cat([previous[:, None], labels[:, :-1]], dim=1)
    emit = valid & (labels != BLANK) & (labels != before)
    last = valid.sum(1) - 1
    rows = torch.arange(labels.shape[0], device=labels.device)
    previous = torch.where(last >= 0, labels[rows, last.clamp(min=0)], previous)
    return [labels[b][emit[b]].tolist() for b in range(labels.shape[0])], previous


def rnnt_greedy(
    model: SpeechModel,
    encoded: Tensor,
    valid: Tensor,
    predictor: tuple[Tensor, tuple[Tensor, Tensor]],
    max_symbols: int = MAX_SYMBOLS_PER_FRAME,
) -> tuple[list[list[int]], tuple[Tensor, tuple[Tensor, Tensor]]]:
    """Batched greedy RNN-T decoding of encoder frames ``(B, T, d_model)``.

    On each real frame (``valid``, B x T) a stream takes the joiner's best label; a non-blank
    label is emitted and advances that stream's predictor, and the frame is tried again (at
    most ``max_symbols`` labels per frame); a blank moves on to the next frame. Every call
    keeps the whole batch (so an ``AdapterBank`` route holds); streams that move on are
    masked. ``predictor`` is ``(output (B, P), (h, c))`` after each stream's last label
    (``model.predictor_start`` at the start); returns the tokens and the updated predictor.
    """
    out, (h, c) = predictor
    projected = model.joint_encoder(encoded)
    tokens: list[list[int]] = [[] for _ in range(encoded.shape[0])]
    for t in range(encoded.shape[1]):
        active = valid[:, t]
        for _ in range(max_symbols):
            if not bool(active.any()):
                break
            logits = model.output(torch.tanh(projected[:, t] + model.joint_predictor(out)))
            best = logits.argmax(-1)
            emit = active & (best != BLANK)
            if not bool(emit.any()):
                break
            for b in emit.nonzero().flatten().tolist():
                tokens[b].append(int(best[b]))
            step_out, (step_h, step_c) = model.predictor(best[:, None], (h, c))
            out = torch.where(emit[:, None], step_out[:, 0], out)
            h = torch.where(emit[None, :, None], step_h, h)
            c = torch.where(emit[None, :, None], step_c, c)
            active = emit
    return tokens, (out, (h, c))


class _EvalMode:
    """Put a model in eval mode for a block and restore its mode afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.was_training = self.model.training
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)


@torch.no_grad()
def greedy_decode(
    model: SpeechModel,
    features: Tensor,
    lengths: Tensor,
    max_symbols: int = MAX_SYMBOLS_PER_FRAME,
) -> list[list[int]]:
    """Full-utterance greedy decoding of a batch ``(B, T, n_mels)``: token ids per sample
    (CTC: best label per frame, collapsed; RNN-T: :func:`rnnt_greedy`). Runs in eval mode."""
    with _EvalMode(model):
        encoded, out_lengths = model.encode(features, lengths)
        valid = torch.arange(encoded.shape[1], device=encoded.device) < out_lengths[:, None]
        if model.is_rnnt:
            start = model.predictor_start(encoded.shape[0], encoded.device)
            tokens, _ = rnnt_greedy(model, encoded, valid, start, max_symbols)
            return tokens
        labels = model.ctc_log_probs(encoded).argmax(-1)
        tokens, _ = ctc_collapse(labels, valid)
        return tokens


def _stream(
    model: SpeechModel,
    features: Tensor,
    lengths: Tensor,
    chunk_frames: int | None,
    keep_encoded: bool,
    max_symbols: int,
) -> StreamState:
    """Feed a padded batch to a recognizer chunk by chunk; the finished state."""
    lengths = model.check_inputs(features, lengths)
    chunk_frames = chunk_frames or model.config.hop_frames
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames={chunk_frames} must be >= 1.")
    with _EvalMode(model):
        recognizer = StreamingRecognizer(model, max_symbols)
        state = recognizer.init(features.shape[0], keep_encoded=keep_encoded)
        total = int(lengths.max())
        for start in range(0, total, chunk_frames):
            chunk = features[:, start : min(start + chunk_frames, total)]
            recognizer.accept(chunk, state, (lengths - start).clamp(0, chunk.shape[1]))
        recognizer.finish(state)
    return state


def stream_decode(
    model: SpeechModel,
    features: Tensor,
    lengths: Tensor,
    chunk_frames: int | None = None,
    max_symbols: int = MAX_SYMBOLS_PER_FRAME,
) -> list[list[int]]:
    """Decode a batch of streams ``(B, T, n_mels)`` of different ``lengths`` chunk by chunk,
    as they would arrive live: ``chunk_frames`` feature frames at a time (default one
    segment, 160 ms), all streams batched. Token ids per stream."""
    return _stream(model, features, lengths, chunk_frames, False, max_symbols).tokens


def stream_encode(
    model: SpeechModel, features: Tensor, lengths: Tensor, chunk_frames: int | None = None
) -> tuple[Tensor, Tensor]:
    """The encoder frames streaming computes, ``(B, T', d_model)`` and frames per stream:
    what :meth:`SpeechModel.encode` computes for the whole utterance (the padding rule)."""
    state = _stream(model, features, lengths, chunk_frames, True, MAX_SYMBOLS_PER_FRAME)
    assert state.encoded is not None
    stride = model.config.stride
    out_lengths = (state.received + stride - 1) // stride
    return torch.cat(state.encoded, dim=1)[:, : int(out_lengths.max())], out_lengths


# ---------------------------------------------------------------------- latency
def latency_breakdown_ms(config: FoundationConfig) -> dict[str, float]:
    """The parts of :func:`algorithmic_latency_ms`, in milliseconds.

    ``segment``: the frames computed together (``segment_length`` x stride x 10 ms hop);
    ``look_ahead``: the right context (``right_context_length`` x stride x 10 ms);
    ``window``: how far the last feature frame's 25 ms window reaches past its 10 ms hop
    (15 ms); ``total``: their sum.
    """
    segment = config.segment_length * config.frame_ms
    look_ahead = config.right_context_length * config.frame_ms
    window = WINDOW_MS - HOP_MS
    return {
        "segment": segment,
        "look_ahead": look_ahead,
        "window": window,
        "total": segment + look_ahead + window,
    }


def algorithmic_latency_ms(config: FoundationConfig, include_window: bool = True) -> float:
    """The longest a sound waits, by construction (compute time excluded), before the
    output frame that holds it can be decoded.

    A segment starting at time ``t`` is encoded once the features of the segment and its
    look-ahead exist, i.e. ``(segment_length + right_context_length) * stride`` feature
    frames, the last of which needs audio up to its 25 ms window's end: ``t + 160 + 40 +
    15 = t + 215`` ms by default. The sound at ``t`` waits longest. ``include_window=False``
    gives the usual "segment + look-ahead" figure (200 ms) that leaves the window out.
    """
    parts = latency_breakdown_ms(config)
    return parts["total"] if include_window else parts["segment"] + parts["look_ahead"]
