"""The test-time report: TestReport's markdown, and ReportWriter writing report.md, figures
and the manifest line, atomically and once per run."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from matplotlib.figure import Figure

from core.training import read_manifest
from core.training.report import ReportWriter, TestReport, metrics_table
from tests.core.training.toys import ToyData, ToyModule, quiet_trainer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def line_figure() -> Figure:
    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    return fig


def test_markdown_orders_sections_and_links_unplaced_figures() -> None:
    report = TestReport(
        title="Toy: test",
        sections={"Metrics": "| a | b |", "Curves": "See ![curves](curves.png) here."},
        figures={"curves": line_figure(), "per_class": line_figure()},
    )
    text = report.markdown()
    assert text.startswith("# Toy: test\n\n## Metrics\n\n| a | b |\n\n## Curves\n")
    assert text.index("## Metrics") < text.index("## Curves") < text.index("## Figures")
    assert text.count("(curves.png)") == 1  # placed by its section, not repeated
    assert text.rstrip().endswith("![per_class](per_class.png)")
    assert "## Figures" not in TestReport("t", {"s": "x"}).markdown()


def test_figure_names_must_be_file_names() -> None:
    with pytest.raises(ValueError, match=r"\['../up', 'a b'\] must be plain file names"):
        TestReport("t", figures={"../up": line_figure(), "a b": line_figure(), "ok": None})


def test_metrics_table() -> None:
    table = metrics_table({"test/loss": torch.tensor(0.123456), "test/acc": 1.0, "n": math.nan})
    assert table.splitlines() == [
        "| metric | value |",
        "|---|---|",
        "| n | nan |",
        "| test/acc | 1.0000 |",
        "| test/loss | 0.1235 |",
    ]


class ReportingModule(ToyModule):
    """A ToyModule whose report has a section, a Figure and a PNG-writing function."""

    def test_report(self) -> TestReport | None:
        report = super().test_report()
        assert report is not None
        report.sections["Notes"] = "Three blobs."
        report.figures["curve"] = line_figure()
        report.figures["raw"] = lambda path: Path(path).write_bytes(PNG_MAGIC + b"raw")
        return report


def run_test(module: pl.LightningModule, root: Path, **kwargs: Any) -> pl.Trainer:
    trainer = quiet_trainer(default_root_dir=root, callbacks=[ReportWriter()], **kwargs)
    trainer.test(module, datamodule=ToyData())
    return trainer


def test_writer_writes_report_figures_and_manifest(tmp_path, caplog) -> None:
    with caplog.at_level(logging.INFO):
        run_test(ReportingModule(), tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert text.startswith("# ReportingModule: test\n\n## Metrics\n")
    assert "| test/acc |" in text and "| test/loss |" in text
    assert "## Notes\n\nThree blobs." in text
    assert "![curve](curve.png)" in text and "![raw](raw.png)" in text
    assert (tmp_path / "curve.png").read_bytes().startswith(PNG_MAGIC)
    assert (tmp_path / "raw.png").read_bytes() == PNG_MAGIC + b"raw"
    [line] = [r for r in read_manifest(tmp_path) if r["artifact"] == "report"]
    assert line["path"] == str((tmp_path / "report.md").resolve())
    assert line["figures"] == ["curve.png", "raw.png"]
    assert f"report: {(tmp_path / 'report.md').resolve()}" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "curve.png",
        "manifest.jsonl",
        "raw.png",
        "report.md",
    ]  # no temporary files left


def test_the_base_module_reports_its_test_metrics(tmp_path) -> None:
    run_test(ToyModule(), tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert text.startswith("# ToyModule: test\n\n## Metrics\n\n| metric | value |\n")
    assert "## Figures" not in text


class NoReport(ToyModule):
    def test_report(self) -> None:
        return None


class PlainModule(pl.LightningModule):
    """A LightningModule without the hook."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(6, 3)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.log("test/x", self.layer(batch[0]).sum())


@pytest.mark.parametrize("module", [NoReport, PlainModule], ids=["returns-none", "no-hook"])
def test_no_report_means_no_file(tmp_path, module) -> None:
    run_test(module(), tmp_path)
    assert not (tmp_path / "report.md").exists()
    assert not any(r["artifact"] == "report" for r in read_manifest(tmp_path))


class WrongType(ToyModule):
    def test_report(self) -> Any:
        return "# a string"


def test_a_hook_returning_another_type_is_named(tmp_path) -> None:
    with pytest.raises(TypeError, match=r"WrongType\.test_report\(\) returned a str"):
        run_test(WrongType(), tmp_path)


class WritesItsOwn(ReportingModule):
    """An app that still writes report.md itself during the test epoch."""

    def on_test_epoch_end(self) -> None:
        (Path(self.trainer.default_root_dir) / "report.md").write_text("# the app's own\n")


def test_a_report_written_by_another_writer_is_kept(tmp_path) -> None:
    (tmp_path / "report.md").write_text("# an earlier run's\n")
    with pytest.warns(UserWarning, match="written by another writer during this test"):
        run_test(WritesItsOwn(), tmp_path)
    assert (tmp_path / "report.md").read_text() == "# the app's own\n"
    assert not (tmp_path / "curve.png").exists()


class BrokenFigure(ReportingModule):
    def test_report(self) -> TestReport | None:
        report = super().test_report()
        assert report is not None

        def half_written(path: Path) -> None:
            Path(path).write_bytes(PNG_MAGIC[:4])
            raise OSError(28, "No space left on device")

        report.figures["broken"] = half_written
        return report


def test_a_failure_while_writing_leaves_the_previous_report(tmp_path) -> None:
    run_test(ReportingModule(), tmp_path)
    before = (tmp_path / "report.md").read_text()
    with pytest.raises(OSError, match="No space left"):
        run_test(BrokenFigure(), tmp_path)
    assert (tmp_path / "report.md").read_text() == before
    assert not (tmp_path / "broken.png").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
