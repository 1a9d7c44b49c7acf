"""Per-language LoRA on a pretrained multilingual Whisper, trained on mixed-language batches.

The foundation is a real Whisper (the installed Whisper base by default, see
:mod:`apps.speech_asr.whisper.installed`), frozen; each tail language gets its own LoRA on
the encoder's and the decoder's attention and feed-forward layers, all in one
:class:`core.adapters.AdapterBank`. A training batch mixes languages: each sample's decoder
prompt carries its language token and the bank routes it through its language's adapter
(head languages: none). The encoder's window is cut from 30 s to ``encoder_seconds``
(:func:`~apps.speech_asr.whisper.model.trim_encoder`), which is what makes CPU training
affordable.

Validation: greedy transcription of the dev set, CER per tail language. Test: zero-shot
Whisper (adapters off) against the adapted bank, both with beam search, WER/CER per
language on normalised text (:func:`apps.speech_asr.text.normalize` on both sides: the
corpus writes no case or punctuation); the head languages go through no adapter, so their
scores must equal zero-shot exactly (checked and reported).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from core.adapters import AdapterBank, AdapterConfig, LoraConfig
from core.training.module import coerce_adapter_config
from core.training.report import TestReport

from ..evaluation import Decoded
from ..features import spec_augment
from ..metrics import relative_reduction
from ..module_base import SpeechModuleBase
from ..routing import bank_names, check_routing
from ..text import normalize
from .model import IGNORE, decoder_batch, trim_encoder


class WhisperAdapterModule(SpeechModuleBase):
    """Tail-language ASR with per-language LoRA on a frozen pretrained Whisper.

    Args:
        pretrained: ``whisper-base`` (the installed wheels' multilingual Whisper base,
            sha256-checked, converted once and cached), a CTranslate2 (faster-whisper)
            folder, or a transformers Whisper folder.
        cache_dir: Where converted models are cached (default: the user cache).
        encoder_seconds: The encoder's window in seconds (30: Whisper's own); set from
            ``data.window_seconds``.
        languages: The tail languages, one adapter each (set by ``data.languages``).
        head_languages: Tested with adapters off, for forgetting (``data.head_languages``).
        adapter: The adapter of each tail language (required; the recipe: LoRA r=8 on
            every attention and feed-forward projection of encoder and decoder).
        adapter_routing: ``per_language`` (one adapter per tail language, routed per
            sample) or ``shared`` (one for all tail languages).
        spec_augment: Mask frequency bands and time spans of the training features.
        warmup_steps: Linear LR warm-up, then cosine decay to 10% over the run.
        num_beams: Beam width of the test's transcription (validation is greedy).
        max_new_tokens: The longest transcript generated.
        examples_per_language: Example transcripts per language in ``report.md``.
        **kwargs: The other ``FineTuneModule`` options (``optimizer``, ``regularizers``...).
    """

    def __init__(
        self,
        pretrained: str = "whisper-base",
        cache_dir: str | None = None,
        encoder_seconds: float = 30.0,
        languages: list[str] | None = None,
        head_languages: list[str] | None = None,
        adapter: AdapterConfig | None = None,
        adapter_routing: str = "per_language",
        spec_augment: bool = False,
        warmup_steps: int = 20,
        num_beams: int = 4,
        max_new_tokens: int = 64,
        examples_per_language: int = 3,
        **kwargs: Any,
    ) -> None:
        from transformers import WhisperForConditionalGeneration, WhisperTokenizerFast

        from .installed import ensure_whisper

        check_routing(adapter_routing)
        adapter = coerce_adapter_config(adapter)
        if adapter is None:
            raise ValueError(
                "model.adapter is null: the Whisper recipe trains adapters on a frozen "
                "Whisper; give one, e.g. class_path: core.adapters.LoraConfig."
            )
        folder = ensure_whisper(pretrained, cache_dir=cache_dir)
        model = WhisperForConditionalGeneration.from_pretrained(str(folder))
        trim_encoder(model, encoder_seconds)
        model.train()  # from_pretrained returns eval mode; the trainer keeps a module's mode
        super().__init__(model=model, adapter=None, **kwargs)
        self.model.requires_grad_(False)
        self.tokenizer = WhisperTokenizerFast.from_pretrained(str(folder))
        self.languages = list(languages or ["lt", "lv", "sl", "is"])
        self.head_languages = list(head_languages or [])
        self.routing = adapter_routing
        self.bank_adapter_config = adapter
        self.spec_augment = spec_augment
        self.warmup_steps = warmup_steps
        self.num_beams = num_beams
        self.max_new_tokens = max_new_tokens
        self.examples_per_language = examples_per_language
        self.expected_frames = 2 * self.model.config.max_source_positions
        # The bank injects into self.model in place; kept out of the module tree so its
        # parameters are saved once, under model.*.
        self.__dict__["adapter_bank"] = AdapterBank(
            self.model, adapter, names=bank_names(self.languages, adapter_routing)
        )
        self.keep_eval_batches()
        self.decoded: dict[str, Decoded] = {}
        self.dev_history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ inputs
    def input_features(self, batch: dict[str, Any], augment: bool = False) -> Tensor:
        """The batch's (B, mels, frames) features, checked against the encoder window."""
        features = batch["features"]
        frames, mels = features.shape[1], features.shape[2]
        if frames != self.expected_frames or mels != self.model.config.num_mel_bins:
            raise ValueError(
                f"the batch has {frames} frames x {mels} mels, this Whisper takes "
                f"{self.expected_frames} x {self.model.config.num_mel_bins}: set "
                "data.frontend: whisper and data.window_seconds equal to "
                "model.encoder_seconds (the recipe links them)."
            )
        if augment:
            features = spec_augment(features, batch["feature_lengths"])
        return features.transpose(1, 2)

    # ------------------------------------------------------------------ steps
    def forward(self, features: Tensor, decoder_input_ids: Tensor) -> Tensor:
        return self.model(input_features=features, decoder_input_ids=decoder_input_ids).logits

    def shared_step(self, batch: dict[str, Any], stage: str) -> dict[str, Any]:
        features = self.input_features(batch, augment=stage == "train" and self.spec_augment)
        decoder_ids, labels = decoder_batch(self.tokenizer, batch["languages"], batch["texts"])
        decoder_ids, labels = decoder_ids.to(features.device), labels.to(features.device)
        with self.route(batch["languages"]):
            logits = self(features, decoder_ids)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE)
        return {"loss": loss, "batch_size": features.shape[0]}

    # ------------------------------------------------------------------ decoding
    @torch.no_grad()
    def transcribe(
        self, batches: list[dict[str, Any]], adapters: bool = True, num_beams: int = 1
    ) -> Decoded:
        """Transcribe ``batches``, each sample on its language's adapter (``adapters``) or
        on none; hypotheses and references normalised for their language."""
        was_training = self.training
        self.eval()
        decoded = Decoded()
        for batch in batches:
            features = self.input_features(batch)
            with self.route(batch["languages"], foundation_only=not adapters, expand=True):
                ids = self.model.generate(
                    features,
                    language=list(batch["languages"]),
                    task="transcribe",
                    num_beams=num_beams,
                    max_new_tokens=self.max_new_tokens,
                )
            texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
            for lang, ref, hyp, uid in zip(
                batch["languages"], batch["texts"], texts, batch["ids"], strict=True
            ):
                decoded.languages.append(lang)
                decoded.references.append(normalize(ref, lang))
                decoded.hypotheses.append(normalize(hyp, lang))
                decoded.ids.append(uid)
        self.train(was_training)
        return decoded

    def on_validation_epoch_end(self) -> None:
        """Greedy dev CER per tail language (and their mean, on the progress bar)."""
        batches = self._eval_batches["val"]
        if not batches or self.trainer.sanity_checking:
            return
        rates = {k: v["cer"] for k, v in self.transcribe(batches).rates.items()}
        for lang, cer in rates.items():
            self.log(f"val/cer/{lang}", cer)
        tail = [rates[lang] for lang in self.languages if lang in rates]
        if tail:
            self.log("val/cer_tail", sum(tail) / len(tail), prog_bar=True)
        self.dev_history.append({"step": int(self.global_step), "cer": rates})

    def on_test_epoch_end(self) -> None:
        """Zero-shot against adapted, beam search; WER/CER per language and their means."""
        batches = self._eval_batches["test"]
        if not batches:
            return
        zero_shot = self.transcribe(batches, adapters=False, num_beams=self.num_beams)
        # Untrained LoRA (every B zero) changes nothing: the zero-shot decode is the adapted
        # one (``test`` without a checkpoint, as the window comparison of the benchmark runs).
        adapted = (
            zero_shot
            if self.adapters_are_identity()
            else self.transcribe(batches, adapters=True, num_beams=self.num_beams)
        )
        self.decoded = {"zero_shot": zero_shot, "adapted": adapted}
        for key, value in self.test_metrics().items():
            self.log(f"test/{key}", value)

    def adapters_are_identity(self) -> bool:
        """Whether the bank is plain LoRA with every B factor zero (its output is the
        foundation's exactly)."""
        config = self.bank_adapter_config
        if not isinstance(config, LoraConfig) or config.use_dora:
            return False
        factors = [p for n, p in self.model.named_parameters() if n.endswith("lora_B")]
        return bool(factors) and all(not p.any() for p in factors)

    def test_metrics(self) -> dict[str, float]:
        """Per-language and mean WER/CER of both variants, the relative reductions, and
        whether the head languages' transcripts are unchanged with adapters off."""
        metrics: dict[str, float] = {}
        rates = {variant: d.rates for variant, d in self.decoded.items()}
        for variant, by_lang in rates.items():
            for lang, r in by_lang.items():
                metrics[f"{variant}/wer/{lang}"] = r["wer"]
                metrics[f"{variant}/cer/{lang}"] = r["cer"]
            for group, langs in (("tail", self.languages), ("head", self.head_languages)):
                present = [by_lang[lang] for lang in langs if lang in by_lang]
                for unit in ("wer", "cer"):
                    if present:
                        metrics[f"{variant}/{unit}_{group}"] = sum(r[unit] for r in present) / len(
                            present
                        )
        for lang in self.languages:
            if lang in rates["zero_shot"]:
                for unit in ("wer", "cer"):
                    metrics[f"{unit}_reduction/{lang}"] = relative_reduction(
                        rates["zero_shot"][lang][unit], rates["adapted"][lang][unit]
                    )
        head = [
            (z, a)
            for lang, z, a in zip(
                self.decoded["zero_shot"].languages,
                self.decoded["zero_shot"].hypotheses,
                self.decoded["adapted"].hypotheses,
                strict=True,
            )
            if lang in self.head_languages
        ]
        if head:
            metrics["head_unchanged"] = float(all(z == a for z, a in head))
        return metrics

    def test_report(self) -> TestReport | None:
        report = super().test_report()
        if report is None or not self.decoded:
            return report
        from ..report import dev_curve_figure
        from .report import whisper_sections

        report.title = "Whisper + per-language LoRA: test"
        sections = whisper_sections(self)
        figure = dev_curve_figure(self)
        if figure is not None:
            sections["Dev CER over steps"] = "![dev_cer](dev_cer.png)"
            report.figures["dev_cer"] = figure
        report.sections = {**sections, **report.sections}
        return report

    # ------------------------------------------------------------------ optimisation
