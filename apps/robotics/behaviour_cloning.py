"""Behaviour cloning outside Lightning: the default recipe's policy, training samples from
recorded rollouts, batches mixed from weighted sources, and a short AdamW loop.

:mod:`apps.robotics.online` (rounds of the policy's own rollouts) and
:mod:`apps.robotics.continual` (task families in sequence) train many small stages in one
process, each on a different mix of data; a Lightning ``Trainer`` per stage would cost more
than the stage. The recipe is the default config's: frozen trunk (cached features), top block
and new layers trained, L1 chunk head with temporal ensembling at execution.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .augment import InstructionAugmenter
from .chunking import ChunkExecutor
from .data import ChunkDataset, collate, encode_trunk
from .evaluation import EpisodeResult
from .model import TextFn
from .policy import VLAPolicy


def build_policy(
    seed: int = 0, chunk_size: int = 8, text_tower: TextFn | None = None, **encoder: Any
) -> VLAPolicy:
    """The default recipe's policy: ImageNet trunk (split 2), top block and new layers
    trained, L1 chunk head (``encoder``: other :class:`VisionLanguageEncoder` options)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VLAPolicy(
            head="l1_chunk",
            chunk_size=chunk_size,
            finetune="top",
            text_tower=text_tower,
            **encoder,
        )


@dataclass
class Source:
    """One pool of training samples: a dataset, per-sample weights (None: uniform) and its
    share of every batch."""

    dataset: ChunkDataset
    weights: Tensor | None = None
    share: float = 1.0


def draw_batch(sources: Sequence[Source], batch_size: int, gen: torch.Generator) -> dict:
    """A collated batch: how many samples come from each source is drawn by the shares,
    which samples by each source's weights (with replacement)."""
    shares = torch.tensor([s.share for s in sources], dtype=torch.float64)
    counts = torch.bincount(
        torch.multinomial(shares, batch_size, replacement=True, generator=gen),
        minlength=len(sources),
    )
    samples = []
    for source, count in zip(sources, counts.tolist(), strict=True):
        if not count:
            continue
        n = len(source.dataset)
        weights = source.weights if source.weights is not None else torch.ones(n)
        for i in torch.multinomial(weights, count, replacement=True, generator=gen).tolist():
            samples.append(source.dataset[i])
    return collate(samples)


def train_policy(
    policy: VLAPolicy,
    sources: Sequence[Source],
    steps: int,
    *,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    augmenter: InstructionAugmenter | None = None,
    warmup: int = 100,
    progress: bool = True,
    desc: str = "train",
    loss_fn: Callable[[dict[str, Any]], Tensor] | None = None,
) -> list[float]:
    """Behaviour cloning on a mix of sources: each batch takes ``share`` of its samples from
    each source (drawn by its weights), AdamW with warm-up and cosine decay, clipping 1.0.

    ``loss_fn(batch)`` replaces ``policy.loss(batch)`` (a penalty added, an adapter routed);
    only the policy's parameters that require grad at the call are optimised. Returns the
    loss of every step."""
    sources = [s for s in sources if len(s.dataset) and s.share > 0]
    if not sources or steps < 1:
        raise ValueError("train_policy needs steps >= 1 and a non-empty source with share > 0")
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    warmup = min(warmup, steps // 2)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    policy.train()
    for _ in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
        batch = draw_batch(sources, batch_size, gen)
        if augmenter is not None:
            batch["instruction"] = augmenter(batch["instruction"])
        loss = policy.loss(batch) if loss_fn is None else loss_fn(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    policy.eval()
    return losses


def rollout_dataset(
    policy: VLAPolicy, episodes: Sequence[EpisodeResult], chunk_size: int
) -> ChunkDataset:
    """Training samples from recorded rollouts (``rollout(record_transitions=True)``):
    every step's frame (trunk features), proprioception and executed action, normalised by
    the policy's normaliser, chunked like the demonstrations."""
    if policy.normalizer is None:
        raise ValueError("the policy has no normaliser: train it on demonstrations first")
    kept = [e for e in episodes if e.actions is not None and len(e.actions)]
    for e in kept:
        if e.frames is None or len(e.frames) < len(e.actions) or e.proprio is None:
            raise ValueError(
                f"rollout of seed {e.seed} has {0 if e.frames is None else len(e.frames)} "
                f"frames for {len(e.actions)} actions: record it with "
                "rollout(record_transitions=True)"
            )
    if not kept:
        raise ValueError("no recorded steps: the rollouts hold no transitions")
    lengths = np.array([len(e.actions) for e in kept], dtype=np.int64)
    images = np.stack([f for e in kept for f in e.frames[: len(e.actions)]])
    proprio = np.concatenate([e.proprio for e in kept])
    actions = np.concatenate([e.actions for e in kept])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    episode = np.repeat(np.arange(len(kept)), lengths)  # also the index of its instruction
    normalizer = policy.normalizer
    return ChunkDataset(
        encode_trunk(policy.encoder.image, images),
        torch.from_numpy(np.asarray(normalizer.normalize_state(proprio), dtype=np.float32)),
        torch.from_numpy(np.asarray(normalizer.normalize_action(actions), dtype=np.float32)),
        np.repeat(starts + lengths, lengths),
        episode,
        episode,
        [e.instruction for e in kept],
        np.arange(int(lengths.sum())),
        chunk_size,
    )


def ensembling(policy: VLAPolicy) -> functools.partial:
    """The default recipe's executor factory: temporal ensembling of the policy's chunks."""
    return functools.partial(ChunkExecutor, "ensemble", policy.chunk_size)
