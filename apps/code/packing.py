"""Tokenize records with a loss mask and pack several of them into one fixed-length row.

Every example starts with the end-of-text id as a separator whose label is always ignored,
so the token that opens an example is never "predicted" from the end of the previous one.
Packed examples must not see each other: :func:`packed_attention_mask` gives each token
attention only to earlier tokens of its own example, and position ids restart at 0 for
every example, so a packed row computes exactly what the examples would compute alone
(``tests/apps/code/test_packing.py`` checks the logits against unpacked forwards).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .records import Record

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Encoded:
    """One tokenized example: ids, labels (``IGNORE_INDEX`` off the target) and its task."""

    input_ids: list[int]
    labels: list[int]
    task: str

    def __len__(self) -> int:
        return len(self.input_ids)


def template_segments(record: Record, tokenizer: PreTrainedTokenizerBase) -> list[tuple[str, bool]]:
    """A chat record laid out by the tokenizer's own chat template, as ``(piece, is_target)``.

    Each turn is the text the template adds for it (the template applied to the turns up to
    it, minus the text before); an assistant turn's target is its content and what the
    template writes after it (the end-of-turn token), so the model learns to end its turns
    the way it was instructed to.

    Raises:
        ValueError: the template renders a conversation so that a later turn rewrites the
            text of the earlier ones (the pieces could not be cut apart).
    """
    out: list[tuple[str, bool]] = []
    done = ""
    turns = [dict(t) for t in record.messages]
    for k, turn in enumerate(turns):
        text = tokenizer.apply_chat_template(turns[: k + 1], tokenize=False)
        if not text.startswith(done):
            raise ValueError(
                "the tokenizer's chat template rewrites earlier turns when a turn is added, "
                "so its turns cannot be cut into prompt and target; remove chat_template from "
                "the tokenizer folder to use the plain <|role|> layout instead."
            )
        piece, done = text[len(done) :], text
        at = piece.rfind(turn["content"]) if turn["role"] == "assistant" else -1
        if at < 0:
            out.append((piece, False))
        else:
            out += [(piece[:at], False), (piece[at:], True)]
    return out


def encode_record(
    record: Record, tokenizer: PreTrainedTokenizerBase, max_len: int
) -> Encoded | None:
    """Tokenize ``record``; loss on the target pieces and the end-of-text after each.

    Chat records use the tokenizer's chat template when it has one
    (:func:`template_segments`; the template's end-of-turn ends each target instead of
    end-of-text), else the plain ``<|role|>`` layout of :meth:`Record.segments`. Too-long
    examples lose prompt tokens from the left first (the part nearest to the target stays),
    then target tokens from the right. ``None`` when no target token is left.
    """
    eos = tokenizer.eos_token_id
    ids, labels = [eos], [IGNORE_INDEX]
    templated = bool(record.messages) and bool(getattr(tokenizer, "chat_template", None))
    segments = template_segments(record, tokenizer) if templated else record.segments()
    for piece, target in segments:
        if not piece:
            continue
        piece_ids = tokenizer.encode(piece, add_special_tokens=False)
        ids += piece_ids
        if target:
            labels += piece_ids
            if not templated:
                ids.append(eos)
                labels.append(eos)
        else:
            labels += [IGNORE_INDEX] * len(piece_ids)
    excess = len(ids) - max_len
    if excess > 0:
        first_target = next((i for i, lab in enumerate(labels) if lab != IGNORE_INDEX), len(ids))
        drop = min(excess, max(first_target - 2, 0))  # keep the separator and one context id
        ids = ids[:1] + ids[1 + drop :]
        labels = labels[:1] + labels[1 + drop :]
        ids, labels = ids[:max_len], labels[:max_len]
    if all(lab == IGNORE_INDEX for lab in labels):
        return None
    return Encoded(ids, labels, record.task)


def encode_plain(
    text: str, tokenizer: PreTrainedTokenizerBase, max_len: int, task: str = "general"
) -> list[Encoded]:
    """Plain text cut into windows of ``max_len`` tokens, loss on every token (perplexity)."""
    eos = tokenizer.eos_token_id
    ids = tokenizer.encode(text, add_special_tokens=False)
    out = []
    step = max_len - 1
    for start in range(0, len(ids), step):
        chunk = ids[start : start + step]
        if len(chunk) < 8:
            continue
        out.append(Encoded([eos, *chunk], [IGNORE_INDEX, *chunk], task))
    return out


def pack(
    examples: Sequence[Encoded], max_len: int, seed: int | None = 0, by_task: bool = False
) -> list[list[Encoded]]:
    """Group examples into rows of at most ``max_len`` tokens (first-fit over a shuffle).

    ``seed=None`` keeps the given order. Examples longer than ``max_len`` must have been
    truncated by :func:`encode_record`. ``by_task`` packs each task on its own, so that
    every row holds a single task (needed to route rows to per-task adapters).
    """
    if by_task:
        tasks = list(dict.fromkeys(e.task for e in examples))
        return [row for t in tasks for row in pack([e for e in examples if e.task == t],
                                                    max_len, seed)]  # fmt: skip
    order = list(examples)
    if seed is not None:
        random.Random(seed).shuffle(order)
    rows: list[list[Encoded]] = []
    room: list[int] = []
    for ex in order:
        if len(ex) > max_len:
            raise ValueError(
                f"an example of {len(ex)} tokens does not fit data.seq_len={max_len}; "
                "encode it with encode_record(..., max_len) first."
            )
        for i, free in enumerate(room):
            if len(ex) <= free:
                rows[i].append(ex)
                room[i] -= len(ex)
                break
        else:
            rows.append([ex])
            room.append(max_len - len(ex))
    return rows


def collate_packed(
    rows: Sequence[Sequence[Encoded]], pad_id: int, task_names: Sequence[str], max_len: int
) -> dict[str, object]:
    """Tensors for a batch of packed rows, all of length ``max_len``.

    Returns ``input_ids``, ``labels``, ``position_ids`` (restart per example),
    ``segment_ids`` (example index within the row, ``-1`` on padding), ``task_ids`` (task
    index of each labelled token, ``-1`` elsewhere) and ``task_names``.
    """
    index = {name: i for i, name in enumerate(task_names)}
    shape = (len(rows), max_len)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    segment_ids = torch.full(shape, -1, dtype=torch.long)
    task_ids = torch.full(shape, -1, dtype=torch.long)
    for b, row in enumerate(rows):
        pos = 0
        for s, ex in enumerate(row):
            n = len(ex)
            if ex.task not in index:
                raise KeyError(f"task {ex.task!r} is not among the data's tasks {list(index)}.")
            sl = slice(pos, pos + n)
            input_ids[b, sl] = torch.tensor(ex.input_ids)
            lab = torch.tensor(ex.labels)
            labels[b, sl] = lab
            position_ids[b, sl] = torch.arange(n)
            segment_ids[b, sl] = s
            task_ids[b, sl] = torch.where(lab != IGNORE_INDEX, index[ex.task], -1)
            pos += n
        if pos < max_len:  # padding continues the positions (never attended by real tokens)
            position_ids[b, pos:] = torch.arange(max_len - pos)
    return {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "segment_ids": segment_ids,
        "task_ids": task_ids,
        "task_names": tuple(task_names),
    }


def packed_attention_mask(segment_ids: Tensor) -> Tensor:
    """``(B, 1, L, L)`` boolean mask: True where query i may attend key j.

    i attends j when both belong to the same example and j <= i (causal). A padding token
    attends only itself, so no softmax row is empty.
    """
    length = segment_ids.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    real = (segment_ids >= 0)[:, :, None]
    eye = torch.eye(length, dtype=torch.bool, device=segment_ids.device)
    return ((same & real & causal) | eye)[:, None]


def additive_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean mask as the additive float mask attention layers add to their scores."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
        ~mask, torch.finfo(dtype).min
    )
