"""FIM sentinels from the model, or added as new tokens whose input embeddings are trained.

A model family that was pre-trained with fill-in-the-middle has its own sentinel tokens
(StarCoder's ``<fim_prefix>``, Qwen2.5-Coder's ``<|fim_prefix|>``, ...):
:func:`model_fim_sentinels` finds them in the tokenizer, and the data use those. A model
without them (SmolLM2) gets the StarCoder strings added as new special tokens
(:func:`add_fim_tokens`), and their input embeddings are learnt during fine-tuning:

- :class:`NewTokenEmbedding` wraps the model's input embedding. Ids of the new tokens read
  rows of a small trainable table; every other id reads the frozen original embedding.
  Nothing else of the embedding matrix is trained or stored. Each new row starts as the
  mean embedding of the pieces the old tokenizer cut the token's text into (``<fim_prefix>``
  -> ``<``, ``f``, ``im``, ``_``, ``prefix``, ``>``), so the three sentinels start apart and
  near what the model read for those strings before (one shared mean row would make them
  indistinguishable).
- The output layer is left alone: sentinels only ever appear in prompts (their labels are
  ignored), so the model never needs to predict them, and it cannot emit them.
- ``use_initial()`` switches the table back to its initial rows, so "the base model"
  (adapters off) is scored with untrained sentinels, as it would be without fine-tuning.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .fim import FimSentinels

#: Sentinel spellings of the model families we know, tried in order.
FIM_FAMILIES = (
    FimSentinels("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder, SantaCoder
    FimSentinels("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen2.5-Coder
    FimSentinels("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),  # DeepSeek-Coder
    FimSentinels("<PRE>", "<SUF>", "<MID>"),  # CodeLlama
)


def single_token_id(tokenizer: Any, text: str) -> int | None:
    """The id of ``text`` when the tokenizer encodes it as exactly one token, else ``None``."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


def model_fim_sentinels(tokenizer: Any) -> FimSentinels | None:
    """The first family of :data:`FIM_FAMILIES` whose three sentinels are single tokens."""
    for family in FIM_FAMILIES:
        if all(single_token_id(tokenizer, t) is not None for t in family.tokens()):
            return family
    return None


class NewTokenEmbedding(nn.Module):
    """An input embedding whose ``new_ids`` read trainable rows; the rest the frozen base.

    Args:
        base: The model's embedding (kept frozen, weights shared with a tied output layer).
        new_ids: Token ids that get their own trainable rows (may lie beyond ``base``'s
            rows: a tokenizer grown past the embedding).
    """

    def __init__(
        self, base: nn.Embedding, new_ids: Sequence[int], init: Tensor | None = None
    ) -> None:
        super().__init__()
        if not new_ids:
            raise ValueError("NewTokenEmbedding needs at least one new token id.")
        self.base = base
        self.num_base = base.num_embeddings
        size = max(max(new_ids) + 1, self.num_base)
        slot = torch.full((size,), -1, dtype=torch.long)
        slot[torch.tensor(list(new_ids))] = torch.arange(len(new_ids))
        self.register_buffer("slot", slot, persistent=False)
        self.register_buffer("new_ids", torch.tensor(list(new_ids)), persistent=True)
        if init is None:  # the mean embedding
            init = base.weight.detach().mean(dim=0, keepdim=True).repeat(len(new_ids), 1)
        if tuple(init.shape) != (len(new_ids), base.embedding_dim):
            raise ValueError(f"init has shape {tuple(init.shape)}, expected "
                             f"({len(new_ids)}, {base.embedding_dim}).")  # fmt: skip
        init = init.detach().to(base.weight.dtype)
        self.register_buffer("initial_rows", init.clone(), persistent=True)
        self.rows = nn.Parameter(init.clone())
        self._initial = False

    @property
    def weight(self) -> Tensor:
        """The base embedding's weight (what ``get_input_embeddings().weight`` callers use)."""
        return self.base.weight

    @property
    def embedding_dim(self) -> int:
        """Width of an embedding row."""
        return self.base.embedding_dim

    def forward(self, input_ids: Tensor) -> Tensor:
        slot = self.slot[input_ids]
        is_new = slot >= 0
        base_ids = torch.where(is_new | (input_ids >= self.num_base), 0, input_ids)
        out = self.base(base_ids)
        rows = self.initial_rows if self._initial else self.rows
        new = rows[slot.clamp_min(0)].to(out.dtype)
        return torch.where(is_new.unsqueeze(-1), new, out)

    @contextlib.contextmanager
    def use_initial(self) -> Iterator[None]:
        """Read the untrained (initial) rows inside the block."""
        old, self._initial = self._initial, True
        try:
            yield
        finally:
            self._initial = old


def add_fim_tokens(
    model: nn.Module, tokenizer: Any, sentinels: FimSentinels = FIM_FAMILIES[0]
) -> NewTokenEmbedding:
    """Add ``sentinels`` to ``tokenizer`` as special tokens and give them trainable rows.

    The model's input embedding is replaced by a :class:`NewTokenEmbedding` (the original
    inside it, frozen); its ``rows`` are the only new trainable parameters, each starting at
    the mean embedding of the pieces the tokenizer cut its text into before it was added.
    """
    embedding = model.get_input_embeddings()
    pieces = [tokenizer.encode(t, add_special_tokens=False) for t in sentinels.tokens()]
    weight = embedding.weight.detach()
    init = torch.stack([weight[torch.tensor(ids)].mean(dim=0) for ids in pieces])
    tokenizer.add_special_tokens(
        {"additional_special_tokens": sentinels.tokens()}, replace_extra_special_tokens=False
    )
    ids = [single_token_id(tokenizer, t) for t in sentinels.tokens()]
    if any(i is None for i in ids):
        raise ValueError(f"adding {sentinels.tokens()} did not give single tokens: {ids}.")
    wrapped = NewTokenEmbedding(embedding, [int(i) for i in ids if i is not None], init)
    model.set_input_embeddings(wrapped)
    return wrapped


def find_new_token_embedding(model: nn.Module) -> NewTokenEmbedding | None:
    """The model's :class:`NewTokenEmbedding`, if its input embedding is one."""
    embedding = model.get_input_embeddings()
    return embedding if isinstance(embedding, NewTokenEmbedding) else None


def save_new_tokens(embedding: NewTokenEmbedding, tokenizer: Any, folder: str | Path) -> Path:
    """The added tokens' trained rows (``rows.safetensors``: ``ids``, ``rows``) and the grown
    tokenizer, written into ``folder`` atomically (what a PEFT adapter folder cannot hold)."""
    from safetensors.torch import save_file

    from core.atomic import atomic_directory

    folder = Path(folder)
    with atomic_directory(folder, overwrite=True) as tmp:
        tensors = {"ids": embedding.new_ids.clone(), "rows": embedding.rows.detach().clone()}
        save_file(tensors, str(tmp / "rows.safetensors"))
        tokenizer.save_pretrained(tmp)
    return folder
