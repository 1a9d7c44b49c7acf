"""Encoders, report tokenizer, decoder, visual-prefix generator: shapes, the tokenizer pinned
to the one the app trained before it moved to core.tokenizers, report encode/decode,
log-probabilities against a brute-force sum, beam search with trigram blocking, sampling,
local weights."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from apps.medical_cxr.model import (
    CxrClassifier,
    ReportGenerator,
    build_decoder,
    build_encoder,
    decode_reports,
    encode_reports,
    load_report_tokenizer,
    train_tokenizer,
)
from apps.medical_cxr.reports import normalise_report
from apps.medical_cxr.splits import SHIPPED_DIR, read_split_file

TEXTS = [
    "the heart is normal in size . no pleural effusion or pneumothorax .",
    "mild cardiomegaly . small left pleural effusion .",
    "lungs are clear . no acute cardiopulmonary process .",
    "there is a right upper lobe opacity concerning for pneumonia .",
] * 5


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, vocab_size=120)


def small_generator(vocab: int) -> ReportGenerator:
    torch.manual_seed(0)
    encoder = build_encoder("vit_tiny", 32, vit_dim=32, vit_depth=1, vit_heads=2, patch_size=8)
    return ReportGenerator(encoder, build_decoder(vocab, hidden_size=32, layers=1, heads=2))


def test_tokenizer_round_trip_and_special_ids(tok, tmp_path):
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    ids = tok(TEXTS[1], add_special_tokens=False).input_ids
    assert tok.decode(ids).replace(" .", ".") == TEXTS[1].replace(" .", ".")
    assert train_tokenizer(TEXTS, 120).backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()
    path = tmp_path / "tokenizer.json"
    path.write_text(tok.backend_tokenizer.to_str())
    loaded = load_report_tokenizer(str(path))
    assert loaded(TEXTS[0]).input_ids == tok(TEXTS[0]).input_ids
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (0, 1, 2)
    with pytest.raises(FileNotFoundError, match=r"model\.tokenizer"):
        load_report_tokenizer(str(tmp_path / "missing.json"))


def test_default_run_tokenizer_is_the_one_trained_before_core_tokenizers(embedded_studies):
    """The default run's tokenizer (1,000 ids on the 2,398 training reports) has the vocabulary
    the app's own WordPiece trainer gave before it moved to core.tokenizers (same ids, so the
    same metrics): a hash of the (token, id) list computed with the old code."""
    by_id = {s.study_id: s for s in embedded_studies}
    train = read_split_file(SHIPPED_DIR / "iu_xray", "train")
    texts = [by_id[i].text for i in train if i in by_id]
    assert len(texts) == 2398
    vocab = sorted(train_tokenizer(texts, 1000).get_vocab().items(), key=lambda kv: kv[1])
    digest = hashlib.sha256(json.dumps(vocab).encode()).hexdigest()
    assert digest == "5945c5b2330afab6597817e5a233b4800c72c5de90c2c7181b50f316fc2d9339"


def test_encode_and_decode_reports(tok):
    ids, mask = encode_reports(tok, [TEXTS[0], TEXTS[1]], max_tokens=8)
    assert ids.shape == mask.shape == (2, 8) and ids.dtype == torch.long
    assert ids[:, 0].tolist() == [1, 1] and ids[:, -1].tolist() == [2, 2]  # truncated to 8
    short, short_mask = encode_reports(tok, ["mild cardiomegaly .", TEXTS[0]], max_tokens=40)
    n = int(short_mask[0].sum())
    assert short[0, n - 1] == 2 and (short[0, n:] == 0).all() and (short_mask[0, n:] == 0).all()
    body = tok("mild cardiomegaly .", add_special_tokens=False).input_ids
    assert short[0, 1 : n - 1].tolist() == body
    # Decoding stops at the first EOS and drops special tokens.
    generated = torch.tensor([[*body, 2, *body], [*body, *([0] * (len(body) + 1))]])
    assert decode_reports(tok, generated) == [normalise_report("Mild cardiomegaly.")] * 2


@pytest.mark.parametrize("name", ["vit_tiny", "resnet18"])
def test_encoders_take_one_channel(name):
    enc = build_encoder(name, 32, vit_dim=32, vit_depth=1, vit_heads=2, patch_size=8)
    tokens = enc(torch.rand(2, 1, 32, 32))
    assert tokens.ndim == 3 and tokens.shape[0] == 2 and tokens.shape[2] == enc.out_dim
    with pytest.raises(ValueError, match=r"grayscale"):
        enc(torch.rand(2, 3, 32, 32))
    assert CxrClassifier(enc)(torch.rand(2, 1, 32, 32)).shape == (2, 14)


def test_densenet121_encoders_build_with_one_channel():
    for name in ("densenet121", "monai_densenet121"):
        enc = build_encoder(name, 32)
        assert enc.out_dim == 1024
        first = next(m for m in enc.modules() if isinstance(m, torch.nn.Conv2d))
        assert first.in_channels == 1, name
    with pytest.raises(ValueError, match=r"not a timm model"):
        build_encoder("no_such_net", 32)


def test_sequence_logprobs_equal_a_brute_force_sum(tok):
    model = small_generator(len(tok)).eval()
    images = torch.rand(2, 1, 32, 32)
    rows = [[1, *tok(t, add_special_tokens=False).input_ids, 2] for t in TEXTS[:2]]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = (torch.arange(width)[None] < torch.tensor([len(r) for r in rows])[:, None]).long()
    got = model.sequence_logprobs(images, ids, mask)
    for b, row in enumerate(rows):  # one unpadded sequence at a time, token by token
        prefix = model.prefix(images[b : b + 1])
        total = 0.0
        for t in range(1, len(row)):
            emb = model.decoder.get_input_embeddings()(torch.tensor([row[:t]]))
            logits = model.decoder(inputs_embeds=torch.cat([prefix, emb], 1)).logits[0, -1]
            total += torch.log_softmax(logits, -1)[row[t]].item()
        assert got[b].item() == pytest.approx(total, abs=1e-3)


def _trigrams(seq: list[int]) -> list[tuple[int, ...]]:
    return [tuple(seq[i : i + 3]) for i in range(len(seq) - 2)]


def test_beam_search_blocks_repeated_trigrams_and_sampling_is_seeded(tok):
    model = small_generator(len(tok)).eval()
    images = torch.rand(3, 1, 32, 32)
    free = model.generate(images, 1, 2, 0, max_new_tokens=40, num_beams=3, no_repeat_ngram_size=0)
    blocked = model.generate(images, 1, 2, 0, max_new_tokens=40, num_beams=3)
    assert any(
        len(set(_trigrams(r))) < len(_trigrams(r)) for r in free.tolist()
    )  # untrained: loops
    for row in blocked.tolist():
        row = row[: row.index(2)] if 2 in row else row
        assert len(set(_trigrams(row))) == len(_trigrams(row))
    torch.manual_seed(3)
    a = model.generate(images, 1, 2, 0, max_new_tokens=10, do_sample=True, num_return_sequences=4)
    torch.manual_seed(3)
    b = model.generate(images, 1, 2, 0, max_new_tokens=10, do_sample=True, num_return_sequences=4)
    assert a.shape[0] == 12 and torch.equal(a, b)


def test_decoder_from_a_local_checkpoint(tmp_path, tok):
    torch.manual_seed(0)
    saved = build_decoder(len(tok), hidden_size=32, layers=1, heads=2)
    saved.save_pretrained(tmp_path / "lm")
    loaded = build_decoder(len(tok), pretrained=str(tmp_path / "lm"))
    assert loaded.config.hidden_size == 32
    for (name, a), b in zip(saved.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(FileNotFoundError, match=r"model\.decoder_pretrained.*no hub downloads"):
        build_decoder(10, pretrained=str(tmp_path / "nope"))


def test_encoder_backbone_from_a_local_state_dict(tmp_path):
    torch.manual_seed(0)
    saved = build_encoder("vit_tiny", 32, vit_dim=32, vit_depth=1, vit_heads=2, patch_size=8)
    torch.save(saved.backbone.state_dict(), tmp_path / "vit.pt")
    torch.manual_seed(1)
    loaded = build_encoder(
        "vit_tiny", 32, str(tmp_path / "vit.pt"), vit_dim=32, vit_depth=1, vit_heads=2,
        patch_size=8,
    )  # fmt: skip
    images = torch.rand(2, 1, 32, 32)
    assert torch.equal(saved.eval()(images), loaded.eval()(images))
    with pytest.raises(FileNotFoundError, match=r"model\.encoder_pretrained"):
        build_encoder("vit_tiny", 32, str(tmp_path / "none.pt"))


def test_efficientnet_lite0_encoder_reads_the_installed_imagenet_weights():
    from core.towers import efficientnet_lite0_model

    encoder = build_encoder("efficientnet_lite0", 64, pretrained="imagenet").eval()
    reference = efficientnet_lite0_model("package", num_classes=0)
    for name, value in reference.state_dict().items():
        assert torch.equal(encoder.backbone.state_dict()[name], value), name
    images = torch.rand(2, 1, 64, 64)
    tokens = encoder(images)
    assert tokens.shape == (2, 4, 1280)  # a 2x2 feature map: spatial tokens, not one vector
    rgb = (images.expand(-1, 3, -1, -1) - 0.5) / 0.5  # the gray image on 3 channels
    expected = reference.eval().forward_features(rgb).flatten(2).transpose(1, 2)
    assert torch.allclose(tokens, expected, atol=1e-5)
    scratch = build_encoder("efficientnet_lite0", 64, pretrained=None)
    assert not torch.equal(scratch.backbone.conv_stem.weight, encoder.backbone.conv_stem.weight)


def test_encoder_weights_that_do_not_fit_get_an_error_naming_file_and_architecture(tmp_path):
    with pytest.raises(ValueError, match=r"no ImageNet weights for 'vit_tiny'.*null"):
        build_encoder("vit_tiny", 32, pretrained="imagenet")
    other = build_encoder("vit_tiny", 32, vit_dim=32, vit_depth=1, vit_heads=2, patch_size=8)
    torch.save(other.backbone.state_dict(), tmp_path / "vit.pt")
    with pytest.raises(
        ValueError,
        match=r"vit\.pt' matches none .*give a state dict of the efficientnet_lite0 architecture",
    ):
        build_encoder("efficientnet_lite0", 32, pretrained=str(tmp_path / "vit.pt"))
    wider = build_encoder("vit_tiny", 32, vit_dim=48, vit_depth=1, vit_heads=2, patch_size=8)
    torch.save(wider.backbone.state_dict(), tmp_path / "wide.pt")
    with pytest.raises(ValueError, match=r"wide\.pt' does not fit .* of another shape.*vit_tiny"):
        build_encoder(
            "vit_tiny", 32, str(tmp_path / "wide.pt"), vit_dim=32, vit_depth=1, vit_heads=2,
            patch_size=8,
        )  # fmt: skip
    (tmp_path / "cut.pt").write_bytes((tmp_path / "vit.pt").read_bytes()[:100])
    with pytest.raises(ValueError, match=r"cut\.pt' cannot be read as weights"):
        build_encoder("vit_tiny", 32, str(tmp_path / "cut.pt"))
    with pytest.raises(FileNotFoundError, match=r"none\.pt' does not exist.*efficientnet_lite0"):
        build_encoder("efficientnet_lite0", 32, str(tmp_path / "none.pt"))
