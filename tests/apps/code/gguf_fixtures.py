"""Tiny GGUF models for tests: a random Llama and a byte-level BPE trained in milliseconds.

:func:`write_tiny_llama_gguf` writes one with :func:`apps.code.gguf_export.write_model_gguf`;
``transformers`` loads the file back with ``from_pretrained(folder, gguf_file=name)``. The
weights are drawn larger than Llama's default initialisation so that attention is far from
uniform: a wrong q/k row order then changes the logits visibly instead of by rounding noise.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from apps.code.gguf_export import write_model_gguf
from apps.code.tokenizer import EOS, train_bpe
from core.tokenizers import train_tokenizer

#: Vocabulary of the tiny tokenizer (256 bytes + 7 special tokens + a few merges).
TINY_VOCAB = 300
#: A line the tests encode and compare.
CODE_SAMPLE = "def area(width, height):\n    return width * height  # <|endoftext|>\n"


def _corpus() -> list[str]:
    """A few KB of small Python functions (deterministic)."""
    names = ["total", "count", "value", "items", "result", "index", "width", "height"]
    texts = []
    for i, a in enumerate(names):
        b = names[(i + 3) % len(names)]
        texts.append(
            f"def get_{a}({a}, {b}=None):\n"
            f'    """Return the {a} of {b}."""\n'
            f"    if {b} is None:\n        return {a}\n"
            f"    for i in range({i + 2}):\n        {a} = {a} + {b} * i\n"
            f"    return {a}\n\n\nclass {a.title()}Box:\n    def __init__(self, {a}):\n"
            f"        self.{a} = {a}\n"
        )
    return texts * 4


@lru_cache(maxsize=1)
def _trained() -> str:
    return train_bpe(_corpus(), TINY_VOCAB).backend_tokenizer.to_str()


def tiny_tokenizer(fim_sentinels: bool = True) -> PreTrainedTokenizerBase:
    """A fresh byte-level BPE of :data:`TINY_VOCAB` ids: ``<|endoftext|>`` is id 0 and the
    eos, bos and pad token, then the FIM sentinels and chat role tags (without the FIM
    sentinels: ``<|endoftext|>`` is the only special token, as in SmolLM2)."""
    from tokenizers import Tokenizer

    from apps.code.tokenizer import code_recipe

    if fim_sentinels:
        return code_recipe(TINY_VOCAB).wrap(Tokenizer.from_str(_trained()))
    return train_tokenizer(
        _corpus(), dataclasses.replace(code_recipe(TINY_VOCAB), special_tokens=(EOS,))
    )


def tiny_llama(
    vocab_size: int, seed: int = 0, tie_word_embeddings: bool = True, eos_id: int = 0
) -> LlamaForCausalLM:
    """A random 2-layer Llama (hidden 32, 4 heads, 2 kv heads) in eval mode, float32."""
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        rms_norm_eps=1e-6, tie_word_embeddings=tie_word_embeddings, bos_token_id=eos_id,
        eos_token_id=eos_id, pad_token_id=eos_id, attn_implementation="eager",
    )  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 1:  # RMSNorm scales around 1
                param.copy_(1 + 0.1 * torch.randn(param.shape, generator=gen))
            else:
                param.copy_(0.3 * torch.randn(param.shape, generator=gen))
    return model.eval()


def write_tiny_llama_gguf(
    path: str | Path,
    seed: int = 0,
    tie_word_embeddings: bool = True,
    dtype: str = "f32",
    fim_sentinels: bool = True,
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    """Build a tiny Llama and its tokenizer, write them as the GGUF ``path``; return both.

    ``<|endoftext|>`` is special token id 0 and the model's eos/bos/pad. Load the file with
    ``AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)``.
    """
    tokenizer = tiny_tokenizer(fim_sentinels)
    assert tokenizer.convert_tokens_to_ids(EOS) == 0
    model = tiny_llama(len(tokenizer), seed, tie_word_embeddings)
    write_model_gguf(model, tokenizer, path, dtype=dtype)
    return model, tokenizer
