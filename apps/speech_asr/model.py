"""The streaming foundation network: frame stacking, a torchaudio Emformer, a CTC head (or an
RNN-T predictor and joiner), and the parameter arithmetic of adapters on it.

Frames of 10 ms are stacked ``stride`` at a time (40 ms per encoder frame), projected to
``d_model`` and encoded by an Emformer that sees ``segment_length`` frames at a time with
``right_context_length`` frames of look-ahead and ``left_context_length`` frames of cached
history, so the same network decodes a whole utterance (:meth:`SpeechModel.forward`) or a
stream chunk by chunk (:meth:`SpeechModel.encode_window`, used by ``streaming.py``).

**Padding rule (why streaming equals full decoding on every frame).** An utterance's stacked
frames are padded with zero feature frames to a whole number of segments plus the right
context, and the encoder attends to those zeros as it would to any frame. A stream does the
same when it ends (its last window is filled with zero frames), so the chunked path computes
exactly what the full-utterance path computes, on every real frame, up to float rounding.
Frames past a sample's length are zeroed here, so a sample's output does not depend on what
the batch padded it with or on the other samples of the batch.

**Adapters.** ``ADAPTER_TARGETS`` names the layers per-language adapters go on: each Emformer
layer's feed-forward output linear (``pos_ff.4``), which both ``Emformer.forward`` and
``Emformer.infer`` call, and the ``output`` projection. The Emformer works time-first
(``(time, batch, dim)``) but an ``AdapterBank`` routes dimension 0 as the batch, so each
layer's feed-forward block is a :class:`BatchFirstSequential`: the same modules and
parameter names, run on ``(batch, time, dim)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn

from core.adapters import AdapterBank, AdapterLayer

from .features import HOP_MS, N_MELS

#: The decoders a foundation can have.
DECODERS = ("ctc", "rnnt")
#: Token id of the CTC / RNN-T blank (``CharVocabulary`` index 0).
BLANK = 0
#: Where per-language adapters go (suffixes, ``core.adapters`` matching rules).
ADAPTER_TARGETS = ["pos_ff.4", "output"]


@dataclass
class FoundationConfig:
    """Shape of the streaming foundation (every field keys its pre-training cache).

    Args:
        n_mels: Mel bins per 10 ms feature frame.
        stride: Feature frames stacked into one encoder frame (4: 40 ms frames).
        d_model: Emformer width.
        num_layers: Emformer layers.
        num_heads: Attention heads (must divide ``d_model``).
        ffn_dim: Hidden width of each layer's feed-forward block.
        segment_length: Encoder frames computed together while streaming (4: 160 ms).
        right_context_length: Encoder frames of look-ahead per segment (1: 40 ms).
        left_context_length: Encoder frames of cached history each segment attends to.
        max_memory_size: Emformer memory bank size (0: none; streaming equality is tested
            with 0).
        dropout: Dropout inside the Emformer (and the RNN-T predictor).
        decoder: ``"ctc"`` (a linear output per frame) or ``"rnnt"`` (predictor + joiner,
            trained with ``torchaudio.functional.rnnt_loss``).
        vocab_size: Output tokens including the blank (``len(CharVocabulary)``); 0 until the
            vocabulary is known (the network needs it >= 2).
        predictor_dim: RNN-T predictor embedding and LSTM width.
        joint_dim: RNN-T joiner width.
    """

    n_mels: int = N_MELS
    stride: int = 4
    d_model: int = 144
    num_layers: int = 4
    num_heads: int = 4
    ffn_dim: int = 576
    segment_length: int = 4
    right_context_length: int = 1
    left_context_length: int = 30
    max_memory_size: int = 0
    dropout: float = 0.1
    decoder: str = "ctc"
    vocab_size: int = 0
    predictor_dim: int = 128
    joint_dim: int = 144

    def __post_init__(self) -> None:
        positive = ("n_mels", "stride", "d_model", "num_layers", "num_heads", "ffn_dim")
        for name in (*positive, "segment_length", "predictor_dim", "joint_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"FoundationConfig.{name}={getattr(self, name)} must be >= 1.")
        for name in ("right_context_length", "left_context_length", "max_memory_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"FoundationConfig.{name}={getattr(self, name)} must be >= 0.")
        if self.d_model % self.num_heads:
            raise ValueError(
                f"FoundationConfig: d_model={self.d_model} is not a multiple of "
                f"num_heads={self.num_heads}; pick a d_model divisible by num_heads."
            )
        if self.decoder not in DECODERS:
            raise ValueError(
                f"FoundationConfig.decoder={self.decoder!r} must be one of {', '.join(DECODERS)}."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"FoundationConfig.dropout={self.dropout} must be in [0, 1).")
        if self.vocab_size < 0:
            raise ValueError(f"FoundationConfig.vocab_size={self.vocab_size} must be >= 0.")

    @property
    def frame_ms(self) -> float:
        """Duration of one encoder frame (hop x stride: 40 ms by default)."""
        return HOP_MS * self.stride

    @property
    def window_frames(self) -> int:
        """Feature frames one streaming step consumes: a segment plus its right context."""
        return (self.segment_length + self.right_context_length) * self.stride

    @property
    def hop_frames(self) -> int:
        """Feature frames a streaming step advances by: one segment."""
        return self.segment_length * self.stride


class BatchFirstSequential(nn.Sequential):
    """An Emformer layer's feed-forward block, run on ``(batch, time, dim)``.

    The Emformer hands it ``(time, batch, dim)``; the block is position-wise (LayerNorm,
    Linear, activation, Dropout), so transposing in and out changes nothing but the layout
    its layers see, which lets an ``AdapterBank`` route dimension 0 per sample. The children
    keep their ``Sequential`` names (``pos_ff.4`` is the output linear), so state dicts load
    as for a plain torchaudio Emformer.
    """

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.transpose(0, 1)).transpose(0, 1)


class Predictor(nn.Module):
    """RNN-T prediction network: embedding of the previous token -> LSTM -> LayerNorm.

    The blank id doubles as the start-of-sequence token.
    """

    def __init__(self, vocab_size: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim)
        self.lstm = nn.LSTM(dim, dim, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, tokens: Tensor, state: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``tokens`` (B, U) -> (outputs (B, U, dim), LSTM state ``(h, c)``, each (1, B, dim))."""
        hidden, state = self.lstm(self.embedding(tokens), state)
        return self.dropout(self.norm(hidden)), state


