"""The Emformer CTC / RNN-T network: shapes, padding independence, losses against brute force,
parameter counts, and per-language adapters in one AdapterBank on mixed-language batches
(each sample equals itself alone on its adapter: loss, gradients, greedy decoding)."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
import torchaudio

from apps.speech_asr.model import (
    ADAPTER_TARGETS,
    BLANK,
    BatchFirstSequential,
    FoundationConfig,
    SpeechModel,
    adapter_parameter_count,
    adapter_share,
    count_parameters,
)
from apps.speech_asr.streaming import greedy_decode
from core.adapters import AdapterBank, BottleneckConfig, LoraConfig

from .reference import collapse_path

ATOL = 1e-5
NAMES = ["lt", "lv", "is"]


def tiny(decoder: str = "ctc", vocab: int = 12, **overrides) -> SpeechModel:
    """A model small enough for a test to run in a fraction of a second."""
    torch.manual_seed(0)
    config = FoundationConfig(
        d_model=32,
        num_layers=2,
        num_heads=4,
        ffn_dim=64,
        vocab_size=vocab,
        dropout=0.0,
        decoder=decoder,
        predictor_dim=16,
        joint_dim=24,
        **overrides,
    )
    return SpeechModel(config)


def batch(lengths: list[int], vocab: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random features padded with large garbage past each length (the model must ignore
    it) and random transcripts."""
    gen = torch.Generator().manual_seed(seed)
    frames = max(lengths) + 5
    features = torch.randn(len(lengths), frames, 80, generator=gen)
    lens = torch.tensor(lengths)
    features[torch.arange(frames)[None] >= lens[:, None]] = 100.0
    target_lengths = torch.tensor([max(1, n // 16) for n in lengths])
    targets = torch.randint(1, vocab, (len(lengths), int(target_lengths.max()) + 2), generator=gen)
    return {
        "features": features,
        "lengths": lens,
        "targets": targets,
        "target_lengths": target_lengths,
    }


# ---------------------------------------------------------------------- config and shapes
def test_default_config_is_the_spec() -> None:
    c = FoundationConfig()
    assert (c.n_mels, c.stride, c.d_model, c.num_layers, c.num_heads, c.ffn_dim) == (
        80,
        4,
        144,
        4,
        4,
        576,
    )
    assert (c.segment_length, c.right_context_length, c.left_context_length) == (4, 1, 30)
    assert (c.max_memory_size, c.dropout, c.decoder) == (0, 0.1, "ctc")
    assert c.frame_ms == 40.0 and c.window_frames == 20 and c.hop_frames == 16


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("d_model", 30, "multiple of num_heads"),
        ("decoder", "ctc2", "must be one of ctc, rnnt"),
        ("stride", 0, "stride=0 must be >= 1"),
        ("right_context_length", -1, "must be >= 0"),
        ("dropout", 1.0, r"\[0, 1\)"),
    ],
)
def test_config_rejects_bad_values(field: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FoundationConfig(**{field: value})


def test_network_needs_a_vocabulary() -> None:
    with pytest.raises(ValueError, match="len\\(CharVocabulary\\)"):
        SpeechModel(FoundationConfig())


def test_forward_shapes_and_log_probs() -> None:
    model = tiny().eval()
    data = batch([83, 50, 17])
    log_probs, out_lengths = model(data["features"], data["lengths"])
    assert log_probs.shape == (3, 21, 12)
    assert out_lengths.tolist() == [21, 13, 5]  # ceil(length / 4)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(3, 21))


def test_stack_frames_concatenates_consecutive_frames_and_zeroes_padding() -> None:
    model = tiny()
    features = torch.arange(2 * 9 * 80, dtype=torch.float32).reshape(2, 9, 80)
    stacked, lengths = model.stack_frames(features, torch.tensor([9, 6]))
    assert stacked.shape == (2, 3, 320) and lengths.tolist() == [3, 2]
    torch.testing.assert_close(stacked[0, 1], features[0, 4:8].reshape(-1))
    torch.testing.assert_close(stacked[0, 2, :80], features[0, 8])
    assert (stacked[0, 2, 80:] == 0).all()  # completed with zero frames
    torch.testing.assert_close(stacked[1, 1, :160], features[1, 4:6].reshape(-1))
    assert (stacked[1, 1, 160:] == 0).all() and (stacked[1, 2] == 0).all()


@pytest.mark.parametrize("lengths", [[83, 50, 17, 4], [64, 50, 17, 3]])
def test_each_sample_is_independent_of_its_batch_and_padding(lengths: list[int]) -> None:
    """A sample's output depends on its own frames only (not on the garbage past its end or
    the other samples), so batching cannot change what a language is scored on."""
    model = tiny().eval()
    data = batch(lengths)
    log_probs, out_lengths = model(data["features"], data["lengths"])
    for b, n in enumerate(data["lengths"].tolist()):
        alone, _ = model(data["features"][b : b + 1, :n], data["lengths"][b : b + 1])
        m = int(out_lengths[b])
        torch.testing.assert_close(alone[0], log_probs[b, :m], atol=ATOL, rtol=0)


def test_bad_inputs_are_clear_errors() -> None:
    model = tiny()
    data = batch([20, 16])
    with pytest.raises(ValueError, match="lengths must lie in"):
        model(data["features"], torch.tensor([20, 0]))
    with pytest.raises(ValueError, match="lengths must lie in"):
        model(data["features"], torch.tensor([200, 16]))
    with pytest.raises(ValueError, match=r"\(batch, frames, 80\)"):
        model(torch.zeros(2, 20, 40), torch.tensor([20, 16]))
    with pytest.raises(ValueError, match="one frame count per sample"):
        model(data["features"], torch.tensor([20]))
    targets = torch.tensor([[1, 2, 3, 4, 5, 6], [1, 2, 0, 0, 0, 0]])
    with pytest.raises(ValueError, match="longer than its 5 CTC frames"):
        model.loss(data["features"], data["lengths"], targets, torch.tensor([6, 2]))
    with pytest.raises(ValueError, match="0 is the blank"):
        model.loss(data["features"], data["lengths"], targets, torch.tensor([3, 3]))
    with pytest.raises(ValueError, match="reduction"):
        model.loss(data["features"], data["lengths"], targets, torch.tensor([3, 2]), "avg")
    with pytest.raises(TypeError, match="rnnt"):
        tiny("rnnt")(data["features"], data["lengths"])


def test_batch_first_feed_forward_equals_torchaudio_emformer() -> None:
    """Running each layer's feed-forward block batch-first changes no number and no
    parameter name: the encoder is a torchaudio Emformer."""
    model = tiny().eval()
    plain = torchaudio.models.Emformer(
        32, 4, 64, 2, 4, dropout=0.0, left_context_length=30, right_context_length=1
    ).eval()
    assert set(plain.state_dict()) == set(model.encoder.state_dict())
    plain.load_state_dict(model.encoder.state_dict())
    assert all(
        isinstance(layer.pos_ff, BatchFirstSequential) for layer in model.encoder.emformer_layers
    )
    x, lengths = torch.randn(3, 13, 32), torch.tensor([12, 8, 12])
    torch.testing.assert_close(model.encoder(x, lengths)[0], plain(x, lengths)[0])
    chunk = torch.randn(3, 5, 32)
    torch.testing.assert_close(
        model.encoder.infer(chunk, torch.full((3,), 5), None)[0],
        plain.infer(chunk, torch.full((3,), 5), None)[0],
    )


# ---------------------------------------------------------------------- losses
def test_ctc_loss_equals_brute_force_over_alignments() -> None:
    """Per-sample loss x transcript length = -log of the summed probability of every frame
    labelling that collapses to the transcript (all 4^4 paths enumerated)."""
    model = tiny(vocab=4).eval()
    features = torch.randn(2, 16, 80)
    lengths = torch.tensor([16, 11])  # 4 and 3 encoder frames
    targets = torch.tensor([[1, 1, 3], [2, 3, 0]])
    target_lengths = torch.tensor([3, 2])
    per_sample = model.loss(features, lengths, targets, target_lengths, reduction="none")
    log_probs, out_lengths = model(features, lengths)
    for b in range(2):
        frames, target = int(out_lengths[b]), targets[b, : target_lengths[b]].tolist()
        terms = [
            sum(log_probs[b, t, label] for t, label in enumerate(path))
            for path in itertools.product(range(4), repeat=frames)
            if collapse_path(path) == target
        ]
        nll = -torch.logsumexp(torch.stack(terms), 0)
        torch.testing.assert_close(per_sample[b] * target_lengths[b], nll, atol=1e-4, rtol=1e-5)
    mean = model.loss(features, lengths, targets, target_lengths)
    total = model.loss(features, lengths, targets, target_lengths, reduction="sum")
    torch.testing.assert_close(mean, per_sample.mean())
    torch.testing.assert_close(total, per_sample.sum())


def test_rnnt_loss_equals_the_forward_recursion() -> None:
    """Per-sample RNN-T loss x transcript length equals -log P(y|x) from the alpha
    recursion over the joiner's log-softmax (blank 0 moves in time, a label in U)."""
    model = tiny("rnnt", vocab=5).eval()
    features = torch.randn(2, 20, 80)
    lengths = torch.tensor([20, 12])  # 5 and 3 encoder frames
    targets = torch.tensor([[1, 4, 2], [3, 3, 0]])
    target_lengths = torch.tensor([3, 2])
    per_sample = model.loss(features, lengths, targets, target_lengths, reduction="none")
    encoded, out_lengths = model.encode(features, lengths)
    start = torch.zeros(2, 1, dtype=torch.long)
    predicted, _ = model.predictor(torch.cat([start, targets], 1))
    log_probs = model.joint(encoded, predicted).log_softmax(-1)
    for b in range(2):
        frames, labels = int(out_lengths[b]), targets[b, : target_lengths[b]].tolist()
        alpha = torch.full((frames, len(labels) + 1), -math.inf)
        for t, u in itertools.product(range(frames), range(len(labels) + 1)):
            if t == 0 and u == 0:
                alpha[t, u] = 0.0
                continue
            options = []
            if t > 0:
                options.append(alpha[t - 1, u] + log_probs[b, t - 1, u, BLANK])
            if u > 0:
                options.append(alpha[t, u - 1] + log_probs[b, t, u - 1, labels[u - 1]])
            alpha[t, u] = torch.logsumexp(torch.stack(options), 0)
        nll = -(alpha[-1, -1] + log_probs[b, frames - 1, len(labels), BLANK])
        torch.testing.assert_close(per_sample[b] * target_lengths[b], nll, atol=1e-4, rtol=1e-5)


def test_rnnt_loss_backward_reaches_every_part() -> None:
    model = tiny("rnnt").train()
    data = batch([83, 50, 17])
    loss = model.loss(data["features"], data["lengths"], data["targets"], data["target_lengths"])
    loss.backward()
    assert torch.isfinite(loss)
    for name in (
        "input_proj",
        "encoder",
        "predictor",
        "joint_encoder",
        "joint_predictor",
        "output",
    ):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(name)]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert any(g.abs().sum() > 0 for g in grads), name


@pytest.mark.parametrize(("decoder", "steps"), [("ctc", 60), ("rnnt", 150)])
def test_training_fits_two_utterances_and_greedy_decoding_reads_them_back(
    decoder: str, steps: int
) -> None:
    """Loss, gradients and greedy decoding fit together: a few Adam steps memorise two
    transcripts (with a repeated letter, which CTC must separate by a blank)."""
    model = tiny(decoder, vocab=7)
    features, lengths = torch.randn(2, 48, 80), torch.tensor([48, 36])
    targets, target_lengths = torch.tensor([[1, 2, 3, 3, 0], [4, 5, 4, 6, 1]]), torch.tensor([4, 5])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = model.loss(features, lengths, targets, target_lengths)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert greedy_decode(model, features, lengths) == [[1, 2, 3, 3], [4, 5, 4, 6, 1]]
    assert model.training  # greedy_decode restores the mode


# ---------------------------------------------------------------------- parameter counts
def _emformer_layer_parameters(d: int, ffn: int) -> int:
    attention = (d * 2 * d + 2 * d) + (d * d + d) + (d * d + d)
    feed_forward = 2 * d + (d * ffn + ffn) + (ffn * d + d)
    return attention + feed_forward + 2 * d + 2 * d  # + layer_norm_input, layer_norm_output


def test_parameter_count_of_the_default_foundation() -> None:
    c = FoundationConfig(vocab_size=60)
    expected = (320 * 144 + 144) + 4 * _emformer_layer_parameters(144, 576) + (144 * 60 + 60)
    assert count_parameters(SpeechModel(c)) == expected == 1_058_892


def _bottleneck_parameters(features: int, dim: int) -> int:
    """Down (features -> dim) and up (dim -> features) linears with biases."""
    return 2 * features * dim + dim + features


def test_adapter_counts_and_share() -> None:
    model = tiny()
    base = count_parameters(model)
    bank = AdapterBank(
        model, BottleneckConfig(target_modules=ADAPTER_TARGETS, bottleneck_dim=8), NAMES
    )
    expected = 2 * _bottleneck_parameters(32, 8) + _bottleneck_parameters(12, 8)
    assert count_parameters(model) == base  # adapters are not the foundation's
    assert adapter_parameter_count(bank, "lv") == expected
    assert adapter_share(bank, "lv") == pytest.approx(expected / base)
    assert count_parameters(model, trainable_only=True) == 3 * expected
    with pytest.raises(KeyError, match="no adapter 'xx'"):
        adapter_parameter_count(bank, "xx")
    lora_model = tiny()
    lora = AdapterBank(lora_model, LoraConfig(r=4, target_modules=ADAPTER_TARGETS), NAMES)
    assert lora.stacked
    lora_expected = 2 * 4 * (64 + 32) + 4 * (32 + 12)  # A (r x in) + B (out x r) per layer
    assert adapter_parameter_count(lora, "is") == lora_expected


# ---------------------------------------------------------------------- adapters, mixed batches
def adapted(kind: str, decoder: str = "ctc") -> tuple[SpeechModel, AdapterBank, SpeechModel]:
    """(model with a 3-language bank whose adapters are perturbed away from the identity,
    the bank, a copy of the bare model)."""
    model = tiny(decoder)
    bare = copy.deepcopy(model)
    config = (
        BottleneckConfig(target_modules=ADAPTER_TARGETS, bottleneck_dim=8)
        if kind == "bottleneck"
        else LoraConfig(r=4, target_modules=ADAPTER_TARGETS)
    )
    bank = AdapterBank(model, config, names=NAMES)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:  # adapters only: the bank froze the foundation
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return model, bank, bare


IDS = torch.tensor([0, 1, 2, -1, 0])
LENGTHS = [83, 50, 17, 64, 37]


@pytest.mark.parametrize("decoder", ["ctc", "rnnt"])
@pytest.mark.parametrize("kind", ["bottleneck", "lora"])
def test_mixed_batch_loss_and_gradients_equal_each_sample_alone(kind: str, decoder: str) -> None:
    """One mixed-language batch (three adapters and the bare foundation) gives every sample
    the loss it has alone on its own adapter, and every adapter the gradient of the sum of
    its own samples' losses computed alone."""
    model, bank, _ = adapted(kind, decoder)
    model.train()
    data = batch(LENGTHS)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("adapters" in n for n in trainable)
    with bank.route(IDS):
        per_sample = model.loss(
            data["features"], data["lengths"], data["targets"], data["target_lengths"], "none"
        )
    per_sample.sum().backward()
    mixed = {n: p.grad.clone() for n, p in trainable.items()}
    model.zero_grad()
    for b, n in enumerate(LENGTHS):
        width = int(data["target_lengths"][b])
        with bank.route(IDS[b : b + 1]):
            alone = model.loss(
                data["features"][b : b + 1, :n],
                data["lengths"][b : b + 1],
                data["targets"][b : b + 1, :width],
                data["target_lengths"][b : b + 1],
                "none",
            )
        # a sum of a few hundred float32 terms (about 23 here): float32's relative rounding
        torch.testing.assert_close(alone[0], per_sample[b], atol=ATOL, rtol=2e-6)
        if IDS[b] >= 0:  # the bare foundation's samples reach no adapter
            alone.sum().backward()  # accumulates over the samples
    for name, param in trainable.items():
        # Gradients here reach 50 (perturbed adapters, random features): float32 rounding
        # (the Emformer's softmax is float32 whatever the model's dtype) differs by a few
        # 1e-5 between the two summation orders, so the tolerance is 1e-5 of the largest
        # entry (losses and outputs are compared at atol 1e-5 as they are).
        scale = max(1.0, float(mixed[name].abs().max()))
        torch.testing.assert_close(param.grad, mixed[name], atol=ATOL * scale, rtol=0)
        assert mixed[name].abs().sum() > 0, name


def test_an_adapter_without_samples_gets_no_gradient() -> None:
    model, bank, _ = adapted("bottleneck")
    data = batch([40, 30])
    with bank.route(torch.tensor([0, -1])):
        model.loss(
            data["features"], data["lengths"], data["targets"], data["target_lengths"]
        ).backward()
    for name, param in model.named_parameters():
        if ".adapters.lt." in name:
            assert param.grad.abs().sum() > 0, name
        elif ".adapters." in name:
            assert param.grad is None or param.grad.abs().sum() == 0, name


@pytest.mark.parametrize("decoder", ["ctc", "rnnt"])
@pytest.mark.parametrize("kind", ["bottleneck", "lora"])
def test_mixed_batch_greedy_decoding_equals_each_sample_alone(kind: str, decoder: str) -> None:
    model, bank, bare = adapted(kind, decoder)
    data = batch(LENGTHS)
    with bank.route(IDS):
        mixed = greedy_decode(model, data["features"], data["lengths"])
    for b, n in enumerate(LENGTHS):
        with bank.route(IDS[b : b + 1]):
            alone = greedy_decode(
                model, data["features"][b : b + 1, :n], data["lengths"][b : b + 1]
            )
        assert alone[0] == mixed[b]
    bare_tokens = greedy_decode(bare, data["features"], data["lengths"])
    assert mixed[3] == bare_tokens[3]  # id -1: the foundation alone
    assert any(mixed[b] != bare_tokens[b] for b in (0, 1, 2, 4))  # the adapters act


@pytest.mark.parametrize("kind", ["bottleneck", "lora"])
def test_id_minus_one_is_the_bare_foundation(kind: str) -> None:
    model, bank, bare = adapted(kind)
    model.eval()
    bare.eval()
    data = batch(LENGTHS)
    with bank.route(torch.full((5,), -1)):
        routed, _ = model(data["features"], data["lengths"])
    expected, _ = bare(data["features"], data["lengths"])
    torch.testing.assert_close(routed, expected, atol=1e-6, rtol=0)
    with bank.route(IDS):
        adapted_out, _ = model(data["features"], data["lengths"])
    assert (adapted_out[0] - expected[0]).abs().max() > 1e-2  # perturbed adapters change it
    torch.testing.assert_close(adapted_out[3], expected[3], atol=ATOL, rtol=0)


def test_adapter_targets_cover_every_feed_forward_output_and_the_head() -> None:
    for decoder in ("ctc", "rnnt"):
        model = tiny(decoder)
        bank = AdapterBank(model, BottleneckConfig(target_modules=ADAPTER_TARGETS), names=NAMES)
        adapted_names = sorted(n for n, m in model.named_modules() if m in bank.layers)
        assert adapted_names == [
            "encoder.emformer_layers.0.pos_ff.4",
            "encoder.emformer_layers.1.pos_ff.4",
            "output",
        ]
