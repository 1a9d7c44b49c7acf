"""The embedded base: trained once, cached by a hash of its config, loaded from disk."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch

from apps.code.model import BASE_VERSION, BaseConfig, ensure_base, load_base, load_causal_lm
from apps.code.tokenizer import load_code_tokenizer, train_bpe
from core.cache import DIR_MARKER, entry_path


def test_base_is_cached_and_reused(tiny_base, monkeypatch):
    folder, cfg = tiny_base
    stats = json.loads((folder / "pretrain.json").read_text())
    assert stats["tokens_seen"] == cfg.steps * cfg.batch_size * cfg.seq_len
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
    assert (folder / DIR_MARKER).is_file()  # a finished core.cache entry

    def boom(*args, **kwargs):
        raise AssertionError("the cached base must not be trained again")

    monkeypatch.setattr("apps.code.model.pretrain_base", boom)
    assert ensure_base(cfg) == folder
    model, tok, again = load_base(cfg)
    assert again == folder and model.config.vocab_size == len(tok)
    assert model.training  # ready for Lightning


def key(cfg: BaseConfig, modules: list[str]) -> str:
    """The name of ``cfg``'s cache entry (``base-<hash>``)."""
    return entry_path("base", cfg.cache_config(modules), app="code", suffix="").name


def test_cache_key_follows_the_config(tiny_base):
    a, b = BaseConfig(), BaseConfig(steps=7)
    assert key(a, ["os"]) != key(b, ["os"])
    assert key(a, ["os"]) != key(a, ["os", "json"])
    assert key(a, ["os"]) == key(BaseConfig(cache_dir="/elsewhere", threads=2), ["os"])
    assert a.cache_config(["os"])["version"] == BASE_VERSION
    folder, cfg = tiny_base
    assert folder.parent == Path(cfg.cache_dir) and folder.name.startswith("base-")


def test_tokenizer_keeps_sentinels_whole(tiny_base):
    folder, _ = tiny_base
    tok = load_code_tokenizer(folder)
    assert tok.padding_side == "left"  # batched generation
    for special in ("<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<|assistant|>"):
        assert len(tok.encode(special, add_special_tokens=False)) == 1
    text = "def f(x):\n    return x  # ünï\n"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    assert tok.eos_token_id == tok.pad_token_id == 0


def test_bad_configs_and_paths(tmp_path):
    with pytest.raises(ValueError, match="multiple of"):
        BaseConfig(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="max_positions"):
        BaseConfig(seq_len=2048, max_positions=1024)
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe(["x = 1"], vocab_size=100)
    with pytest.raises(FileNotFoundError, match=r"config\.json missing"):
        load_causal_lm(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no tokenizer at"):
        load_code_tokenizer(tmp_path)


def test_mean_token_loss_matches_hugging_face(tiny_base):
    from apps.code.model import mean_token_loss

    folder, _ = tiny_base
    model = load_causal_lm(folder)
    windows = torch.randint(0, 320, (5, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        # Equal-length windows: the mean of per-window means is the token mean.
        want = torch.stack([model(input_ids=w[None], labels=w[None]).loss for w in windows])
    assert mean_token_loss(model, windows, batch=2) == pytest.approx(want.mean().item(), 1e-5)


def test_pretraining_leaves_the_global_random_stream_alone(tiny_cache):
    """A first run (pre-training) and a cached run then draw the same adapter init."""
    cfg = BaseConfig(vocab_size=300, hidden_size=16, num_layers=1, num_heads=2,
                     intermediate_size=32, max_positions=64, seq_len=32, steps=2, batch_size=2,
                     max_corpus_chars=50_000, cache_dir=str(tiny_cache / "rng"))  # fmt: skip
    torch.manual_seed(5)
    random.seed(5)
    expected = (torch.rand(3), random.random())
    torch.manual_seed(5)
    random.seed(5)
    ensure_base(cfg)
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]


def test_pretraining_is_reproducible(tiny_base, tiny_cache):
    """The same config pre-trains the same weights and tokenizer in another cache."""
    folder, cfg = tiny_base
    again = ensure_base(dataclasses.replace(cfg, cache_dir=str(tiny_cache / "again")))
    assert again != folder and again.name == folder.name
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (again / name).read_bytes() == (folder / name).read_bytes(), name
