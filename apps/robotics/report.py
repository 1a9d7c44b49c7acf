"""``report.md`` of a robotics evaluation: success tables with intervals, speed, acceptance, GIFs.

Built on the core's report (:class:`core.training.report.TestReport`): :func:`add_evaluation`
adds the robotics sections to a ``TestReport`` (what a module's ``test_report()`` hook returns
for the core's ``ReportWriter``), and :func:`write_report` writes one on its own for the
closed-loop evaluation that runs after training (``python -m apps.robotics.train``): the GIFs,
the figures (through the core's ``write_figure``) and ``report.md``, each atomically.

Sections: a summary; success per instruction condition (rate, Wilson 95% interval, n, mean
steps on successes and overall); success per task family; the baselines (scripted expert,
random, language-blind expert) in the same format; policy speed (one env and a batch);
the acceptance lines of :func:`apps.robotics.evaluation.acceptance`; rollout GIFs; the
success-vs-demos plot (:func:`plot_success_vs_demos`, also used by the benchmark).

The core report module imports Lightning, so it is imported inside the functions that need it:
plotting alone stays light.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apps.robotics.evaluation import (
    EpisodeResult,
    RolloutResult,
    acceptance,
    write_rollout_gifs,
)
from apps.robotics.intervals import SuccessSummary

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from core.training.report import TestReport

__all__ = [
    "DEMOS_FIGURE",
    "REPORT_TITLE",
    "add_evaluation",
    "build_report",
    "plot_success_vs_demos",
    "success_vs_demos_figure",
    "write_report",
]

REPORT_TITLE = "Robotics: closed-loop evaluation on the tabletop suite"
#: File stem of the success-vs-demos figure (``success_vs_demos.png``).
DEMOS_FIGURE = "success_vs_demos"

#: ``(demos, summary)`` pairs: one series; or ``{label: pairs}``: one series per label.
DemoPoints = (
    Sequence[tuple[int, SuccessSummary]] | Mapping[str, Sequence[tuple[int, SuccessSummary]]]
)

_BASELINE_LABELS = {
    "expert": "scripted expert (privileged state)",
    "random": "random actions",
    "language_blind": "language-blind expert (random task of the family)",
}


# --------------------------------------------------------------------------- formatting
def _num(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def _summary_of(entry: Any) -> SuccessSummary:
    return entry if isinstance(entry, SuccessSummary) else entry["summary"]


def _cell(s: SuccessSummary) -> str:
    """``0.80 (8/10; 0.49–0.94)``: rate, count, interval, for the per-family table."""
    return f"{s.rate:.2f} ({s.successes}/{s.trials}; {s.low:.2f}–{s.high:.2f})"


def summary_table(entries: Mapping[str, Any], first_column: str = "condition") -> str:
    """One row per entry: success, interval, successes / n, mean steps (successes, all)."""
    head = f"| {first_column} | success | 95% interval | successes / n | mean steps (successes) "
    head += "| mean steps (all) | wall s |"
    rows = [head, "|---|---|---|---|---|---|---|"]
    for name, entry in entries.items():
        s = _summary_of(entry)
        result = entry.get("rollout") if isinstance(entry, Mapping) else None
        label = _BASELINE_LABELS.get(name, name) if first_column == "baseline" else name
        rows.append(
            f"| {label} | {s.rate:.2f} | {s.low:.2f}–{s.high:.2f} | {s.successes}/{s.trials} | "
            f"{_num(s.mean_success_steps, 1)} | {s.mean_steps:.1f} | "
            f"{_num(result.wall_s, 1) if isinstance(result, RolloutResult) else '–'} |"
        )
    return "\n".join(rows)


def family_table(columns: Mapping[str, Any]) -> str:
    """Success per task family (rows) for each condition or baseline (columns)."""
    per_family = {
        name: entry.get("per_family", {}) if isinstance(entry, Mapping) else {}
        for name, entry in columns.items()
    }
    families = list(dict.fromkeys(f for table in per_family.values() for f in table))
    if not families:
        return "(no per-family results)"
    rows = ["| family | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for family in families:
        cells = [_cell(per_family[n][family]) if family in per_family[n] else "–" for n in columns]
        rows.append(f"| {family} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def speed_table(policy_hz: Mapping[str, Mapping[str, Any]]) -> str:
    """Policy speed per setting: envs, predict calls/s, ms per call, observations/s, env steps/s."""
    rows = [
        "| setting | envs | predict_chunk calls/s | ms per call | observations/s | env steps/s |",
        "|---|---|---|---|---|---|",
    ]
    for name, hz in policy_hz.items():
        rows.append(
            f"| {name} | {hz.get('num_envs', '–')} | {_num(hz.get('predict_calls_per_s'), 1)} | "
            f"{_num(hz.get('ms_per_call'), 2)} | {_num(hz.get('observations_per_s'), 1)} | "
            f"{_num(hz.get('env_steps_per_s'), 1)} |"
        )
    return "\n".join(rows)


def _summary_text(results: Mapping[str, Any]) -> str:
    settings = results.get("settings", {})
    lines = []
    if settings:
        seeds = settings.get("seeds", ["?", "?"])
        lines.append(
            f"Policy `{settings.get('policy', '?')}` (chunk size {settings.get('chunk_size', '?')}"
            f", executor `{settings.get('executor', '?')}`), {settings.get('num_episodes', '?')} "
            f"held-out episodes per condition (seeds {seeds[0]}–{seeds[-1]}; demonstrations use "
            f"small seeds), families {', '.join(settings.get('families', []))}, "
            f"{settings.get('num_envs', '?')} envs in lockstep. Intervals are Wilson "
            f"{settings.get('confidence', 0.95):.0%} score intervals."
        )
    conditions = results.get("conditions", {})
    if "trained" in conditions:
        lines.append(f"Trained instructions: {_summary_of(conditions['trained'])}.")
    return "\n\n".join(lines) or "(no settings recorded)"


def _gif_lines(gifs: Sequence[tuple[str, EpisodeResult, str]]) -> str:
    lines = []
    for name, episode, condition in gifs:
        outcome = f"success in {episode.steps} steps" if episode.success else "failure"
        text = f'"{episode.instruction}"' if episode.instruction else "(blank instruction)"
        lines.append(
            f"- {condition}, seed {episode.seed}, `{episode.task}`: {text}, {outcome}\n\n"
            f"  ![{condition} seed {episode.seed}]({name})"
        )
    return "\n\n".join(lines)


# --------------------------------------------------------------------------- figure
def _series(points: DemoPoints) -> dict[str, list[tuple[int, SuccessSummary]]]:
    if isinstance(points, Mapping):
        series = {str(k): list(v) for k, v in points.items()}
    else:
        series = {"policy": list(points)}
    for label, pairs in series.items():
        for pair in pairs:
            if len(pair) != 2 or not isinstance(pair[1], SuccessSummary):
                raise ValueError(
                    f"success-vs-demos series {label!r}: each point must be (demos, "
                    f"SuccessSummary), got {pair!r}"
                )
    if not any(series.values()):
        raise ValueError("success-vs-demos needs at least one (demos, SuccessSummary) point")
    return series


def success_vs_demos_figure(points: DemoPoints, title: str | None = None) -> Figure:
    """Success rate against the number of demonstrations, Wilson intervals as error bars.

    ``points`` is a list of ``(demos, SuccessSummary)`` (one series) or ``{label: list}``
    (e.g. pretrained vs randomly initialised towers). Repeats at one demo count (seeds) are
    drawn side by side; the line joins the mean rate per demo count.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    series = _series(points)
    figure = Figure(figsize=(6, 4))
    axis = figure.add_subplot()
    all_demos = sorted({int(d) for pairs in series.values() for d, _ in pairs})
    spread = (max(all_demos) - min(all_demos)) * 0.012 if len(all_demos) > 1 else 0.5
    for k, (label, pairs) in enumerate(series.items()):
        if not pairs:
            continue
        offset = (k - (len(series) - 1) / 2) * spread
        by_demos: dict[int, list[SuccessSummary]] = {}
        for demos, summary in pairs:
            by_demos.setdefault(int(demos), []).append(summary)
        xs, ys, lows, highs = [], [], [], []
        for demos, summaries in sorted(by_demos.items()):
            for j, s in enumerate(summaries):
                xs.append(demos + offset + (j - (len(summaries) - 1) / 2) * spread * 0.5)
                ys.append(s.rate)
                lows.append(s.rate - s.low)
                highs.append(s.high - s.rate)
        bars = axis.errorbar(xs, ys, yerr=[lows, highs], fmt="o", capsize=3, label=label)
        means = [(d, sum(s.rate for s in v) / len(v)) for d, v in sorted(by_demos.items())]
        axis.plot(
            [d + offset for d, _ in means],
            [m for _, m in means],
            "-",
            color=bars[0].get_color(),
            alpha=0.6,
        )
    axis.set_xticks(all_demos)
    axis.set_xlabel("demonstrations")
    axis.set_ylabel("success rate (Wilson 95% interval)")
    axis.set_ylim(-0.02, 1.02)
    axis.set_title(title or "Closed-loop success vs number of demonstrations")
    axis.grid(alpha=0.3)
    if len(series) > 1:
        axis.legend()
    figure.tight_layout()
    return figure


