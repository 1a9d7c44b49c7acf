"""``report.md`` of a speech run: the per-language table, the asynchronous peaks, examples."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from core.training.report import TestReport

from .evaluation import Evaluation

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .module import SpeechAdapterModule


def fmt(value: float | None, digits: int = 3) -> str:
    """A rate with ``digits`` decimals, or a dash where there is none (None or NaN)."""
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def language_table(module: SpeechAdapterModule, evaluation: Evaluation) -> str:
    """One row per language: role, test utterances, CER/WER of the foundation, the last
    step and the assembled bank, and the relative CER reduction against the foundation."""
    rates = {v: d.rates for v, d in evaluation.decoded.items()}
    assembled = "assembled" in rates
    header = "| language | role | utterances | foundation CER | CER | WER |"
    rule = "|---|---|---|---|---|---|"
    if assembled:
        header += " assembled CER | best step |"
        rule += "---|---|"
    header += " CER reduction |"
    rule += "---|"
    rows = [header, rule]
    for lang in [*module.languages, *module.head_languages]:
        if lang not in rates["last"]:
            continue
        base, last = rates["foundation"][lang], rates["last"][lang]
        role = "tail" if lang in module.languages else "head"
        row = (
            f"| {lang} | {role} | {last['utterances']} | {fmt(base['cer'])} | "
            f"{fmt(last['cer'])} | {fmt(last['wer'])} |"
        )
        if assembled:
            best = rates["assembled"].get(lang)
            step = evaluation.best_steps.get(lang)
            row += f" {fmt(best['cer'] if best else None)} | {step if step is not None else '–'} |"
        reduction = evaluation.metrics.get(f"cer_reduction/{lang}")
        row += f" {fmt(reduction * 100 if reduction is not None else None, 1)}% |"
        rows.append(row.replace("–%", "–"))
    return "\n".join(rows)


def summary_text(module: SpeechAdapterModule, evaluation: Evaluation) -> str:
    """The headline numbers in sentences."""
    m = evaluation.metrics
    kind = "full fine-tuning (no adapter)"
    if module.adapter_bank is not None:
        method = type(module.bank_adapter_config).__name__
        kind = f"{module.routing.replace('_', '-')} adapters ({method})"
    lines = [
        f"Method: {kind}. Decoding: streaming, one batch of mixed-language streams, "
        f"algorithmic latency {fmt(m.get('latency_ms'), 0)} ms (segment + look-ahead).",
        f"Tail languages: mean CER {fmt(m.get('cer_tail'))} against the frozen foundation's "
        f"{fmt(m.get('foundation/cer_tail'))} (mean relative reduction "
        f"{fmt(100 * m.get('cer_reduction_tail', math.nan), 1)}%).",
    ]
    if "assembled/cer_tail" in m:
        lines.append(
            f"Best-checkpoint assembly (each language's adapter from its own best dev step): "
            f"mean tail CER {fmt(m['assembled/cer_tail'])} against {fmt(m['cer_tail'])} at "
            "the last step."
        )
    if "forgetting_head" in m:
        lines.append(
            f"Head languages: CER {fmt(m.get('cer_head'))} against the foundation's "
            f"{fmt(m.get('foundation/cer_head'))}; forgetting (core.continual) "
            f"{fmt(m['forgetting_head'], 4)}."
        )
    share = m.get("parameters/adapter_share")
    if share is not None:
        lines.append(
            f"Parameters: {int(m['parameters/per_adapter']):,} per adapter, "
            f"{100 * share:.2f}% of the {int(m['parameters/foundation']):,}-parameter foundation."
        )
    lines.append(
        f"Streaming output equals full-utterance decoding on "
        f"{100 * evaluation.streaming_agreement:.1f}% of the test utterances."
    )
    return "\n\n".join(lines)


def examples_table(module: SpeechAdapterModule, evaluation: Evaluation) -> str:
    """A few transcripts per language: reference, foundation, the tuned model."""
    last, base = evaluation.decoded["last"], evaluation.decoded["foundation"]
    rows = ["| language | reference | foundation | tuned |", "|---|---|---|---|"]
    shown: dict[str, int] = {}
    for i, lang in enumerate(last.languages):
        if shown.get(lang, 0) >= module.examples_per_language:
            continue
        shown[lang] = shown.get(lang, 0) + 1
        rows.append(
            f"| {lang} | {last.references[i]} | {base.hypotheses[i]} | {last.hypotheses[i]} |"
        )
    return "\n".join(rows)


def dev_curve_figure(module: SpeechAdapterModule) -> Figure | None:
    """Each tail language's dev CER over steps, its best step marked (the asynchronous
    peaks that best-checkpoint assembly exploits)."""
    history = module.dev_history
    if len(history) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4))
    for lang in module.languages:
        points = [(h["step"], h["cer"][lang]) for h in history if lang in h["cer"]]
        if not points:
            continue
        steps, cers = zip(*points, strict=True)
        (line,) = axis.plot(steps, cers, marker=".", label=lang)
        best = min(points, key=lambda p: p[1])
        axis.scatter([best[0]], [best[1]], s=80, facecolors="none", edgecolors=line.get_color())
    axis.set_xlabel("training step")
    axis.set_ylabel("dev CER")
    axis.set_title("Dev CER per tail language (circle: its best step)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    return figure


def speech_report(
    module: SpeechAdapterModule, report: TestReport, evaluation: Evaluation
) -> TestReport:
    """Add the speech sections and the dev-CER figure to the base metrics report."""
    report.title = "Streaming tail-language ASR: test"
    sections = {
        "Summary": summary_text(module, evaluation),
        "Per language": language_table(module, evaluation),
        "Example transcripts": examples_table(module, evaluation),
    }
    figure = dev_curve_figure(module)
    if figure is not None:
        sections["Dev CER over steps"] = "![dev_cer](dev_cer.png)"
        report.figures["dev_cer"] = figure
    report.sections = {**sections, **report.sections}
    return report
