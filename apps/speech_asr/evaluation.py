"""Test-time scoring of a speech module: the last step, the assembled bank and the frozen
foundation, each decoded by streaming a batch of mixed-language streams.

Everything the report and ``metrics.json`` show is computed here from the same decoded
transcripts: WER/CER per language (``metrics``, equal to jiwer's), averages over tail and
head languages, the relative reduction against the foundation, the head languages'
forgetting through ``core.continual``'s accuracy-matrix metrics (accuracy = 1 - CER), the
adapter's share of the model, and how often streaming equals full-utterance decoding.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from core.continual import backward_transfer, forgetting

from .metrics import per_language_rates, relative_reduction
from .model import FoundationConfig, SpeechModel
from .streaming import algorithmic_latency_ms, greedy_decode, stream_decode

if TYPE_CHECKING:
    from .module import SpeechAdapterModule

#: The decoded variants, in report order.
VARIANTS = ("foundation", "last", "assembled")


@dataclass
class Decoded:
    """One pass over the evaluation batches: per utterance its language, reference and
    hypothesis, and the rates per language."""

    languages: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    hypotheses: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)

    @property
    def rates(self) -> dict[str, dict[str, float]]:
        """``{lang: {"wer", "cer", "utterances"}}``."""
        return per_language_rates(self.languages, self.references, self.hypotheses)


@dataclass
class Evaluation:
    """What a test pass measured: decoded variants, flat metrics and the numbers behind
    the report's tables."""

    decoded: dict[str, Decoded]
    metrics: dict[str, float]
    best_steps: dict[str, int] = field(default_factory=dict)
    streaming_agreement: float = math.nan

    @property
    def rates(self) -> dict[str, dict[str, float]]:
        """The last step's rates (the model as trained)."""
        return self.decoded["last"].rates


@torch.no_grad()
def evaluate(
    module: SpeechAdapterModule,
    batches: Iterable[dict[str, Any]],
    streaming: bool = True,
    foundation_only: bool = False,
) -> Decoded:
    """Decode ``batches`` with the module's model, each sample on its language's adapter
    (``foundation_only``: the frozen foundation); ``streaming`` decodes chunk by chunk."""
    was_training = module.training
    module.eval()
    decoded = Decoded()
    with _foundation(module) if foundation_only else nullcontext(module.model) as model:
        for batch in batches:
            decode = stream_decode if streaming else greedy_decode
            routing = module.route(batch["languages"], foundation_only=foundation_only)
            with routing if model is module.model else nullcontext():
                ids = decode(model, batch["features"], batch["feature_lengths"])
            decoded.languages += batch["languages"]
            decoded.references += batch["texts"]
            decoded.hypotheses += [module.vocabulary.decode(h) for h in ids]
            decoded.ids += batch["ids"]
    module.train(was_training)
    return decoded


@contextmanager
def _foundation(module: SpeechAdapterModule) -> Iterator[torch.nn.Module]:
    """The frozen foundation: the module's own model with every sample routed to no
    adapter (a bank), or a fresh copy of the pre-trained weights (full fine-tuning)."""
    if module.adapter_bank is not None:
        yield module.model
        return
    model = SpeechModel(FoundationConfig(**module.foundation_config))
    model.load_state_dict(module.foundation_state)
    yield model.eval()


def summarize(module: SpeechAdapterModule, batches: list[dict[str, Any]]) -> Evaluation:
    """Decode the test batches every way the report compares and compute the metrics."""
    decoded = {
        "foundation": evaluate(module, batches, foundation_only=True),
        "last": evaluate(module, batches),
    }
    best_steps: dict[str, int] = {}
    if module.best_adapters:
        with module.assembled() as best_steps:
            decoded["assembled"] = evaluate(module, batches)
    full = evaluate(module, batches, streaming=False)
    agreement = sum(
        s == f for s, f in zip(decoded["last"].hypotheses, full.hypotheses, strict=True)
    ) / max(1, len(full.hypotheses))
    metrics = flat_metrics(decoded, module.languages, module.head_languages)
    metrics["streaming_equals_full"] = agreement
    metrics.update(parameter_metrics(module))
    metrics["latency_ms"] = algorithmic_latency_ms(module.model.config)
    return Evaluation(decoded, metrics, best_steps, agreement)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def flat_metrics(decoded: dict[str, Decoded], tail: list[str], head: list[str]) -> dict[str, float]:
    """The logged test metrics (``test/`` is prefixed by the caller).

    ``cer/<lang>``, ``wer/<lang>`` for the last step; ``<variant>/cer/<lang>`` for the
    foundation and the assembled bank; ``cer_tail``, ``wer_tail``, ``cer_head`` averages
    (and per variant); ``cer_reduction_tail`` (mean relative CER reduction of the tail
    languages against the foundation); ``forgetting_head`` and ``backward_transfer``.
    """
    out: dict[str, float] = {}
    averages: dict[str, dict[str, float]] = {}
    for variant, result in decoded.items():
        rates = result.rates
        prefix = "" if variant == "last" else f"{variant}/"
        for lang, r in rates.items():
            out[f"{prefix}cer/{lang}"] = r["cer"]
            out[f"{prefix}wer/{lang}"] = r["wer"]
        averages[variant] = {
            "cer_tail": _mean([rates[c]["cer"] for c in tail if c in rates]),
            "wer_tail": _mean([rates[c]["wer"] for c in tail if c in rates]),
            "cer_head": _mean([rates[c]["cer"] for c in head if c in rates]),
            "wer_head": _mean([rates[c]["wer"] for c in head if c in rates]),
        }
        out.update({f"{prefix}{k}": v for k, v in averages[variant].items() if not math.isnan(v)})
    base, last = decoded["foundation"].rates, decoded["last"].rates
    reductions = [
        relative_reduction(base[c]["cer"], last[c]["cer"]) for c in tail if c in base and c in last
    ]
    for c, value in zip([c for c in tail if c in base and c in last], reductions, strict=True):
        out[f"cer_reduction/{c}"] = value
    if reductions:
        out["cer_reduction_tail"] = _mean(reductions)
    if head and not math.isnan(averages["last"]["cer_head"]):
        accuracy = [
            [1 - averages[v]["cer_head"], 1 - averages[v]["cer_tail"]]
            for v in ("foundation", "last")
        ]
        out["forgetting_head"] = float(forgetting(accuracy))
        out["backward_transfer"] = float(backward_transfer(accuracy))
    return out


def parameter_metrics(module: SpeechAdapterModule) -> dict[str, float]:
    """The model's size, what trains, and one language's adapter share of the model."""
    total = sum(p.numel() for n, p in module.model.named_parameters() if ".adapters." not in n)
    trainable = sum(p.numel() for p in module.model.parameters() if p.requires_grad)
    out = {"parameters/foundation": float(total), "parameters/trainable": float(trainable)}
    if module.adapter_bank is not None:
        name = module.adapter_bank.names[0]
        per_language = sum(v.numel() for v in module.adapter_views(name).values())
        out["parameters/per_adapter"] = float(per_language)
        out["parameters/adapter_share"] = per_language / total
    return out
