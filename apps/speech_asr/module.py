"""Per-language adapters on a frozen streaming foundation (LDA), and its baselines.

``adapter_routing: per_language`` (the default) puts one adapter per tail language in a
:class:`core.adapters.AdapterBank`; every training batch mixes languages and each sample
goes through its own language's adapter (head-language samples, and the frozen-foundation
baseline, use none: id -1). ``shared`` trains one adapter for all tail languages (the
ablation); ``model.adapter: null`` fine-tunes the whole foundation (the baseline).

Validation scores every tail language's dev CER; each language's adapter is snapshotted at
its own best step (the "asynchronous peaks") and the test reports the **assembled** bank
beside the last step's. Test decoding streams: one batch of mixed-language streams, a
state per stream, chunk by chunk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from core.adapters import AdapterBank, AdapterConfig, adapter_layers
from core.training.module import coerce_adapter_config, default_loss
from core.training.report import TestReport

from .assembly import AssembledAdapterExport
from .evaluation import Evaluation, evaluate, summarize
from .features import spec_augment
from .foundation import (
    PretrainConfig,
    build_foundation,
    embedded_foundation,
    load_foundation,
)
from .model import FoundationConfig
from .module_base import SpeechModuleBase
from .report import speech_report
from .routing import bank_names, check_routing


class SpeechAdapterModule(SpeechModuleBase):
    """Tail-language ASR on a frozen streaming foundation.

    Args:
        foundation: The network (Emformer CTC) of the embedded foundation.
        pretraining: How the embedded foundation is pre-trained on the head languages
            (cached by this recipe: only the first run trains it).
        pretrained: A foundation file (``apps.speech_asr.foundation.save_foundation``)
            instead of the embedded one; ``foundation`` and ``pretraining`` are then unused.
        languages: The tail languages, one adapter each (set by ``data.languages``).
        head_languages: The foundation's languages, tested for forgetting (set by
            ``data.head_languages``).
        split_seed: The embedded corpus seed (set by ``data.split_seed``).
        adapter: The adapter of each tail language (bottleneck after each Emformer FFN and
            after the output layer by default); ``null`` fine-tunes the whole model.
        adapter_routing: ``per_language`` (one adapter per tail language, routed per
            sample) or ``shared`` (one adapter for every tail language).
        spec_augment: Mask frequency bands and time spans of training batches.
        warmup_steps: Linear LR warm-up, then cosine decay to 10% over ``max_steps``.
        assemble_best: Keep each language's adapter from its own best dev-CER step and test
            that assembled bank beside the last step.
        examples_per_language: Example transcripts per language in ``report.md``.
        **kwargs: The other ``FineTuneModule`` options (``optimizer``, ``lr_scheduler``,
            ``regularizers``, ``monitor``, ...), passed through unchanged.
    """

    def __init__(
        self,
        foundation: FoundationConfig | None = None,
        pretraining: PretrainConfig | None = None,
        pretrained: str | None = None,
        languages: list[str] | None = None,
        head_languages: list[str] | None = None,
        split_seed: int = 0,
        adapter: AdapterConfig | None = None,
        adapter_routing: str = "per_language",
        spec_augment: bool = True,
        warmup_steps: int = 50,
        assemble_best: bool = True,
        examples_per_language: int = 3,
        **kwargs: Any,
    ) -> None:
        check_routing(adapter_routing)
        if isinstance(foundation, dict):  # from a checkpoint's hyperparameters
            foundation = FoundationConfig(**foundation)
        if isinstance(pretraining, dict):
            pretraining = PretrainConfig(**pretraining)
        foundation = foundation or FoundationConfig()
        pretraining = pretraining or PretrainConfig()
        saved = (
            load_foundation(pretrained)
            if pretrained
            else embedded_foundation(foundation, pretraining, split_seed)
        )
        model, vocabulary = build_foundation(saved)
        adapter = coerce_adapter_config(adapter)
        super().__init__(model=model, adapter=None, loss=default_loss, **kwargs)
        self.hparams["foundation"] = dataclasses.asdict(foundation)
        self.hparams["pretraining"] = dataclasses.asdict(pretraining)
        self.vocabulary = vocabulary
        self.foundation_config = dict(saved["config"])  # as trained (vocab_size filled in)
        self.foundation_state = saved["state_dict"]
        self.foundation_history = saved.get("history", [])
        self.languages = list(languages or ["lt", "lv", "sl", "is"])
        self.head_languages = list(head_languages or [])
        self.routing = adapter_routing
        self.spec_augment = spec_augment
        self.warmup_steps = warmup_steps
        self.assemble_best = assemble_best
        self.examples_per_language = examples_per_language
        self.bank_adapter_config = adapter
        names = bank_names(self.languages, adapter_routing)
        # The bank injects into self.model in place; it stays out of the module tree
        # (self.__dict__) so its parameters are saved once, under model.*.
        self.__dict__["adapter_bank"] = (
            AdapterBank(self.model, adapter, names=names) if adapter is not None else None
        )
        self.dev_history: list[dict[str, Any]] = []  # {"step", "cer": {lang: cer}}
        self.best_adapters: dict[str, dict[str, Any]] = {}  # lang -> step, cer, tensors
        self.keep_eval_batches()
        self.evaluation: Evaluation | None = None

    # ------------------------------------------------------------------ steps
    def forward(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        return self.model(features, lengths)

    def shared_step(self, batch: dict[str, Any], stage: str) -> dict[str, Any]:
        features = batch["features"]
        if stage == "train" and self.spec_augment:
            features = spec_augment(features, batch["feature_lengths"])
        with self.route(batch["languages"]):
            loss = self.model.loss(
                features, batch["feature_lengths"], batch["targets"], batch["target_lengths"]
            )
        return {"loss": loss, "batch_size": features.shape[0]}

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_end(self) -> None:
        """Each tail language's dev CER; snapshot the adapters of the languages that
        reached their best so far (not during the sanity check)."""
        batches = self._eval_batches["val"]
        if not batches:
            return
        result = evaluate(self, batches, streaming=False)
        rates = {lang: r["cer"] for lang, r in result.rates.items()}
        for lang, cer in rates.items():
            self.log(f"val/cer/{lang}", cer)
        tail = [rates[lang] for lang in self.languages if lang in rates]
        if tail:
            self.log("val/cer_tail", sum(tail) / len(tail), prog_bar=True)
        if self.trainer.sanity_checking:
            return
        self.dev_history.append({"step": int(self.global_step), "cer": rates})
        if self.adapter_bank is not None and self.routing == "per_language":
            for lang in self.languages:
                best = self.best_adapters.get(lang)
                if lang in rates and (best is None or rates[lang] < best["cer"]):
                    self.best_adapters[lang] = {
                        "step": int(self.global_step),
                        "cer": rates[lang],
                        "tensors": self.adapter_tensors(lang),
                    }

    def adapter_views(self, lang: str) -> dict[str, Tensor]:
        """Language ``lang``'s adapter parameters (views into the model, by name)."""
        bank = self.adapter_bank
        assert bank is not None
        if bank.stacked:  # LoRA stacks: the bank slices out each adapter
            return bank.adapter_tensors(lang)
        return {
            f"{layer_name}.{local}": param
            for layer_name, layer in adapter_layers(self.model)
            if lang in layer.adapters
            for local, param in layer.adapters[lang].named_parameters()
        }

    def adapter_tensors(self, lang: str) -> dict[str, Tensor]:
        """Copies of language ``lang``'s adapter parameters."""
        return {k: v.detach().clone() for k, v in self.adapter_views(lang).items()}

    @contextmanager
    def assembled(self) -> Iterator[dict[str, int]]:
        """Inside the block the bank holds each language's adapter from its best dev step;
        yields ``{lang: step}``. The last step's adapters are put back afterwards."""
        current = {lang: self.adapter_tensors(lang) for lang in self.best_adapters}
        try:
            for lang, best in self.best_adapters.items():
                self._load_adapter(lang, best["tensors"])
            yield {lang: best["step"] for lang, best in self.best_adapters.items()}
        finally:
            for lang, tensors in current.items():
                self._load_adapter(lang, tensors)

    def _load_adapter(self, lang: str, tensors: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for key, view in self.adapter_views(lang).items():
                view.copy_(tensors[key])

    # ------------------------------------------------------------------ test
    def on_test_epoch_end(self) -> None:
        """Score the last step, the assembled bank and the frozen foundation, streaming."""
        batches = self._eval_batches["test"]
        if not batches:
            return
        result = summarize(self, batches)
        self.evaluation = result
        for key, value in result.metrics.items():
            self.log(f"test/{key}", value)

    def test_report(self) -> TestReport | None:
        report = super().test_report()
        if self.evaluation is None or report is None:
            return report
        return speech_report(self, report, self.evaluation)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["speech_asr"] = {
            "dev_history": self.dev_history,
            "best_adapters": self.best_adapters,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("speech_asr", {})
        self.dev_history = list(state.get("dev_history", []))
        self.best_adapters = dict(state.get("best_adapters", {}))

    def configure_callbacks(self) -> list[pl.Callback]:
        """Write the best-step assembled bank after ``fit`` (``adapter_assembled/``)."""
        return [AssembledAdapterExport()] if self.assemble_best else []
