"""Lightning's own run files, written atomically: ``config.yaml``, ``hparams.yaml``,
``metrics.csv``.

LightningCLI's ``SaveConfigCallback`` and the ``CSVLogger`` write these in place, so a kill
or a full disk during a write leaves a truncated file where the previous one was (for
``metrics.csv``, every row logged so far). Here each write goes to a hidden file in the same
folder, is fsynced, and replaces the old file in one rename (:func:`core.atomic.atomic_write`):
a reader sees the previous version or the new one, never half of one. ``run_cli`` uses
:class:`AtomicSaveConfigCallback` and :class:`AtomicCSVLogger`; remote (``fsspec``) paths keep
Lightning's own writes.
"""

from __future__ import annotations

import csv
import io
import os
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from core.atomic import atomic_write

__all__ = ["AtomicCSVLogger", "AtomicExperimentWriter", "AtomicSaveConfigCallback"]


def _is_local(path: str | os.PathLike[str]) -> bool:
    return "://" not in os.fspath(path)


class AtomicSaveConfigCallback(SaveConfigCallback):
    """``SaveConfigCallback`` that writes ``config.yaml`` atomically (same content).

    Like Lightning's, it refuses to overwrite an existing file unless ``overwrite``, writes
    on global rank zero only and then calls :meth:`save_config`.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Write the config into the run directory (once per callback)."""
        if self.already_saved:
            return
        log_dir = trainer.log_dir  # broadcast from rank zero: every rank must ask
        if not self.save_to_log_dir or self.multifile or log_dir is None or not _is_local(log_dir):
            super().setup(trainer, pl_module, stage)
            return
        path = os.path.join(log_dir, self.config_filename)
        if not self.overwrite:
            exists = trainer.strategy.broadcast(
                os.path.isfile(path) if trainer.is_global_zero else False
            )
            if exists:
                raise RuntimeError(
                    f"{type(self).__name__} expected {path} to NOT exist. Aborting to avoid "
                    "overwriting results of a previous run. Delete the previous config file or "
                    'set save_config_kwargs={"overwrite": True}.'
                )
        if trainer.is_global_zero:
            atomic_write(
                path,
                lambda tmp: self.parser.save(
                    self.config, tmp, skip_none=False, overwrite=True, multifile=False
                ),
            )
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)


class AtomicExperimentWriter(ExperimentWriter):
    """The CSV logger's writer, replacing ``hparams.yaml`` and ``metrics.csv`` atomically.

    Each flush rewrites ``metrics.csv`` whole (the rows already on disk, then the new ones;
    all of it under the new header when new metric names appeared), so a failed flush leaves
    the previous file. The cost is linear in the file's size per flush, small next to a step.
    """

    def log_hparams(self, params: dict[str, Any]) -> None:
        """Record hyperparameters and replace ``hparams.yaml``."""
        self.hparams.update(params)
        path = os.path.join(self.log_dir, self.NAME_HPARAMS_FILE)
        if not _is_local(path):
            super().log_hparams({})
            return
        atomic_write(path, lambda tmp: save_hparams_to_yaml(tmp, self.hparams))

    def save(self) -> None:
        """Append the recorded rows to ``metrics.csv`` by replacing the file."""
        if not self.metrics:
            return
        if not _is_local(self.metrics_file_path):
            super().save()
            return
        self._record_new_keys()
        old_rows: list[dict[str, str]] = []
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                old_rows = list(csv.DictReader(f))
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=self.metrics_keys)
        writer.writeheader()
        writer.writerows(old_rows)
        writer.writerows(self.metrics)
        text = buffer.getvalue()

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:  # csv's own line ends, as Lightning writes
                f.write(text)

        atomic_write(self.metrics_file_path, write)
        self.metrics = []


class AtomicCSVLogger(CSVLogger):
    """``CSVLogger`` whose files are replaced atomically (:class:`AtomicExperimentWriter`)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        """The writer (created on first use; a no-op stand-in on ranks other than zero)."""
        if self._experiment is not None:
            return self._experiment
        if not _is_local(self.root_dir):
            return super().experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        self._experiment = AtomicExperimentWriter(log_dir=self.log_dir)
        return self._experiment
