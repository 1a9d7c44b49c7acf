"""Training-time instruction augmentation: other wordings of the same task, and word dropout.

Why: the demonstrations carry four training templates per family, and a policy trained on them
reads the sentences rather than the colour words, so it fails the held-out paraphrases (see
docs/robotics.md). DIAL (Xiao et al. 2023) relabels demonstrations with many instructions from
a language model; here a hand-written grammar (``envs.instructions.AUGMENT_FRAMES``, with no
content word of any held-out paraphrase) plays that part offline.
"""

from __future__ import annotations

import numpy as np
import torch

from apps.robotics.envs.instructions import TASKS, augmented_instruction, spec_of_instruction


class InstructionAugmenter:
    """Replace an instruction of the tabletop suite by another wording of its task.

    Each task gets a fixed pool of ``per_task`` wordings drawn once from the grammar with
    ``seed`` (a bounded pool keeps the text tower's cache small: each new string costs one
    MiniLM call). ``__call__`` swaps each instruction for a pool wording with probability
    ``p``; text the suite does not produce (another dataset's tasks, a blank) is kept.

    Args:
        p: Probability of replacing an instruction, in [0, 1].
        per_task: Wordings in each task's pool.
        seed: Seeds the pools and the per-batch draws.
    """

    def __init__(self, p: float, per_task: int = 64, seed: int = 0) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"instruction augmentation probability {p} must lie in [0, 1]")
        if per_task < 1:
            raise ValueError(f"per_task={per_task} must be >= 1")
        self.p = float(p)
        rng = np.random.default_rng(seed)
        self.pools: dict[str, list[str]] = {
            task: sorted({augmented_instruction(task, rng) for _ in range(per_task)})
            for task in TASKS
        }
        self.rng = np.random.default_rng(seed + 1)

    def __call__(self, instructions: list[str]) -> list[str]:
        out = []
        for text in instructions:
            spec = spec_of_instruction(text)
            if spec is None or self.rng.random() >= self.p:
                out.append(text)
                continue
            pool = self.pools[spec.task]
            out.append(pool[int(self.rng.integers(len(pool)))])
        return out


def drop_words(
    instructions: list[str], p: float, generator: torch.Generator | None = None
) -> list[str]:
    """Each instruction with every word dropped with probability ``p`` (torch's RNG, so the
    run's seed decides); an instruction never loses all its words (one is kept at random)."""
    out = []
    for text in instructions:
        words = text.split()
        if not words:
            out.append(text)
            continue
        keep = torch.rand(len(words), generator=generator) >= p
        if not keep.any():
            keep[torch.randint(len(words), (1,), generator=generator)] = True
        out.append(" ".join(w for w, k in zip(words, keep.tolist(), strict=True) if k))
    return out


__all__ = ["InstructionAugmenter", "drop_words"]
