"""The code tokenizer: core.tokenizers with the app's recipe, pinned to the vocabulary and
ids the app's own BPE trainer produced before it moved to the core (so the cached base's
tokenizer, and every figure computed with it, stays the same)."""

from __future__ import annotations

import hashlib

import pytest

from apps.code.fim import FimSentinels
from apps.code.tokenizer import EOS, code_recipe, load_code_tokenizer, special_tokens, train_bpe
from core.tokenizers import tokenizer_to_json

CODE = [
    "def add(a, b):\n    return a + b\n",
    "import os\n\nfor name in os.listdir('.'):\n    print(name)\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n",
]
#: A fixed corpus (not the interpreter's stdlib, which changes with the Python version).
TEXTS = [f"{c}# {i}: naïve → 🐍\n" for i in range(40) for c in CODE]
SAMPLE = "def f(x):\n    return x  # ünï <fim_prefix><|assistant|>\n"
#: Written by the app's former trainer (apps/code/tokenizer.py before core.tokenizers) on
#: TEXTS with vocab_size=300: sha256 of tokenizer.json, and the ids of SAMPLE.
FORMER_JSON_SHA256 = "3379cbdebbbd42b02f623f4346a652a8ed85f18bbfdbe1f0ffa6676b97c62004"
FORMER_SAMPLE_IDS = [292, 227, 76, 14, 94, 267, 277, 227, 88, 75, 90, 91, 88, 84, 227, 94, 227,
                     227, 9, 227, 134, 127, 84, 134, 114, 227, 1, 6, 205]  # fmt: skip


def test_reproduces_the_former_tokenizer_exactly():
    tok = train_bpe(TEXTS, 300)
    assert hashlib.sha256(tokenizer_to_json(tok).encode()).hexdigest() == FORMER_JSON_SHA256
    assert tok(SAMPLE).input_ids == FORMER_SAMPLE_IDS
    assert len(tok) == 300 and tok.padding_side == "left"
    assert tok.eos_token == tok.pad_token == tok.bos_token == EOS and tok.unk_token is None
    assert tok.convert_ids_to_tokens(list(range(7))) == special_tokens(FimSentinels())


def test_recipe_follows_the_sentinels_and_reloads(tmp_path):
    sentinels = FimSentinels("<PRE>", "<SUF>", "<MID>")
    recipe = code_recipe(300, sentinels)
    assert recipe.special_tokens[:4] == (EOS, "<PRE>", "<SUF>", "<MID>")
    tok = train_bpe(TEXTS, 300, sentinels)
    assert len(tok.encode("<SUF>", add_special_tokens=False)) == 1
    tok.save_pretrained(tmp_path / "folder")
    (tmp_path / "file.json").write_text(tokenizer_to_json(tok))
    for path in (tmp_path / "folder", tmp_path / "file.json"):
        loaded = load_code_tokenizer(path)
        assert loaded(SAMPLE).input_ids == tok(SAMPLE).input_ids, path
        assert loaded.eos_token_id == loaded.pad_token_id == 0 and loaded.padding_side == "left"


def test_too_small_a_vocabulary_is_refused():
    with pytest.raises(ValueError, match="at least 263"):
        train_bpe(TEXTS, 100)
