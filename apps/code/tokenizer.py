"""A byte-level BPE tokenizer trained on the code corpus, with FIM and chat special tokens.

Byte-level BPE (GPT-2/StarCoder style) can encode any text, so nothing is ever unknown.
The special tokens are single ids that never appear inside normal text: end-of-text
(also the padding id), the three FIM sentinels of the configured family and the chat role
tags of :mod:`apps.code.records`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from .fim import FimSentinels
from .records import ROLES

EOS = "<|endoftext|>"


def special_tokens(sentinels: FimSentinels) -> list[str]:
    """End-of-text first (id 0), then the FIM sentinels, then the role tags."""
    return [EOS, *sentinels.tokens(), *(f"<|{r}|>" for r in ROLES)]


def train_bpe(
    texts: Iterable[str], vocab_size: int, sentinels: FimSentinels | None = None
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of ``vocab_size`` ids (special tokens included) on ``texts``."""
    specials = special_tokens(sentinels or FimSentinels())
    if vocab_size < 256 + len(specials):
        raise ValueError(
            f"tokenizer vocab_size={vocab_size} is too small: byte-level BPE needs at least "
            f"{256 + len(specials)} (256 bytes + {len(specials)} special tokens)."
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return wrap(tok, sentinels or FimSentinels())


def wrap(tok: Tokenizer, sentinels: FimSentinels) -> PreTrainedTokenizerFast:
    """A ``transformers`` tokenizer around a ``tokenizers`` one (save/load, padding)."""
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=EOS, bos_token=EOS, unk_token=None,
        additional_special_tokens=[t for t in special_tokens(sentinels) if t != EOS],
    )  # fmt: skip
    fast.padding_side = "left"  # for batched generation
    return fast


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved with ``save_pretrained`` from a local folder."""
    path = Path(path)
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise FileNotFoundError(
            f"no tokenizer in {str(path)!r} (tokenizer.json missing); give a local folder "
            "written by save_pretrained (hub names are not downloaded)."
        )
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok
