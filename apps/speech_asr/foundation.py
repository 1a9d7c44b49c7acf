"""The streaming foundation: an Emformer CTC model pre-trained here on the head languages.

The paper's setting is a frozen multilingual foundation; no such streaming model installs
offline, so the embedded default pre-trains one on the embedded corpus's head languages
(plain PyTorch loop, progress bar) and caches it by its whole recipe (``core.cache``): the
first run pays a few minutes, every later run loads it. ``model.pretrained`` takes a file
written by :func:`save_foundation` (or a cache entry) instead.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from core.atomic import atomic_write
from core.cache import cached
from core.training.schedules import warmup_cosine

from .features import spec_augment
from .metrics import character_error_rate
from .model import FoundationConfig, SpeechModel
from .streaming import greedy_decode
from .text import LANGUAGES, CharVocabulary

#: Raise when the pre-training code changes what it produces (a new cache entry).
PRETRAIN_VERSION = 1


@dataclass
class PretrainConfig:
    """How the embedded foundation is pre-trained (all of it keys the cache entry).

    Args:
        languages: The head languages it learns.
        utterances: Training utterances per head language (embedded corpus).
        dev_utterances: Dev utterances per head language, scored every ``eval_every`` steps.
        steps: Optimizer steps.
        batch_size: Utterances per step (languages mixed).
        lr: Peak learning rate (AdamW), reached after ``warmup_steps`` and decayed to 10%
            by a cosine; without warm-up the CTC model stays at CER 1.0.
        warmup_steps: Linear warm-up steps.
        eval_every: Steps between dev CER measurements (the pre-training curve).
        seed: Initialisation and batch order.
    """

    languages: list[str] = field(default_factory=lambda: ["es", "de"])
    utterances: int = 600
    dev_utterances: int = 40
    steps: int = 2400
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 150
    eval_every: int = 300
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("utterances", "dev_utterances", "steps", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.pretraining.{name}={getattr(self, name)} must be >= 1.")
        if not self.languages:
            raise ValueError("model.pretraining.languages is empty: name the head languages.")


def vocabulary() -> CharVocabulary:
    """The output alphabet every foundation uses: the letters of every known language, so a
    tail language's letters have an output row even where the head languages never use them."""
    return CharVocabulary.for_languages(sorted(LANGUAGES))


