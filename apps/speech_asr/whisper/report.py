"""``report.md`` sections of a Whisper run: zero-shot against adapted, per language."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..report import fmt

if TYPE_CHECKING:
    from .module import WhisperAdapterModule


def language_table(module: WhisperAdapterModule) -> str:
    """One row per language: role, utterances, zero-shot and adapted WER/CER, reductions."""
    zero, adapted = module.decoded["zero_shot"].rates, module.decoded["adapted"].rates
    rows = [
        "| language | role | utterances | zero-shot WER | adapted WER | zero-shot CER | "
        "adapted CER | CER reduction |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for lang in [*module.languages, *module.head_languages]:
        if lang not in zero:
            continue
        z, a = zero[lang], adapted[lang]
        role = "tail (own LoRA)" if lang in module.languages else "head (adapters off)"
        reduction = (z["cer"] - a["cer"]) / z["cer"] if z["cer"] > 0 else math.nan
        rows.append(
            f"| {lang} | {role} | {a['utterances']} | {fmt(z['wer'])} | {fmt(a['wer'])} | "
            f"{fmt(z['cer'])} | {fmt(a['cer'])} | {fmt(100 * reduction, 1)}% |".replace("–%", "–")
        )
    return "\n".join(rows)


def examples_table(module: WhisperAdapterModule) -> str:
    """A few transcripts per language: reference, zero-shot, adapted (normalised)."""
    zero, adapted = module.decoded["zero_shot"], module.decoded["adapted"]
    rows = ["| language | reference | zero-shot | adapted |", "|---|---|---|---|"]
    shown: dict[str, int] = {}
    for i, lang in enumerate(adapted.languages):
        if shown.get(lang, 0) >= module.examples_per_language:
            continue
        shown[lang] = shown.get(lang, 0) + 1
        rows.append(
            f"| {lang} | {adapted.references[i]} | {zero.hypotheses[i]} | {adapted.hypotheses[i]} |"
        )
    return "\n".join(rows)


def whisper_sections(module: WhisperAdapterModule) -> dict[str, str]:
    """Summary, per-language table and example transcripts."""
    metrics = module.test_metrics()
    config = module.bank_adapter_config
    lines = [
        f"Foundation: Whisper ({module.model.config.d_model}-wide, "
        f"{module.model.config.encoder_layers}+{module.model.config.decoder_layers} layers), "
        f"frozen; encoder window {module.expected_frames / 100:g} s. Adapters: "
        f"{module.routing.replace('_', '-')} {type(config).__name__} in one AdapterBank. "
        f"Decoding: beam search, {module.num_beams} beams; WER/CER on normalised text.",
        f"Tail languages: mean WER {fmt(metrics.get('adapted/wer_tail'))} adapted against "
        f"{fmt(metrics.get('zero_shot/wer_tail'))} zero-shot; mean CER "
        f"{fmt(metrics.get('adapted/cer_tail'))} against "
        f"{fmt(metrics.get('zero_shot/cer_tail'))}.",
    ]
    if "head_unchanged" in metrics:
        same = "identical to" if metrics["head_unchanged"] == 1.0 else "DIFFERENT from"
        lines.append(
            f"Head languages (no adapter): transcripts {same} zero-shot Whisper's; mean WER "
            f"{fmt(metrics.get('adapted/wer_head'))}."
        )
    return {
        "Summary": "\n\n".join(lines),
        "Per language": language_table(module),
        "Example transcripts": examples_table(module),
    }
