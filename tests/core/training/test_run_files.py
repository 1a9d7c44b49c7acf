"""Lightning's run files written atomically: config.yaml, hparams.yaml, metrics.csv.

Each test makes a write fail after the new bytes were written but before they replaced the
file (``fsync`` raising EIO, as on a failing disk) and checks that the previous file is
still there, whole, with no temporary file left beside it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from jsonargparse import ArgumentParser
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from core.training.run_files import (
    AtomicCSVLogger,
    AtomicExperimentWriter,
    AtomicSaveConfigCallback,
)
from tests.core.training.toys import ToyModule, quiet_trainer


def eio(fd: int) -> None:
    """``os.fsync`` on a failing disk."""
    raise OSError(errno.EIO, "Input/output error")


@pytest.fixture
def failing_fsync(monkeypatch):
    """Call the returned function to make every later ``os.fsync`` fail with EIO."""
    return lambda: monkeypatch.setattr(os, "fsync", eio)


def hidden_files(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------ config.yaml
def config_callback(value: int, overwrite: bool = True) -> AtomicSaveConfigCallback:
    parser = ArgumentParser()
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--name", type=str, default="run")
    return AtomicSaveConfigCallback(
        parser, parser.parse_args([f"--epochs={value}"]), overwrite=overwrite
    )


def test_config_yaml_is_what_lightning_writes(tmp_path) -> None:
    callback = config_callback(3)
    callback.setup(quiet_trainer(default_root_dir=tmp_path), ToyModule(), "fit")
    expected = callback.parser.dump(callback.config, skip_none=False)
    assert (tmp_path / "config.yaml").read_text() == expected == "epochs: 3\nname: run\n"


def test_config_yaml_failure_keeps_the_previous_file(tmp_path, failing_fsync) -> None:
    trainer = quiet_trainer(default_root_dir=tmp_path)
    config_callback(3).setup(trainer, ToyModule(), "fit")
    failing_fsync()
    with pytest.raises(OSError, match="Input/output error"):
        config_callback(4).setup(trainer, ToyModule(), "fit")
    assert (tmp_path / "config.yaml").read_text() == "epochs: 3\nname: run\n"
    assert hidden_files(tmp_path) == []


def test_config_yaml_is_not_overwritten_unless_asked(tmp_path) -> None:
    (tmp_path / "config.yaml").write_text("previous\n")
    with pytest.raises(RuntimeError, match=r"expected .*config\.yaml to NOT exist"):
        config_callback(3, overwrite=False).setup(
            quiet_trainer(default_root_dir=tmp_path), ToyModule(), "fit"
        )
    assert (tmp_path / "config.yaml").read_text() == "previous\n"


# ------------------------------------------------------------------ metrics.csv
def log_steps(writer: ExperimentWriter) -> None:
    """Two flushes; a metric name appears in the second, so the header changes."""
    writer.log_metrics({"train/loss": 1.5, "epoch": 0}, step=0)
    writer.log_metrics({"train/loss": 1.25, "epoch": 0}, step=1)
    writer.save()
    writer.log_metrics({"val/loss": 1.0, "val/acc": 0.5, "epoch": 0}, step=1)
    writer.log_metrics({"train/loss": 0.75, "epoch": 1}, step=2)
    writer.save()


def test_metrics_csv_is_what_lightning_writes(tmp_path) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    log_steps(AtomicExperimentWriter(str(ours)))
    log_steps(ExperimentWriter(str(theirs)))
    assert (ours / "metrics.csv").read_bytes() == (theirs / "metrics.csv").read_bytes()
    assert (ours / "metrics.csv").read_text().splitlines()[0] == (
        "epoch,step,train/loss,val/acc,val/loss"
    )


def test_metrics_csv_failure_keeps_the_rows_already_written(tmp_path) -> None:
    writer = AtomicExperimentWriter(str(tmp_path))
    writer.log_metrics({"train/loss": 1.5}, step=0)
    writer.save()
    before = (tmp_path / "metrics.csv").read_bytes()
    writer.log_metrics({"train/loss": 1.0, "val/loss": 2.0}, step=1)  # a new column
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "fsync", eio)
        with pytest.raises(OSError):
            writer.save()
    assert (tmp_path / "metrics.csv").read_bytes() == before
    assert hidden_files(tmp_path) == []
    writer.save()  # the rows not written are kept for the next flush
    assert (tmp_path / "metrics.csv").read_text().splitlines() == [
        "step,train/loss,val/loss",
        "0,1.5,",
        "1,1.0,2.0",
    ]


# ------------------------------------------------------------------ hparams.yaml
def test_hparams_yaml_failure_keeps_the_previous_file(tmp_path, failing_fsync) -> None:
    writer = AtomicExperimentWriter(str(tmp_path))
    writer.log_hparams({"lr": 0.1})
    assert (tmp_path / "hparams.yaml").read_text() == "lr: 0.1\n"
    failing_fsync()
    with pytest.raises(OSError):
        writer.log_hparams({"r": 8})
    assert (tmp_path / "hparams.yaml").read_text() == "lr: 0.1\n"
    assert hidden_files(tmp_path) == []


def test_logger_uses_the_atomic_writer(tmp_path) -> None:
    logger = AtomicCSVLogger(save_dir=tmp_path, name="")
    assert isinstance(logger.experiment, AtomicExperimentWriter)
    logger.log_hyperparams({"hidden": 8})
    logger.log_metrics({"train/loss": 0.5}, step=0)
    logger.save()
    run_dir = tmp_path / "version_0"
    assert (run_dir / "hparams.yaml").read_text() == "hidden: 8\n"
    assert (run_dir / "metrics.csv").read_text().splitlines() == ["step,train/loss", "0,0.5"]