def plot_success_vs_demos(points: DemoPoints, path: str | Path, title: str | None = None) -> Path:
    """Write :func:`success_vs_demos_figure` as a PNG at ``path``, atomically."""
    from core.atomic import atomic_write

    figure = success_vs_demos_figure(points, title)

    def write(tmp: Path) -> None:
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")

    return atomic_write(path, write)


# --------------------------------------------------------------------------- report
def add_evaluation(
    report: TestReport,
    results: Mapping[str, Any],
    *,
    gifs: Sequence[tuple[str, EpisodeResult, str]] = (),
    success_vs_demos: DemoPoints | None = None,
) -> TestReport:
    """Add the evaluation sections (and the success-vs-demos figure) to a core ``TestReport``.

    Args:
        report: The report to extend (e.g. ``FineTuneModule.test_report()``'s).
        results: :func:`apps.robotics.evaluation.evaluate`'s output.
        gifs: ``(file name relative to report.md, episode, condition)`` of GIFs already
            written (see :func:`write_report`).
        success_vs_demos: Points for ``success_vs_demos.png`` (see
            :func:`success_vs_demos_figure`); the figure is added to ``report.figures``.
    """
    conditions = results.get("conditions", {})
    baselines = results.get("baselines", {})
    sections = {"Summary": _summary_text(results)}
    if conditions:
        sections["Success by instruction condition"] = (
            summary_table(conditions)
            + "\n\ntrained = training-template wording; paraphrase = held-out wording; "
            'blank = instruction "" (does the policy use language?). Same seeds, tasks and '
            "scenes in every row."
        )
    columns = {**conditions, **baselines}
    if columns:
        sections["Success by task family"] = family_table(columns)
    if baselines:
        sections["Baselines"] = (
            summary_table(baselines, first_column="baseline")
            + "\n\nSame seeds, trained wording (no baseline reads the instruction)."
        )
    if results.get("policy_hz"):
        sections["Policy speed"] = (
            speed_table(results["policy_hz"])
            + "\n\nCalls/s and ms per call time `predict_chunk` alone on a batch of that many "
            "envs; env steps/s is the closed loop (policy, executor and simulator) with the "
            "evaluated executor."
        )
    if conditions:
        sections["Acceptance"] = "\n".join(f"- {line}" for line in acceptance(results))
    if gifs:
        sections["Rollouts"] = _gif_lines(gifs)
    if success_vs_demos is not None:
        sections["Success vs demonstrations"] = f"![{DEMOS_FIGURE}]({DEMOS_FIGURE}.png)"
        report.figures[DEMOS_FIGURE] = success_vs_demos_figure(success_vs_demos)
    report.sections = {**sections, **report.sections}
    return report


