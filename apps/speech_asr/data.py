"""The speech data module: utterances from a source, log-mel features, mixed-language batches.

Training batches mix the adapted (tail) languages at random, so one batch holds several
languages and the module routes each sample to its own language's adapter. Validation holds
the tail languages' dev sets (each language's dev CER over steps drives best-checkpoint
assembly); test holds the tail and the head languages (the head ones measure forgetting).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .features import LogMel
from .text import LANGUAGES, CharVocabulary, known_language
from .utterance import Utterance

log = logging.getLogger(__name__)

#: The on-disk formats ``data.source`` names, besides ``embedded``.
DISK_SOURCES = ("common_voice", "fleurs", "jsonl")
SOURCES = ("embedded", *DISK_SOURCES)
#: Feature front ends: the streaming foundation's log-mel, or Whisper's.
FRONTENDS = ("logmel", "whisper")

#: Training utterances per tail language in the embedded default: down to 40.
DEFAULT_TRAIN_UTTERANCES = {"lt": 300, "lv": 120, "sl": 80, "is": 40}


@dataclass
class Example:
    """One utterance ready for a batch: features, token ids and its language."""

    features: Tensor  # (frames, n_mels)
    tokens: Tensor  # (characters,) int64 ids of the CharVocabulary
    language: str
    text: str
    id: str


class ExampleSet(Dataset):
    """A list of :class:`Example` (features computed once, when the split is set up)."""

    def __init__(self, examples: list[Example]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Example:
        return self.examples[index]

    @property
    def languages(self) -> list[str]:
        """The languages present, in first-seen order."""
        return list(dict.fromkeys(e.language for e in self.examples))


def collate(examples: Sequence[Example]) -> dict[str, Any]:
    """Pad a list of examples into a batch dict.

    Keys: ``features`` (B, T, n_mels), ``feature_lengths`` (B,), ``targets`` (B, U) padded
    with 0, ``target_lengths`` (B,), ``languages`` (list of codes), ``texts``, ``ids``.
    """
    frames = max(e.features.shape[0] for e in examples)
    mels = examples[0].features.shape[1]
    chars = max(1, max(e.tokens.numel() for e in examples))
    features = torch.zeros(len(examples), frames, mels)
    targets = torch.zeros(len(examples), chars, dtype=torch.long)
    for i, e in enumerate(examples):
        features[i, : e.features.shape[0]] = e.features
        targets[i, : e.tokens.numel()] = e.tokens
    return {
        "features": features,
        "feature_lengths": torch.tensor([e.features.shape[0] for e in examples]),
        "targets": targets,
        "target_lengths": torch.tensor([e.tokens.numel() for e in examples]),
        "languages": [e.language for e in examples],
        "texts": [e.text for e in examples],
        "ids": [e.id for e in examples],
    }


class SpeechDataModule(pl.LightningDataModule):
    """Utterances of the tail (adapted) and head (foundation) languages.

    Args:
        source: ``embedded`` (a seeded corpus synthesized with espeak-ng from real words of
            each language, cached) or an on-disk format: ``common_voice``, ``fleurs``,
            ``jsonl`` (see ``apps.speech_asr.formats``), read from ``root``.
        root: The corpus folder (on-disk sources).
        languages: The tail languages: each gets its own adapter, trained on mixed batches.
        head_languages: The foundation's languages, tested to measure forgetting.
        train_utterances: Training utterances per tail language (embedded source); on-disk
            sources use every row of the train split.
        dev_utterances: Dev utterances per tail language (embedded).
        test_utterances: Test utterances per language, tail and head (embedded).
        split_seed: Seeds the embedded corpus (text, speakers, noise); the run's
            ``seed_everything`` does not move it.
        batch_size: Training batch size (mixed languages).
        eval_batch_size: Validation and test batch size.
        max_seconds: Longest clip read from disk; longer ones are an error naming the file.
        root_language: The language of every row of an on-disk corpus that names none (a
            Common Voice folder without a ``locale`` column, a FLEURS folder not named by its
            language); otherwise each row's own language, or its folder's name, is used.
        cache_dir: Folder for the embedded corpus instead of the user cache.
        stride: Feature frames per network frame (the foundation's ``stride``): a
            transcript with more characters than network frames cannot be aligned by CTC,
            so such utterances are skipped (logged with their count).
        frontend: ``logmel`` (the streaming foundation's features) or ``whisper``
            (Whisper's log-mel, each clip padded to ``window_seconds``; no CTC skip).
        window_seconds: The Whisper encoder's window (``frontend: whisper``); a longer clip
            is an error naming it. The Whisper recipe links ``model.encoder_seconds`` to it.
        pseudo_labels: A pseudo-label file (:mod:`apps.speech_asr.pseudo_labels`, embedded
            source): train also on the embedded train utterances it names, beyond the
            labelled ``train_utterances``, with the teacher's texts (noisy student).
    """

    def __init__(
        self,
        source: str = "embedded",
        root: str | None = None,
        languages: list[str] | None = None,
        head_languages: list[str] | None = None,
        train_utterances: dict[str, int] | None = None,
        dev_utterances: int = 40,
        test_utterances: int = 60,
        split_seed: int = 0,
        batch_size: int = 16,
        eval_batch_size: int = 32,
        max_seconds: float = 20.0,
        root_language: str | None = None,
        cache_dir: str | None = None,
        stride: int = 4,
        frontend: str = "logmel",
        window_seconds: float = 30.0,
        pseudo_labels: str | None = None,
    ) -> None:
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"data.source={source!r} must be one of {', '.join(SOURCES)}.")
        if source != "embedded" and not root:
            raise ValueError(f"data.source={source!r} reads a corpus from disk: set data.root.")
        self.languages = list(languages or DEFAULT_TRAIN_UTTERANCES)
        self.head_languages = list(head_languages if head_languages is not None else ["es", "de"])
        for code in [*self.languages, *self.head_languages]:
            try:
                known_language(code)
            except ValueError as err:
                raise ValueError(f"data.languages / data.head_languages: {err}") from err
        overlap = sorted(set(self.languages) & set(self.head_languages))
        if overlap:
            raise ValueError(
                f"data.languages and data.head_languages share {overlap}: a language is either "
                "adapted (tail) or kept as the foundation's (head)."
            )
        self.train_utterances = dict(train_utterances or DEFAULT_TRAIN_UTTERANCES)
        missing = [c for c in self.languages if c not in self.train_utterances]
        if source == "embedded" and missing:
            raise ValueError(
                f"data.train_utterances has no count for {missing}; give one per tail "
                f"language, e.g. {{{', '.join(f'{c}: 100' for c in missing)}}}."
            )
        for label, n in [("dev_utterances", dev_utterances), ("test_utterances", test_utterances)]:
            if n < 1:
                raise ValueError(f"data.{label}={n} must be at least 1.")
        self.source, self.root = source, root
        self.dev_utterances, self.test_utterances = dev_utterances, test_utterances
        self.split_seed = split_seed
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.max_seconds, self.cache_dir = max_seconds, cache_dir
        self.root_language = root_language
        self.stride = stride
        self.vocabulary = CharVocabulary.for_languages(sorted(LANGUAGES))
        if frontend not in FRONTENDS:
            raise ValueError(f"data.frontend={frontend!r} must be one of {', '.join(FRONTENDS)}.")
        self.frontend_name, self.window_seconds = frontend, window_seconds
        if pseudo_labels and source != "embedded":
            raise ValueError(
                "data.pseudo_labels names utterances of the embedded corpus; set "
                "data.source: embedded (or add the pseudo-labelled rows to your manifest)."
            )
        self.pseudo_labels = pseudo_labels
        if frontend == "whisper":
            from .whisper.model import feature_extractor

            self.whisper_extractor = feature_extractor(window_seconds)
        self.frontend = LogMel()
        self.splits: dict[str, ExampleSet] = {}

    # ------------------------------------------------------------------ utterances
    def utterances(self, split: str) -> list[Utterance]:
        """The split's utterances from the configured source (audio loaded)."""
        if self.source == "embedded":
            return self._embedded(split)
        from .formats import load, read_source  # on-disk sources only

        wanted = self.languages if split != "test" else [*self.languages, *self.head_languages]
        rows = read_source(
            self.source,
            self.root,
            split,
            languages=wanted,
            language=self.root_language,
            max_seconds=self.max_seconds,
        )
        missing = sorted(set(wanted) - {u.language for u in rows})
        if missing:
            log.warning(
                "speech_asr: the %s split of %s has no utterance of %s; those languages are "
                "left out of its scores.",
                split,
                self.root,
                missing,
            )
        return [load(u, max_seconds=self.max_seconds) for u in rows]

    def _embedded(self, split: str) -> list[Utterance]:
        from .embedded import embedded_corpus

        if split == "train" and self.pseudo_labels:
            return self._pseudo_labelled_train()
        if split == "train":
            counts: Mapping[str, int] = {c: self.train_utterances[c] for c in self.languages}
        elif split == "dev":
            counts = dict.fromkeys(self.languages, self.dev_utterances)
        else:
            counts = dict.fromkeys([*self.languages, *self.head_languages], self.test_utterances)
        return embedded_corpus(counts, split, seed=self.split_seed, cache_dir=self.cache_dir)

    def _pseudo_labelled_train(self) -> list[Utterance]:
        """The labelled train utterances of each tail language, then the ones the
        pseudo-label file names, with the teacher's texts."""
        from .embedded import embedded_split
        from .pseudo_labels import read_pseudo_labels, with_pseudo_labels

        labelled = {c: self.train_utterances[c] for c in self.languages}
        assert self.pseudo_labels is not None
        texts = read_pseudo_labels(self.pseudo_labels, labelled)
        out: list[Utterance] = []
        for lang, count in labelled.items():
            own = texts.get(lang, {})
            total = max([count, *(i + 1 for i in own)])
            rows = embedded_split(
                lang, "train", total, seed=self.split_seed, cache_dir=self.cache_dir
            )
            out.extend(with_pseudo_labels(rows, count, own))
        log.info(
            "speech_asr: %d labelled and %d pseudo-labelled train utterances (%s)",
            sum(labelled.values()),
            len(out) - sum(labelled.values()),
            self.pseudo_labels,
        )
        return out

    def examples(self, utterances: Sequence[Utterance]) -> list[Example]:
        """Features and token ids for each utterance; an utterance whose transcript has more
        characters than the network has frames is skipped (CTC cannot align it), logged."""
        if self.frontend_name == "whisper":
            return self.whisper_examples(utterances)
        out, too_fast = [], []
        for u in utterances:
            assert u.audio is not None, "utterances() loads the audio"
            features = self.frontend(torch.from_numpy(u.audio))
            tokens = torch.tensor(self.vocabulary.encode(u.text), dtype=torch.long)
            if tokens.numel() > -(-features.shape[0] // self.stride):
                too_fast.append(u.id)
                continue
            out.append(Example(features, tokens, u.language, u.text, u.id))
        if too_fast:
            log.warning(
                "speech_asr: skipped %d utterances whose transcript has more characters "
                "than network frames (feature frames / data.stride = %d), e.g. %s.",
                len(too_fast),
                self.stride,
                too_fast[0],
            )
        if utterances and not out:
            raise ValueError(
                "speech_asr: every utterance was skipped (transcripts longer than the audio "
                "allows at data.stride frames per character); check the transcripts."
            )
        return out

    def whisper_examples(self, utterances: Sequence[Utterance]) -> list[Example]:
        """Whisper log-mel features, each clip padded to the window; the text is tokenized
        by the model (``tokens`` stays empty)."""
        from .whisper.model import whisper_features

        out = []
        for u in utterances:
            assert u.audio is not None, "utterances() loads the audio"
            features = whisper_features(self.whisper_extractor, u.audio, self.window_seconds, u.id)
            out.append(
                Example(features, torch.zeros(0, dtype=torch.long), u.language, u.text, u.id)
            )
        return out

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ["train", "dev"], "validate": ["dev"], "test": ["test"]}.get(
            stage or "", ["train", "dev", "test"]
        )
        for split in wanted:
            if split not in self.splits:
                self.splits[split] = ExampleSet(self.examples(self.utterances(split)))
                log.info("speech_asr: %s split, %d utterances", split, len(self.splits[split]))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.splits["train"], batch_size=self.batch_size, shuffle=True, collate_fn=collate
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("dev")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def _eval_loader(self, split: str) -> DataLoader:
        return DataLoader(self.splits[split], batch_size=self.eval_batch_size, collate_fn=collate)
