"""The one way a run writes ``report.md`` and its plots at test time.

A module describes its report; the :class:`ReportWriter` callback (which ``run_cli`` always
adds) writes it. The module's optional hook ``test_report(self) -> TestReport | None`` is
called once at the end of ``test`` on global rank zero, after ``on_test_epoch_end``, so it can
use whatever the module gathered during the test epoch (gather across ranks there, not in
the hook). :meth:`core.training.FineTuneModule.test_report` returns a report of the logged
``test/*`` metrics; an app overrides it to add its sections and figures::

    def test_report(self) -> TestReport:
        report = super().test_report()
        report.sections["Examples"] = "| reference | generated |\\n|---|---|\\n..."
        report.figures["per_label"] = figure  # a matplotlib Figure, saved as per_label.png
        return report

The writer saves every figure as ``<run_dir>/<name>.png`` and then ``report.md``, each
atomically (``core.atomic``), appends one ``report`` line to ``manifest.jsonl`` and prints
the report's path. A figure is linked under a "Figures" heading unless a section already
links its file (``![curves](curves.png)`` places it inside that section).
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from core.atomic import atomic_write, atomic_write_text

from .callbacks import RunFileCallback, append_manifest

__all__ = ["REPORT_NAME", "ReportWriter", "TestReport", "metrics_table"]

REPORT_NAME = "report.md"
_FIGURE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class TestReport:
    """What ``report.md`` says: a title, ordered sections and figures.

    Args:
        title: The report's ``#`` heading.
        sections: ``{heading: markdown}`` in the order they appear (``##`` headings).
        figures: ``{name: figure}``, saved as ``<run_dir>/<name>.png``: a matplotlib
            ``Figure`` (closed after saving) or a function ``write(path)`` that writes a PNG.
        figures_heading: Heading of the section that links the figures no section links.
    """

    __test__ = False  # not a pytest test class

    title: str
    sections: dict[str, str] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    figures_heading: str = "Figures"

    def __post_init__(self) -> None:
        bad = [name for name in self.figures if not _FIGURE_NAME.match(name)]
        if bad:
            raise ValueError(
                f"TestReport figure names {bad} must be plain file names (letters, digits, "
                "'_', '-', '.'), e.g. 'per_label'."
            )

    def markdown(self) -> str:
        """The text of ``report.md``: title, sections, then links to unplaced figures."""
        lines = [f"# {self.title}", ""]
        for heading, body in self.sections.items():
            lines += [f"## {heading}", "", body.rstrip(), ""]
        text = "\n".join(lines)
        unplaced = [n for n in self.figures if f"({n}.png)" not in text]
        if unplaced:
            lines += [f"## {self.figures_heading}", ""]
            lines += [f"![{name}]({name}.png)" for name in unplaced]
            lines.append("")
        return "\n".join(lines)


def metrics_table(metrics: Mapping[str, Any], digits: int = 4) -> str:
    """A two-column markdown table of scalar metrics (sorted by name)."""
    rows = ["| metric | value |", "|---|---|"]
    for name in sorted(metrics):
        value = metrics[name]
        if hasattr(value, "item"):
            value = value.item()
        if isinstance(value, float):
            value = f"{value:.{digits}f}" if math.isfinite(value) else str(value)
        rows.append(f"| {name} | {value} |")
    return "\n".join(rows)


def write_figure(figure: Any, path: Path) -> Path:
    """Save one figure as a PNG at ``path`` atomically; close a matplotlib figure after."""
    if callable(getattr(figure, "savefig", None)):

        def write(tmp: Path) -> None:
            figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")

        atomic_write(path, write)
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close(figure)
        return path
    if callable(figure):
        return atomic_write(path, figure)
    raise TypeError(
        f"figure for {path.name!r} is a {type(figure).__name__}; give a matplotlib Figure or "
        "a function that writes a PNG to the path it is given."
    )


class ReportWriter(RunFileCallback):
    """At the end of ``test``, write the module's :class:`TestReport` into the run directory.

    The module's ``test_report()`` is asked on global rank zero only; a module without the
    hook, or one returning ``None``, gets no report. If something else wrote ``report.md``
    during this test (an app that still writes its own), that file is kept and a warning
    says so: there is one writer per run.
    """

    def __init__(self, filename: str = REPORT_NAME) -> None:
        super().__init__(filename)
        self._before: tuple[int, ...] | None = None

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Note the report file's state, to see whether another writer changes it."""
        path = self.path
        if trainer.is_global_zero and path is not None:
            self._before = _file_state(path)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Ask the module for its report and write it (global rank zero)."""
        self.write_on_rank_zero(trainer, "on_test_end", lambda: self.write(trainer, pl_module))

    def write(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Path | None:
        """Write figures and ``report.md``; return its path (``None`` when there is none)."""
        path = self.path
        assert path is not None, "setup() finds the run directory before test ends"
        hook: Callable[[], TestReport | None] | None = getattr(pl_module, "test_report", None)
        if not callable(hook):
            return None
        now = _file_state(path)
        if now is not None and now != self._before:
            rank_zero_warn(
                f"ReportWriter: {path} was written by another writer during this test; it is "
                f"kept and {type(pl_module).__name__}.test_report() is not written. Move that "
                "writer into test_report()."
            )
            return None
        report = hook()
        if report is None:
            return None
        if not isinstance(report, TestReport):
            raise TypeError(
                f"{type(pl_module).__name__}.test_report() returned a "
                f"{type(report).__name__}; return a core.training.report.TestReport or None."
            )
        run_dir = path.parent
        figures = [
            write_figure(fig, run_dir / f"{name}.png") for name, fig in report.figures.items()
        ]
        atomic_write_text(path, report.markdown())
        append_manifest(
            run_dir,
            "report",
            path,
            rank=trainer.global_rank,
            figures=[f.name for f in figures],
            ckpt_path=str(trainer.ckpt_path) if trainer.ckpt_path else None,
        )
        self._before = _file_state(path)
        rank_zero_info(f"report: {path.resolve()}")
        return path


def _file_state(path: Path) -> tuple[int, ...] | None:
    """What changes when a file is rewritten (in place or by rename); ``None`` if absent."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
