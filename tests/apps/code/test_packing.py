"""Loss masks and packing: a packed row computes exactly what its examples compute alone."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from apps.code.packing import (
    IGNORE_INDEX,
    Encoded,
    additive_mask,
    collate_packed,
    encode_plain,
    encode_record,
    pack,
    packed_attention_mask,
)
from apps.code.records import Record


class CharTokenizer:
    """One id per character (0 is end-of-text): enough to test masks exactly."""

    eos_token_id = 0

    def encode(self, text, add_special_tokens=False):
        return [ord(c) % 97 + 1 for c in text]


def test_encode_record_masks_the_prompt():
    tok = CharTokenizer()
    enc = encode_record(Record("t", "abc", "de"), tok, max_len=64)
    assert enc.input_ids == [0, *tok.encode("abc"), *tok.encode("de"), 0]
    assert enc.labels == [IGNORE_INDEX] * 4 + [*tok.encode("de"), 0]


def test_encode_chat_learns_only_assistant_turns():
    tok = CharTokenizer()
    rec = Record("chat", messages=({"role": "user", "content": "hi"},
                                   {"role": "assistant", "content": "yo"}))  # fmt: skip
    enc = encode_record(rec, tok, 256)
    targets = [i for i, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE_INDEX]
    assert targets == [*tok.encode("yo"), 0]


class TemplateTokenizer(CharTokenizer):
    """A chat template in ChatML style (SmolLM2's layout, with a default system turn)."""

    chat_template = "set"

    def apply_chat_template(self, turns, tokenize=False):
        text = "" if turns[0]["role"] == "system" else "[sys]default[end]"
        return text + "".join(f"[{t['role']}]{t['content']}[end]" for t in turns)


def test_encode_chat_uses_the_tokenizers_template_and_its_end_of_turn():
    tok = TemplateTokenizer()
    turns = tuple(
        {"role": role, "content": content}
        for role, content in [
            ("user", "hi"),
            ("assistant", "yo"),
            ("user", "more"),
            ("assistant", "ok"),
        ]
    )
    enc = encode_record(Record("chat", messages=turns), tok, 256)
    whole = tok.apply_chat_template(list(turns))
    assert enc.input_ids == [0, *tok.encode(whole)]  # no end-of-text appended: [end] ends turns
    targets = [i for i, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE_INDEX]
    assert targets == tok.encode("yo[end]ok[end]")


def test_a_template_that_rewrites_earlier_turns_is_refused():
    class Rewriting(TemplateTokenizer):
        def apply_chat_template(self, turns, tokenize=False):
            return f"{len(turns)}" + super().apply_chat_template(turns)

    rec = Record("chat", messages=({"role": "user", "content": "a"},
                                   {"role": "assistant", "content": "b"}))  # fmt: skip
    with pytest.raises(ValueError, match="rewrites earlier turns"):
        encode_record(rec, Rewriting(), 256)


def test_truncation_keeps_the_target():
    tok = CharTokenizer()
    enc = encode_record(Record("t", "p" * 100, "abc"), tok, max_len=10)
    assert len(enc) == 10
    assert enc.labels[-4:] == [*tok.encode("abc"), 0]
    assert enc.input_ids[0] == 0
    assert encode_record(Record("t", "", "x" * 50), tok, max_len=10).labels[1:] == tok.encode(
        "x" * 9
    )


def test_packing_fits_and_keeps_everything():
    exs = [Encoded([0] * n, [0] * n, "t") for n in (5, 9, 3, 7, 2, 8, 1, 10)]
    rows = pack(exs, 10, seed=0)
    assert all(sum(len(e) for e in row) <= 10 for row in rows)
    assert sorted(len(e) for row in rows for e in row) == sorted(len(e) for e in exs)
    assert len(rows) == 5  # 45 tokens need at least 5 rows of 10
    with pytest.raises(ValueError, match="seq_len"):
        pack([Encoded([0] * 11, [0] * 11, "t")], 10)
    by_task = pack([*exs[:4], Encoded([1] * 2, [1] * 2, "u")], 10, by_task=True)
    assert all(len({e.task for e in row}) == 1 for row in by_task)


def test_mask_brute_force():
    seg = torch.tensor([[0, 0, 1, 1, 1, -1], [0, 1, 2, 2, -1, -1]])
    mask = packed_attention_mask(seg)[:, 0]
    for b in range(2):
        for i in range(6):
            for j in range(6):
                want = (seg[b, i] >= 0 and seg[b, i] == seg[b, j] and j <= i) or i == j
                assert bool(mask[b, i, j]) == bool(want)


def _tiny_llama(vocab=100):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=64, attn_implementation="sdpa")  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def test_packed_forward_equals_separate_forwards():
    model = _tiny_llama()
    g = torch.Generator().manual_seed(1)
    exs = [Encoded(torch.randint(1, 100, (n,), generator=g).tolist(), [1] * n, "t")
           for n in (7, 5, 9)]  # fmt: skip
    batch = collate_packed([exs], pad_id=0, task_names=["t"], max_len=24)
    mask = additive_mask(packed_attention_mask(batch["segment_ids"]), torch.float32)
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], attention_mask=mask,
                       position_ids=batch["position_ids"]).logits[0]  # fmt: skip
        start = 0
        for ex in exs:
            alone = model(input_ids=torch.tensor([ex.input_ids])).logits[0]
            n = len(ex)
            torch.testing.assert_close(packed[start : start + n], alone, atol=1e-5, rtol=1e-5)
            start += n
    # Without the mask the second example would see the first: the test can fail.
    with torch.no_grad():
        leaky = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                      attention_mask=torch.ones(1, 24, dtype=torch.long)).logits[0]  # fmt: skip
    assert not torch.allclose(leaky[7:12], packed[7:12], atol=1e-4)


def test_collate_layout():
    a = Encoded([0, 5, 6], [IGNORE_INDEX, IGNORE_INDEX, 6], "x")
    b = Encoded([0, 7], [IGNORE_INDEX, 7], "y")
    batch = collate_packed([[a, b], [b]], pad_id=0, task_names=["x", "y"], max_len=6)
    assert batch["input_ids"].tolist() == [[0, 5, 6, 0, 7, 0], [0, 7, 0, 0, 0, 0]]
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 0, 1, 0]
    assert batch["segment_ids"][0].tolist() == [0, 0, 0, 1, 1, -1]
    assert batch["task_ids"][0].tolist() == [-1, -1, 0, -1, 1, -1]
    assert batch["labels"][1].tolist() == [IGNORE_INDEX, 7] + [IGNORE_INDEX] * 4
    with pytest.raises(KeyError, match="not among"):
        collate_packed([[a]], 0, ["y"], 6)


def test_encode_plain_windows():
    tok = CharTokenizer()
    wins = encode_plain("abcdefghij" * 5, tok, max_len=21)
    assert all(len(w) <= 21 and w.labels[0] == IGNORE_INDEX for w in wins)
    assert sum(len(w) - 1 for w in wins) == 50