def embedded_foundation(
    config: FoundationConfig,
    pretraining: PretrainConfig,
    split_seed: int = 0,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """The pre-trained foundation for this recipe: from the cache, or trained now.

    Returns the saved form (see :func:`save_foundation`): ``config``, ``vocabulary``,
    ``state_dict``, ``history`` (dev CER per language over steps) and ``pretraining``.
    """
    vocab = vocabulary()
    config = dataclasses.replace(config, vocab_size=len(vocab))
    key = {
        "version": PRETRAIN_VERSION,
        "foundation": dataclasses.asdict(config),
        "pretraining": dataclasses.asdict(pretraining),
        "split_seed": split_seed,
        "vocabulary": vocab.to_dict(),
    }
    return cached(
        "foundation",
        key,
        lambda: _pretrain(config, pretraining, vocab, split_seed, cache_dir),
        app="speech_asr",
        cache_dir=cache_dir,
    )


def _pretrain(
    config: FoundationConfig,
    pretraining: PretrainConfig,
    vocab: CharVocabulary,
    split_seed: int,
    cache_dir: str | Path | None,
) -> dict[str, Any]:
    from .data import SpeechDataModule, collate  # the data module's features and batches

    torch.manual_seed(pretraining.seed)
    data = SpeechDataModule(
        languages=pretraining.languages,
        head_languages=[],
        train_utterances=dict.fromkeys(pretraining.languages, pretraining.utterances),
        dev_utterances=pretraining.dev_utterances,
        split_seed=split_seed,
        cache_dir=None if cache_dir is None else str(cache_dir),
    )
    data.setup("fit")
    train, dev = data.splits["train"].examples, data.splits["dev"].examples
    model = SpeechModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=pretraining.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, pretraining.warmup_steps, pretraining.steps)
    )
    generator = torch.Generator().manual_seed(pretraining.seed)
    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    bar = tqdm(range(pretraining.steps), desc="pre-training the foundation", unit="step")
    for step in bar:
        model.train()
        rows = torch.randint(len(train), (pretraining.batch_size,), generator=generator)
        batch = collate([train[i] for i in rows.tolist()])
        features = spec_augment(batch["features"], batch["feature_lengths"], generator)
        loss = model.loss(
            features, batch["feature_lengths"], batch["targets"], batch["target_lengths"]
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % pretraining.eval_every == 0 or step + 1 == pretraining.steps:
            rates = dev_cer(model, dev, vocab)
            history.append({"step": step + 1, "cer": rates, "seconds": time.perf_counter() - start})
            bar.set_postfix(loss=f"{loss.item():.3f}", dev_cer=f"{_mean(rates):.3f}")
    model.eval()
    return {
        "config": dataclasses.asdict(config),
        "vocabulary": vocab.to_dict(),
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "history": history,
        "pretraining": dataclasses.asdict(pretraining),
    }


def _mean(rates: dict[str, float]) -> float:
    return sum(rates.values()) / max(1, len(rates))


@torch.no_grad()
def dev_cer(model: SpeechModel, examples: list, vocab: CharVocabulary) -> dict[str, float]:
    """Per-language CER of full-utterance greedy decoding over ``examples``."""
    from .data import collate

    was_training = model.training
    model.eval()
    by_language: dict[str, tuple[list[str], list[str]]] = {}
    for start in range(0, len(examples), 32):
        batch = collate(examples[start : start + 32])
        hyps = greedy_decode(model, batch["features"], batch["feature_lengths"])
        for lang, ref, hyp in zip(batch["languages"], batch["texts"], hyps, strict=True):
            refs, outs = by_language.setdefault(lang, ([], []))
            refs.append(ref)
            outs.append(vocab.decode(hyp))
    model.train(was_training)
    return {lang: character_error_rate(refs, hyps) for lang, (refs, hyps) in by_language.items()}


def save_foundation(saved: dict[str, Any], path: str | Path) -> Path:
    """Write a foundation (the dict :func:`embedded_foundation` returns) to ``path``
    atomically, for ``model.pretrained``."""
    path = Path(path)
    atomic_write(path, lambda tmp: torch.save(saved, tmp))
    return path


def load_foundation(path: str | Path) -> dict[str, Any]:
    """Read a foundation file written by :func:`save_foundation`; a file of another kind
    (a Lightning checkpoint, a foreign ``state_dict``) is an error naming what is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"model.pretrained={str(path)!r} does not exist; give a foundation file written by "
            "apps.speech_asr.foundation.save_foundation, or null for the embedded foundation."
        )
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"model.pretrained={str(path)!r} is not a readable foundation file ({err})."
        ) from err
    if isinstance(saved, dict) and "value" in saved and "config" not in saved:
        saved = saved["value"]  # a core.cache entry holds the foundation under "value"
    missing = [k for k in ("config", "vocabulary", "state_dict") if k not in (saved or {})]
    if missing:
        raise ValueError(
            f"model.pretrained={str(path)!r} lacks {missing}: it is not a speech foundation "
            "file (apps.speech_asr.foundation.save_foundation writes one)."
        )
    return saved


def build_foundation(saved: dict[str, Any]) -> tuple[SpeechModel, CharVocabulary]:
    """The network and vocabulary of a saved foundation, weights loaded."""
    config = FoundationConfig(**saved["config"])
    model = SpeechModel(config)
    model.load_state_dict(saved["state_dict"])
    return model, CharVocabulary.from_dict(saved["vocabulary"])


def parameter_count(state_dict: dict[str, Tensor]) -> int:
    """Number of parameters in a state dict (floating tensors)."""
    return sum(t.numel() for t in state_dict.values() if t.is_floating_point())
