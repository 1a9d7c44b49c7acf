"""The code app's tokenizer: a byte-level BPE with FIM and chat special tokens, via core.

Byte-level BPE (GPT-2/StarCoder style) can encode any text, so nothing is ever unknown.
The special tokens are single ids that never appear inside normal text: end-of-text
(id 0; also the padding and beginning-of-sequence id), the three FIM sentinels of the
configured family and the chat role tags of :mod:`apps.code.records`. Training and loading
are :mod:`core.tokenizers`'; this module only holds the app's recipe, so the embedded base's
vocabulary and ids are what :func:`code_recipe` says (``tests/apps/code/test_tokenizer.py``
pins them).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from core.tokenizers import TokenizerRecipe, load_tokenizer, train_tokenizer

from .fim import FimSentinels
from .records import ROLES

EOS = "<|endoftext|>"
#: Vocabulary size of the embedded base's tokenizer (``model.base.vocab_size``).
DEFAULT_VOCAB_SIZE = 4096


def special_tokens(sentinels: FimSentinels) -> list[str]:
    """End-of-text first (id 0), then the FIM sentinels, then the role tags."""
    return [EOS, *sentinels.tokens(), *(f"<|{r}|>" for r in ROLES)]


def code_recipe(
    vocab_size: int = DEFAULT_VOCAB_SIZE, sentinels: FimSentinels | None = None
) -> TokenizerRecipe:
    """The recipe of the code tokenizer: byte-level BPE, end-of-text as eos/bos/pad.

    Padding is on the left, for batched generation with a decoder.
    """
    return TokenizerRecipe(
        "byte_bpe",
        vocab_size,
        special_tokens=tuple(special_tokens(sentinels or FimSentinels())),
        pad_token=EOS,
        bos_token=EOS,
        eos_token=EOS,
        padding_side="left",
    )


def train_bpe(
    texts: Iterable[str], vocab_size: int, sentinels: FimSentinels | None = None
) -> PreTrainedTokenizerFast:
    """Train the code tokenizer of ``vocab_size`` ids (special tokens included) on ``texts``.

    Raises:
        ValueError: ``vocab_size`` below 256 bytes + the special tokens.
    """
    return train_tokenizer(texts, code_recipe(vocab_size, sentinels))


def load_code_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """A tokenizer from a local ``save_pretrained`` folder or ``tokenizer.json``, padded left.

    A folder with ``tokenizer_config.json`` keeps the roles saved there (a missing pad or bos
    token is the eos one); a bare ``tokenizer.json`` keeps its own special tokens (whatever
    its FIM sentinels) and gets end-of-text as eos, bos and pad. Nothing is downloaded.

    Raises:
        FileNotFoundError: ``path`` holds no tokenizer.
    """
    roles = TokenizerRecipe(
        "byte_bpe",
        DEFAULT_VOCAB_SIZE,
        special_tokens=(EOS,),
        pad_token=EOS,
        bos_token=EOS,
        eos_token=EOS,
        padding_side="left",
    )
    return load_tokenizer(path, roles)