class SpeechModel(nn.Module):
    """Emformer encoder with a CTC head or an RNN-T predictor + joiner (see module docstring).

    Modules: ``input_proj`` (stacked features -> ``d_model``), ``encoder``
    (``torchaudio.models.Emformer``), ``output`` (CTC: ``d_model`` -> vocab; RNN-T: the
    joiner's last linear, ``joint_dim`` -> vocab); RNN-T adds ``predictor``,
    ``joint_encoder`` and ``joint_predictor``.
    """

    def __init__(self, config: FoundationConfig) -> None:
        super().__init__()
        if config.vocab_size < 2:
            raise ValueError(
                f"FoundationConfig.vocab_size={config.vocab_size}: set it to the vocabulary "
                "size (len(CharVocabulary), blank included) before building the network."
            )
        self.config = config
        c = config
        self.input_proj = nn.Linear(c.n_mels * c.stride, c.d_model)
        self.encoder = torchaudio.models.Emformer(
            input_dim=c.d_model,
            num_heads=c.num_heads,
            ffn_dim=c.ffn_dim,
            num_layers=c.num_layers,
            segment_length=c.segment_length,
            dropout=c.dropout,
            left_context_length=c.left_context_length,
            right_context_length=c.right_context_length,
            max_memory_size=c.max_memory_size,
        )
        for layer in self.encoder.emformer_layers:
            layer.pos_ff = BatchFirstSequential(*layer.pos_ff)
        if c.decoder == "ctc":
            self.output = nn.Linear(c.d_model, c.vocab_size)
        else:
            self.predictor = Predictor(c.vocab_size, c.predictor_dim, c.dropout)
            self.joint_encoder = nn.Linear(c.d_model, c.joint_dim)
            self.joint_predictor = nn.Linear(c.predictor_dim, c.joint_dim)
            self.output = nn.Linear(c.joint_dim, c.vocab_size)

    # ------------------------------------------------------------------ encoder
    def stack_frames(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Zero the frames past each length and stack ``stride`` frames into one.

        Returns ``(stacked (B, ceil(T / stride), n_mels * stride), stacked lengths)`` where
        ``T = max(lengths)`` and a sample's stacked length is ``ceil(length / stride)`` (its
        last stacked frame is completed with zero frames).
        """
        lengths = self.check_inputs(features, lengths)
        stride = self.config.stride
        frames = int(lengths.max())
        features = features[:, :frames]
        valid = torch.arange(frames, device=features.device) < lengths[:, None]
        features = torch.where(valid[..., None], features, features.new_zeros(()))
        stacked = math.ceil(frames / stride)
        features = F.pad(features, (0, 0, 0, stacked * stride - frames))
        batch, _, mels = features.shape
        return features.reshape(batch, stacked, stride * mels), (lengths + stride - 1) // stride

    def encode(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Full-utterance encoding: ``(B, T, n_mels)`` features -> ``(encoder frames
        (B, T', d_model), frames per sample (B,))`` with 40 ms frames (see the padding rule)."""
        stacked, out_lengths = self.stack_frames(features, lengths)
        seg, right = self.config.segment_length, self.config.right_context_length
        frames = stacked.shape[1]
        padded = math.ceil(frames / seg) * seg
        x = self.input_proj(F.pad(stacked, (0, 0, 0, padded - frames + right)))
        encoder_lengths = (out_lengths + seg - 1) // seg * seg
        encoded, _ = self.encoder(x, encoder_lengths)
        return encoded[:, :frames], out_lengths

    def encode_window(
        self, window: Tensor, states: list[list[Tensor]] | None
    ) -> tuple[Tensor, list[list[Tensor]]]:
        """One streaming step for a batch of streams: ``window`` holds
        ``config.window_frames`` feature frames per stream (a segment and its look-ahead,
        frames past a stream's end already zero); returns the segment's encoder frames
        ``(B, segment_length, d_model)`` and the Emformer states (one batched list per
        layer) to pass to the next step."""
        if window.dim() != 3 or window.shape[1] != self.config.window_frames:
            raise ValueError(
                f"encode_window takes (batch, {self.config.window_frames}, n_mels) feature "
                f"frames (segment + right context, times stride); got {tuple(window.shape)}."
            )
        full = torch.full((window.shape[0],), window.shape[1], device=window.device)
        stacked, _ = self.stack_frames(window, full)
        x = self.input_proj(stacked)
        full_stacked = torch.full((window.shape[0],), x.shape[1], device=window.device)
        encoded, _, states = self.encoder.infer(x, full_stacked, states)
        return encoded, states

    def check_inputs(self, features: Tensor, lengths: Tensor) -> Tensor:
        """Raise a clear error unless ``features`` is ``(batch, frames, n_mels)`` and
        ``lengths`` holds one count in ``[1, frames]`` per sample; returns the lengths as a
        long tensor on the features' device."""
        if features.dim() != 3 or features.shape[-1] != self.config.n_mels:
            raise ValueError(
                f"features must have shape (batch, frames, {self.config.n_mels}); got "
                f"{tuple(features.shape)}."
            )
        lengths = torch.as_tensor(lengths, device=features.device).long()
        if lengths.shape != (features.shape[0],):
            raise ValueError(
                f"lengths must hold one frame count per sample: shape ({features.shape[0]},), "
                f"got {tuple(lengths.shape)}."
            )
        if features.shape[0] == 0:
            raise ValueError("features hold an empty batch (0 samples).")
        if int(lengths.min()) < 1 or int(lengths.max()) > features.shape[1]:
            raise ValueError(
                f"lengths must lie in [1, {features.shape[1]}] (the frames given); got min "
                f"{int(lengths.min())}, max {int(lengths.max())}. Drop empty utterances."
            )
        return lengths

    # ------------------------------------------------------------------ heads
    @property
    def is_rnnt(self) -> bool:
        return self.config.decoder == "rnnt"

    def ctc_log_probs(self, encoded: Tensor) -> Tensor:
        """Per-frame log-probabilities of the CTC head: ``(..., d_model) -> (..., vocab)``."""
        if self.is_rnnt:
            raise TypeError("ctc_log_probs needs a CTC foundation (decoder='ctc').")
        return F.log_softmax(self.output(encoded), dim=-1)

    def forward(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """CTC log-probabilities ``(B, T', vocab)`` and frames per sample, full utterance.

        An RNN-T foundation has no per-frame distribution without a label history: use
        :meth:`loss`, :meth:`encode` and ``streaming.greedy_decode`` instead.
        """
        if self.is_rnnt:
            raise TypeError(
                "SpeechModel.forward returns CTC log-probabilities; this foundation has "
                "decoder='rnnt': call loss(...), encode(...) or streaming.greedy_decode(...)."
            )
        encoded, out_lengths = self.encode(features, lengths)
        return self.ctc_log_probs(encoded), out_lengths

    def predictor_start(self, batch: int, device: torch.device) -> tuple[Tensor, tuple]:
        """RNN-T predictor output and LSTM state after the start token (blank), per sample:
        ``((B, predictor_dim), (h, c))``."""
        blank = torch.full((batch, 1), BLANK, dtype=torch.long, device=device)
        out, state = self.predictor(blank)
        return out[:, 0], state

    def joint(self, encoded: Tensor, predicted: Tensor) -> Tensor:
        """RNN-T joiner logits: ``output(tanh(joint_encoder(enc) + joint_predictor(pred)))``.

        ``encoded`` (B, T, d_model) and ``predicted`` (B, U+1, predictor_dim) give
        ``(B, T, U+1, vocab)``; 2-D inputs (B, dim) give ``(B, vocab)`` (one decoding step).
        """
        enc, pred = self.joint_encoder(encoded), self.joint_predictor(predicted)
        if encoded.dim() == 3:
            enc, pred = enc[:, :, None], pred[:, None]
        return self.output(torch.tanh(enc + pred))

    # ------------------------------------------------------------------ loss
    def loss(
        self,
        features: Tensor,
        lengths: Tensor,
        targets: Tensor,
        target_lengths: Tensor,
        reduction: str = "mean",
    ) -> Tensor:
        """CTC (or RNN-T) loss per character: each sample's negative log-likelihood of its
        transcript divided by the transcript length (what ``F.ctc_loss``'s ``"mean"`` does
        per sample), then the batch mean (``reduction="mean"``), sum (``"sum"``) or the
        per-sample values ``(B,)`` (``"none"``).

        ``targets`` (B, U) hold token ids in ``[1, vocab)`` (0 is the blank); positions past
        ``target_lengths`` are ignored. A transcript longer than its CTC frames is an error.
        """
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction={reduction!r} must be 'mean', 'sum' or 'none'.")
        encoded, out_lengths = self.encode(features, lengths)
        targets, target_lengths = self._check_targets(targets, target_lengths, encoded.shape[0])
        if self.is_rnnt:
            per_sample = self._rnnt_nll(encoded, out_lengths, targets, target_lengths)
        else:
            per_sample = self._ctc_nll(encoded, out_lengths, targets, target_lengths)
        per_sample = per_sample / target_lengths.clamp(min=1).to(per_sample.dtype)
        if reduction == "none":
            return per_sample
        return per_sample.sum() if reduction == "sum" else per_sample.mean()

    def _check_targets(
        self, targets: Tensor, target_lengths: Tensor, batch: int
    ) -> tuple[Tensor, Tensor]:
        targets = torch.as_tensor(targets).long()
        target_lengths = torch.as_tensor(target_lengths, device=targets.device).long()
        if targets.dim() != 2 or targets.shape[0] != batch or target_lengths.shape != (batch,):
            raise ValueError(
                f"targets must be (batch, max_chars) and target_lengths (batch,) for a batch "
                f"of {batch}; got {tuple(targets.shape)} and {tuple(target_lengths.shape)}."
            )
        if int(target_lengths.min()) < 0 or int(target_lengths.max()) > targets.shape[1]:
            raise ValueError(
                f"target_lengths must lie in [0, {targets.shape[1]}]; got "
                f"{target_lengths.tolist()}."
            )
        width = int(target_lengths.max())
        targets = targets[:, :width]
        inside = torch.arange(width, device=targets.device) < target_lengths[:, None]
        bad = inside & ((targets < 1) | (targets >= self.config.vocab_size))
        if bool(bad.any()):
            row = int(bad.any(1).nonzero()[0])
            raise ValueError(
                f"targets of sample {row} hold ids outside [1, {self.config.vocab_size}) "
                f"({targets[row][bad[row]].tolist()}): 0 is the blank and the vocabulary has "
                f"{self.config.vocab_size} tokens. Encode transcripts with CharVocabulary."
            )
        return torch.where(inside, targets, torch.full_like(targets, BLANK)), target_lengths

    def _ctc_nll(
        self, encoded: Tensor, out_lengths: Tensor, targets: Tensor, target_lengths: Tensor
    ) -> Tensor:
        too_long = (target_lengths > out_lengths).nonzero().flatten().tolist()
        if too_long:
            b = too_long[0]
            raise ValueError(
                f"sample {b}: transcript of {int(target_lengths[b])} tokens is longer than its "
                f"{int(out_lengths[b])} CTC frames ({self.config.frame_ms:.0f} ms each); drop "
                "such utterances or lower FoundationConfig.stride."
            )
        log_probs = self.ctc_log_probs(encoded).transpose(0, 1)  # (T, B, V)
        return F.ctc_loss(
            log_probs,
            targets,
            out_lengths,
            target_lengths,
            blank=BLANK,
            reduction="none",
            zero_infinity=True,
        )

    def _rnnt_nll(
        self, encoded: Tensor, out_lengths: Tensor, targets: Tensor, target_lengths: Tensor
    ) -> Tensor:
        batch = encoded.shape[0]
        start = torch.full((batch, 1), BLANK, dtype=torch.long, device=targets.device)
        predicted, _ = self.predictor(torch.cat([start, targets], dim=1))
        logits = self.joint(encoded, predicted).float()
        return torchaudio.functional.rnnt_loss(
            logits,
            targets.int(),
            out_lengths.int(),
            target_lengths.int(),
            blank=BLANK,
            reduction="none",
        )


# ---------------------------------------------------------------------- parameter counts
def _adapter_parameter_ids(model: nn.Module) -> set[int]:
    return {
        id(p)
        for module in model.modules()
        if isinstance(module, AdapterLayer)
        for p in module.adapters.parameters()
    }


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Parameters of the network itself, adapters left out (``trainable_only``: only those
    that get gradients, adapters included: what an optimizer updates)."""
    if trainable_only:
        return sum(p.numel() for p in model.parameters() if p.requires_grad)
    adapters = _adapter_parameter_ids(model)
    return sum(p.numel() for p in model.parameters() if id(p) not in adapters)


def adapter_parameter_count(bank: AdapterBank, name: str) -> int:
    """Parameters of adapter ``name`` of ``bank`` (for stacked LoRA, its own slices of the
    stacks: rank ``r`` of that adapter, not the stack's padding)."""
    bank.index(name)  # a clear error for an unknown name
    if bank.stacked:
        return sum(t.numel() for t in bank.adapter_tensors(name).values())
    return sum(
        p.numel()
        for layer in bank.layers
        if name in layer.adapters
        for p in layer.adapters[name].parameters()
    )


def adapter_share(bank: AdapterBank, name: str) -> float:
    """Adapter ``name``'s parameters as a fraction of the foundation's (the paper's "0.4% of
    the model")."""
    return adapter_parameter_count(bank, name) / count_parameters(bank.model)