def build_report(
    results: Mapping[str, Any],
    *,
    extra: Mapping[str, str] | None = None,
    gifs: Sequence[tuple[str, EpisodeResult, str]] = (),
    success_vs_demos: DemoPoints | None = None,
    title: str = REPORT_TITLE,
) -> TestReport:
    """A new ``TestReport`` with :func:`add_evaluation`'s sections, then ``extra`` sections."""
    from core.training.report import TestReport

    report = add_evaluation(
        TestReport(title=title), results, gifs=gifs, success_vs_demos=success_vs_demos
    )
    for heading, body in (extra or {}).items():
        report.sections[heading] = body
    return report


def write_report(
    results: Mapping[str, Any],
    out_dir: str | Path,
    *,
    extra: Mapping[str, str] | None = None,
    success_vs_demos: DemoPoints | None = None,
    gif_episodes: int = 3,
    fps: int = 10,
    title: str = REPORT_TITLE,
) -> Path:
    """Write the GIFs, figures and ``report.md`` of an evaluation into ``out_dir``; return the
    report's path.

    Args:
        results: :func:`apps.robotics.evaluation.evaluate`'s output.
        out_dir: The run directory (created if missing).
        extra: More sections, ``{heading: markdown}``, after the evaluation's (e.g. training
            settings, data, timings).
        success_vs_demos: Points for ``success_vs_demos.png`` (:func:`success_vs_demos_figure`).
        gif_episodes: GIFs per instruction condition, from the episodes ``evaluate`` recorded
            (``record_frames``); 0 writes none.
        fps: GIF frame rate (the env runs at 10 Hz).
        title: The report's heading.
    """
    from core.atomic import atomic_write_text
    from core.training.report import REPORT_NAME, write_figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gifs: list[tuple[str, EpisodeResult, str]] = []
    if gif_episodes > 0:
        for condition, entry in results.get("conditions", {}).items():
            result = entry.get("rollout") if isinstance(entry, Mapping) else None
            if isinstance(result, RolloutResult):
                for path, episode in write_rollout_gifs(result, out_dir, fps, gif_episodes):
                    gifs.append((path.name, episode, condition))
    report = build_report(
        results, extra=extra, gifs=gifs, success_vs_demos=success_vs_demos, title=title
    )
    for name, figure in report.figures.items():
        write_figure(figure, out_dir / f"{name}.png")
    return atomic_write_text(out_dir / REPORT_NAME, report.markdown())
