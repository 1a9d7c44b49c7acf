"""Tokenizers an app trains on its own data: train from a recipe, cache, checkpoint, load.

An app that has no pre-trained tokenizer (report generation on a new corpus, a code model
trained here, an ASR decoder on transcripts) trains one with the Hugging Face ``tokenizers``
library from a :class:`TokenizerRecipe`; this module is the one place that does so, so
every app stores and reloads its tokenizer the same way:

- :func:`train_tokenizer` trains from an iterable of texts (deterministically: the same texts
  and recipe give the same vocabulary and ids on every machine);
- :func:`cached_tokenizer` does the same through :mod:`core.cache`, keyed by the recipe, a
  hash of the texts and the ``tokenizers`` version;
- :func:`save_tokenizer_state` / :func:`load_tokenizer_state` put it in a Lightning
  checkpoint (:class:`TokenizerCheckpointMixin` wires them into a module's hooks), so a
  checkpoint is usable without the data it was trained on;
- :func:`load_tokenizer` reads a local ``tokenizer.json`` or ``save_pretrained`` folder.

Tokenizers are returned as ``transformers.PreTrainedTokenizerFast`` with the recipe's special
tokens in their roles (pad, bos, eos, unk), ready for ``tok(texts)``, ``generate`` and
``save_pretrained``. Algorithms (:data:`ALGORITHMS`):

``wordpiece``
    Whole words as a WordPiece vocabulary, built by counting: the special tokens, every
    character seen (alone and as a ``##`` continuation, so no word is ever unknown), then the
    most frequent words (ties alphabetically) up to ``vocab_size``. Texts are split on
    whitespace and punctuation. Small, readable vocabularies for short domain texts
    (radiology reports, transcripts).
``byte_bpe``
    Byte-level BPE (GPT-2/StarCoder style) trained with ``tokenizers``' ``BpeTrainer``: any
    text can be encoded, nothing is unknown. For code and open-vocabulary text.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import tokenizers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from core.cache import cached

__all__ = [
    "ALGORITHMS",
    "CHECKPOINT_KEY",
    "TokenizerCheckpointMixin",
    "TokenizerRecipe",
    "cached_tokenizer",
    "load_tokenizer",
    "load_tokenizer_state",
    "save_tokenizer_state",
    "texts_hash",
    "tokenizer_from_json",
    "tokenizer_to_json",
    "train_tokenizer",
]

#: The checkpoint key :func:`save_tokenizer_state` writes.
CHECKPOINT_KEY = "tokenizer"
#: Role names of special tokens, as ``PreTrainedTokenizerFast`` takes them.
ROLES = ("pad_token", "bos_token", "eos_token", "unk_token")


@dataclass(frozen=True)
class TokenizerRecipe:
    """How to train a tokenizer, and which of its special tokens play which role.

    Args:
        algorithm: ``"wordpiece"`` or ``"byte_bpe"`` (see the module docstring).
        vocab_size: Size of the vocabulary, special tokens included.
        special_tokens: Tokens that are never split, with the first ids in this order.
        pad_token: Padding token (one of ``special_tokens``), or ``None``.
        bos_token: Beginning-of-sequence token, or ``None``.
        eos_token: End-of-sequence token, or ``None``.
        unk_token: Unknown-word token; ``wordpiece`` needs one.
        padding_side: ``"right"``, or ``"left"`` for batched generation with decoders.
        max_input_chars_per_word: ``wordpiece``: longer words become ``unk_token``.
    """

    algorithm: Literal["wordpiece", "byte_bpe"]
    vocab_size: int
    special_tokens: tuple[str, ...] = ()
    pad_token: str | None = None
    bos_token: str | None = None
    eos_token: str | None = None
    unk_token: str | None = None
    padding_side: Literal["left", "right"] = "right"
    max_input_chars_per_word: int = 100

    def __post_init__(self) -> None:
        object.__setattr__(self, "special_tokens", tuple(self.special_tokens))
        if self.algorithm not in ALGORITHMS:
            raise ValueError(
                f"tokenizer algorithm {self.algorithm!r} is unknown; choose one of "
                f"{sorted(ALGORITHMS)}."
            )
        if len(set(self.special_tokens)) != len(self.special_tokens):
            raise ValueError(
                f"tokenizer special_tokens {list(self.special_tokens)} repeat a token."
            )
        for role, token in self.roles().items():
            if token not in self.special_tokens:
                raise ValueError(
                    f"tokenizer {role}={token!r} is not one of special_tokens "
                    f"{list(self.special_tokens)}; add it there."
                )
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"tokenizer padding_side={self.padding_side!r}: 'left' or 'right'.")

    def roles(self) -> dict[str, str]:
        """``{"pad_token": ..., ...}`` for the roles that are set."""
        return {r: getattr(self, r) for r in ROLES if getattr(self, r) is not None}

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data (for cache keys and logs)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["special_tokens"] = list(self.special_tokens)
        return out

    def wrap(self, tok: Tokenizer) -> PreTrainedTokenizerFast:
        """``tok`` as a ``transformers`` fast tokenizer with this recipe's roles."""
        roles = self.roles()
        extra = [t for t in self.special_tokens if t not in roles.values()]
        return wrap_tokenizer(tok, roles, extra, self.padding_side)


def wrap_tokenizer(
    tok: Tokenizer,
    roles: dict[str, str],
    extra_special_tokens: list[str] | tuple[str, ...] = (),
    padding_side: str = "right",
) -> PreTrainedTokenizerFast:
    """A ``transformers`` fast tokenizer around a ``tokenizers`` one.

    Args:
        tok: The trained or loaded ``tokenizers.Tokenizer``.
        roles: ``{"pad_token": "[PAD]", ...}``; roles not given stay unset (``None``).
        extra_special_tokens: Special tokens without a role (FIM sentinels, chat tags).
        padding_side: Where ``tok(..., padding=True)`` pads.
    """
    kwargs: dict[str, Any] = {role: roles.get(role) for role in ROLES}
    if extra_special_tokens:
        kwargs["additional_special_tokens"] = list(extra_special_tokens)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)
    fast.padding_side = padding_side
    return fast


def _extra_special_tokens(tok: PreTrainedTokenizerBase) -> list[str]:
    """Special tokens without a role (``extra_special_tokens`` in transformers 5)."""
    extra = getattr(tok, "extra_special_tokens", None)
    if not isinstance(extra, list | tuple):
        extra = getattr(tok, "additional_special_tokens", None) or []
    return [str(t) for t in extra]


# ---------------------------------------------------------------------------- training
def _wordpiece(texts: list[str], recipe: TokenizerRecipe) -> Tokenizer:
    if recipe.unk_token is None:
        raise ValueError(
            "tokenizer algorithm 'wordpiece' needs an unk_token (one of special_tokens)."
        )
    pre = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    counts = Counter(w for t in texts for w, _ in pre.pre_tokenize_str(t))
    chars = sorted({c for w in counts for c in w})
    vocab = list(recipe.special_tokens)
    known = set(vocab)
    for token in [*chars, *(f"##{c}" for c in chars)]:
        if token not in known:
            vocab.append(token)
            known.add(token)
    if len(vocab) > recipe.vocab_size:
        raise ValueError(
            f"tokenizer vocab_size={recipe.vocab_size} is smaller than the {len(vocab)} special "
            "and character tokens of the corpus; raise vocab_size."
        )
    for word, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(vocab) >= recipe.vocab_size:
            break
        if word not in known:
            vocab.append(word)
            known.add(word)
    tok = Tokenizer(
        models.WordPiece(
            {w: i for i, w in enumerate(vocab)},
            unk_token=recipe.unk_token,
            max_input_chars_per_word=recipe.max_input_chars_per_word,
        )
    )
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def _byte_bpe(texts: list[str], recipe: TokenizerRecipe) -> Tokenizer:
    smallest = 256 + len(recipe.special_tokens)
    if recipe.vocab_size < smallest:
        raise ValueError(
            f"tokenizer vocab_size={recipe.vocab_size} is too small: byte-level BPE needs at "
            f"least {smallest} (256 bytes + {len(recipe.special_tokens)} special tokens)."
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=recipe.vocab_size,
        special_tokens=list(recipe.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


#: Training functions by :attr:`TokenizerRecipe.algorithm`: ``(texts, recipe) -> Tokenizer``.
ALGORITHMS: dict[str, Callable[[list[str], TokenizerRecipe], Tokenizer]] = {
    "wordpiece": _wordpiece,
    "byte_bpe": _byte_bpe,
}


def train_tokenizer(texts: Iterable[str], recipe: TokenizerRecipe) -> PreTrainedTokenizerFast:
    """Train a tokenizer on ``texts`` following ``recipe`` (deterministic).

    Raises:
        ValueError: No texts, or a ``vocab_size`` too small for the recipe and corpus.
    """
    texts = list(texts)
    if not texts:
        raise ValueError("train_tokenizer needs at least one text to learn a vocabulary from.")
    return recipe.wrap(ALGORITHMS[recipe.algorithm](texts, recipe))


def texts_hash(texts: Iterable[str]) -> str:
    """A hash of a sequence of texts (order and boundaries count), for cache keys."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def cached_tokenizer(
    texts: Iterable[str],
    recipe: TokenizerRecipe,
    *,
    app: str,
    cache_dir: str | Path | None = None,
) -> PreTrainedTokenizerFast:
    """:func:`train_tokenizer`, stored in :mod:`core.cache` (entry kind ``tokenizer``).

    The key covers the recipe, :func:`texts_hash` of the texts and the ``tokenizers``
    version, so new data or a new library trains a new tokenizer.
    """
    texts = list(texts)
    key = {
        "recipe": recipe.to_dict(),
        "data": texts_hash(texts),
        "tokenizers": tokenizers.__version__,
    }

    def build() -> str:
        return tokenizer_to_json(train_tokenizer(texts, recipe))

    text = cached("tokenizer", key, build, app=app, cache_dir=cache_dir)
    return recipe.wrap(Tokenizer.from_str(text))


# ---------------------------------------------------------------------------- storage
def tokenizer_to_json(tok: PreTrainedTokenizerFast | Tokenizer) -> str:
    """The ``tokenizer.json`` text of a tokenizer (vocabulary, model, pre-tokenizer, decoder)."""
    backend = tok.backend_tokenizer if isinstance(tok, PreTrainedTokenizerFast) else tok
    return backend.to_str()


def tokenizer_from_json(
    text: str, recipe: TokenizerRecipe | None = None
) -> PreTrainedTokenizerFast:
    """Rebuild a tokenizer from its ``tokenizer.json`` text, with ``recipe``'s roles if given."""
    tok = Tokenizer.from_str(text)
    return recipe.wrap(tok) if recipe is not None else wrap_tokenizer(tok, {})


def load_tokenizer(
    path: str | Path, recipe: TokenizerRecipe | None = None
) -> PreTrainedTokenizerFast:
    """A tokenizer from a local ``tokenizer.json`` file or ``save_pretrained`` folder.

    A ``tokenizer.json`` (or a folder holding only that) gets ``recipe``'s roles; a folder
    with ``tokenizer_config.json`` keeps the roles saved there, and a missing pad or bos
    token is the eos token (the causal-LM convention). Nothing is downloaded.

    Raises:
        FileNotFoundError: ``path`` is neither.
    """
    path = Path(path)
    if path.is_file():
        return tokenizer_from_json(path.read_text(encoding="utf-8"), recipe)
    if (path / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        if tok.bos_token is None:
            tok.bos_token = tok.eos_token
        if recipe is not None:
            tok.padding_side = recipe.padding_side
        return tok
    if (path / "tokenizer.json").is_file():
        return load_tokenizer(path / "tokenizer.json", recipe)
    raise FileNotFoundError(
        f"no tokenizer at {str(path)!r}: give a tokenizer.json file or a folder written by "
        "save_pretrained (hub names are not downloaded)."
    )


def save_tokenizer_state(checkpoint: dict[str, Any], tok: PreTrainedTokenizerFast) -> None:
    """Store ``tok`` in a Lightning checkpoint dict under :data:`CHECKPOINT_KEY`.

    Plain strings only, so the checkpoint still loads with ``weights_only=True``.
    """
    checkpoint[CHECKPOINT_KEY] = {
        "json": tokenizer_to_json(tok),
        "roles": {r: str(getattr(tok, r)) for r in ROLES if getattr(tok, r, None) is not None},
        "extra_special_tokens": _extra_special_tokens(tok),
        "padding_side": tok.padding_side,
    }


def load_tokenizer_state(
    checkpoint: dict[str, Any], recipe: TokenizerRecipe | None = None
) -> PreTrainedTokenizerFast | None:
    """The tokenizer :func:`save_tokenizer_state` stored, or ``None`` if there is none.

    A checkpoint holding only a ``tokenizer.json`` string under ``"tokenizer_json"`` (as the
    chest X-ray app wrote before this module) is read with ``recipe``'s roles.
    """
    state = checkpoint.get(CHECKPOINT_KEY)
    if isinstance(state, dict) and isinstance(state.get("json"), str):
        return wrap_tokenizer(
            Tokenizer.from_str(state["json"]),
            dict(state.get("roles") or {}),
            list(state.get("extra_special_tokens") or []),
            state.get("padding_side", "right"),
        )
    legacy = checkpoint.get("tokenizer_json")
    if isinstance(legacy, str):
        return tokenizer_from_json(legacy, recipe)
    return None


class TokenizerCheckpointMixin:
    """Keeps a module's ``self.tokenizer`` in its Lightning checkpoints.

    List it before the LightningModule base (``class M(TokenizerCheckpointMixin,
    FineTuneModule)``). Saving stores ``self.tokenizer`` when it is set; loading restores it
    before the state dict is loaded, so ``M.load_from_checkpoint(path)`` and ``test
    --ckpt_path`` need neither the training data nor a tokenizer file.
    """

    tokenizer: PreTrainedTokenizerFast | None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add the tokenizer to the checkpoint (then run the next class's hook)."""
        super().on_save_checkpoint(checkpoint)  # type: ignore[misc]
        if getattr(self, "tokenizer", None) is not None:
            save_tokenizer_state(checkpoint, self.tokenizer)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the tokenizer from the checkpoint (then run the next class's hook)."""
        tok = load_tokenizer_state(checkpoint)
        if tok is not None:
            self.tokenizer = tok
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]
