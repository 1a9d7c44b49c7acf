"""Small callbacks that fill a run directory, one job each.

The run directory is ``trainer.log_dir`` (with the CLI's CSVLogger: ``<root>/version_<n>``),
the same folder that holds the Lightning checkpoints and the CSV logs. Every file is written
by global rank zero only, atomically (``core.atomic``: a temporary file next to it, fsynced,
then ``os.replace``), and recorded as one line of ``manifest.jsonl`` so that a reader (or a
test) can see what was written, when and by which rank.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from core.adapters import save_adapter
from core.atomic import atomic_write, atomic_write_text, fsync_path

MANIFEST_NAME = "manifest.jsonl"


# ---------------------------------------------------------------------------- file helpers
def append_manifest(run_dir: str | Path, artifact: str, path: str | Path, **extra: Any) -> None:
    """Append one JSON line describing a file just written into the run directory.

    The line goes out in one ``write`` on an ``O_APPEND`` descriptor and is fsynced, so a
    kill leaves whole lines but at worst the last one torn; the next append then starts on
    a new line, and :func:`read_manifest` skips the torn one. (A manifest is a log: it is
    appended to, not rewritten.)
    """
    record = {
        "artifact": artifact,
        "path": str(Path(path).resolve()),
        "time": time.time(),
        "pid": os.getpid(),
        **extra,
    }
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    manifest = run_dir / MANIFEST_NAME
    created = not manifest.exists()
    fd = os.open(manifest, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)  # umask applies
    try:
        if os.fstat(fd).st_size and os.pread(fd, 1, os.fstat(fd).st_size - 1) != b"\n":
            line = b"\n" + line  # a torn line from a killed append stays on its own
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_path(run_dir)


def read_manifest(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``manifest.jsonl`` in ``run_dir`` (empty when there is none).

    Lines cut short by a kill during their append are skipped with a warning.
    """
    path = Path(run_dir) / MANIFEST_NAME
    if not path.is_file():
        return []
    records, torn = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            torn += 1
    if torn:
        rank_zero_warn(f"{str(path)!r}: skipped {torn} line(s) cut short by an interrupted run.")
    return records


def _run_dir(trainer: pl.Trainer) -> Path:
    """The run directory; a collective call under DDP (``log_dir`` broadcasts rank 0's)."""
    log_dir = trainer.log_dir
    if log_dir is None:  # pragma: no cover - only without loggers and default_root_dir
        log_dir = trainer.default_root_dir
    return Path(log_dir)


def _scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in sorted(metrics.items()):
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            value = value.item()
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = float(value)
            out[key] = value if math.isfinite(value) else str(value)  # type: ignore[assignment]
    return out


def _is_sharded(trainer: pl.Trainer) -> bool:
    """Whether parameters are sharded across ranks (FSDP, ModelParallel, DeepSpeed ZeRO-3)."""
    strategy = trainer.strategy
    name = type(strategy).__name__
    if name.startswith("FSDP") or name == "ModelParallelStrategy":
        return True
    return name == "DeepSpeedStrategy" and bool(getattr(strategy, "zero_stage_3", False))


# ---------------------------------------------------------------------------- callbacks
class RunDirCallback(Callback):
    """Base of the callbacks that write into the run directory.

    ``setup`` finds the run directory, :attr:`run_dir` (on every rank: under DDP it is
    broadcast from rank zero); subclasses write their files there, shared files from global
    rank zero only (:meth:`write_on_rank_zero`).
    """

    run_dir: Path | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Find the run directory (a collective call under DDP)."""
        self.run_dir = _run_dir(trainer)

    def write_on_rank_zero(self, trainer: pl.Trainer, hook: str, write: Callable[[], Any]) -> None:
        """Call ``write()`` on global rank zero, then hold every rank at a barrier (named
        ``<class>.<hook>``) until it is done, so no rank goes on before the file exists."""
        if trainer.is_global_zero:
            write()
        trainer.strategy.barrier(f"{type(self).__name__}.{hook}")


class RunFileCallback(RunDirCallback):
    """Base of the callbacks that keep one file in the run directory, ``<run_dir>/<filename>``;
    :attr:`path` is where it goes."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.run_dir = None

    @property
    def path(self) -> Path | None:
        """Where the file goes (known after ``setup``)."""
        return None if self.run_dir is None else self.run_dir / self.filename


class AdapterExport(RunDirCallback):
    """After ``fit``, write the trained adapter to ``<run_dir>/<dirname>/`` in PEFT layout.

    Uses ``core.adapters.save_adapter`` on ``pl_module.model`` (``adapter_config.json`` +
    ``adapter_model.safetensors``); a module that serves several adapters through an
    ``adapter_bank`` attribute (:class:`core.adapters.AdapterBank`) gets one such folder per
    adapter, ``<dirname>/<name>/`` (PEFT's layout for several adapters). Modules trained in
    full through ``modules_to_save`` (a new head, say) are inside that file, as in PEFT.
    Only global rank zero writes; all
    ranks wait for it before ``fit`` returns. The manifest line names the partner
    checkpoint, the checkpoint callback's ``last.ckpt``: with
    :class:`core.training.checkpointing.LastStepCheckpoint` it holds the same step and the
    same weights (it is written at the end of ``fit``, before this export).
    """

    def __init__(self, dirname: str = "adapter", adapter_name: str = "default") -> None:
        self.dirname = dirname
        self.adapter_name = adapter_name
        self.run_dir = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.write_on_rank_zero(trainer, "on_fit_end", lambda: self.export(trainer, pl_module))

    def export(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Path | None:
        """Write the adapter; return its directory (None when there is nothing to write)."""
        assert self.run_dir is not None, "setup() sets run_dir before fit ends"
        config = getattr(pl_module, "adapter_config", None)
        bank = getattr(pl_module, "adapter_bank", None)
        if config is None and bank is None:
            rank_zero_info("AdapterExport: the model has no adapter; nothing to export.")
            return None
        if _is_sharded(trainer):
            rank_zero_warn(
                "AdapterExport: parameters are sharded across ranks "
                f"({type(trainer.strategy).__name__}); the adapter is not exported. Load the "
                "consolidated checkpoint on one process and call core.adapters.save_adapter."
            )
            return None
        extra: dict[str, Any] = {"global_step": trainer.global_step, "epoch": trainer.current_epoch}
        last = getattr(trainer.checkpoint_callback, "last_model_path", "")
        if last:
            extra["checkpoint"] = last if "://" in last else str(Path(last).resolve())
        if bank is not None:  # an AdapterBank: one PEFT folder per adapter, adapter/<name>/
            adapter_dir = self.run_dir / self.dirname
            bank.save(adapter_dir)
            extra["adapters"] = list(bank.names)
        else:
            adapter_dir = save_adapter(
                pl_module.model, self.run_dir / self.dirname, name=self.adapter_name
            )
        append_manifest(self.run_dir, "adapter", adapter_dir, rank=trainer.global_rank, **extra)
        rank_zero_info(f"AdapterExport: adapter written to {adapter_dir}")
        return adapter_dir


class MetricsJson(RunFileCallback):
    """Keep ``<run_dir>/metrics.json`` up to date with the logged scalar metrics.

    One section per finished stage (``fit``, ``validate``, ``test``), each holding the
    scalar ``trainer.callback_metrics`` at the end of that stage, ``epoch``, ``global_step``
    and, when weights were loaded from a checkpoint, ``ckpt_path``. The file is rewritten
    atomically by global rank zero.
    """

    def __init__(self, filename: str = "metrics.json") -> None:
        super().__init__(filename)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.write(trainer, "fit")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "validate":  # during fit, the fit section covers validation
            self.write(trainer, "validate")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.write(trainer, "test")

    def write(self, trainer: pl.Trainer, section: str) -> None:
        """Store the current scalar metrics under ``section`` (rank zero only)."""
        if not trainer.is_global_zero or self.path is None:
            return
        data: dict[str, Any] = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
            except json.JSONDecodeError:
                data = {}
        data[section] = {
            **_scalar_metrics(trainer.callback_metrics),
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
        }
        if trainer.ckpt_path:  # validate/test/resumed fit: which weights were loaded
            data[section]["ckpt_path"] = str(trainer.ckpt_path)
        atomic_write_text(self.path, json.dumps(data, indent=2, sort_keys=True) + "\n")
        append_manifest(self.run_dir, "metrics", self.path, rank=trainer.global_rank, stage=section)


class PredictionsWriter(RunDirCallback, BasePredictionWriter):
    """After ``predict``, save what ``predict_step`` returned to ``<run_dir>/predictions.pt``.

    Each rank holds its own share of the data under DDP, so each writes its own file
    (``predictions_rank<r>.pt``) when there is more than one.
    """

    def __init__(self, filename: str = "predictions.pt") -> None:
        super().__init__(write_interval="epoch")
        self.filename = filename
        self.run_dir = None

    def write_on_epoch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        predictions: Sequence[Any],
        batch_indices: Sequence[Any],
    ) -> None:
        assert self.run_dir is not None
        name = self.filename
        if trainer.world_size > 1:
            stem, dot, ext = name.rpartition(".")
            name = f"{stem}_rank{trainer.global_rank}{dot}{ext}"
        target = atomic_write(
            self.run_dir / name,
            lambda tmp: torch.save(
                {"predictions": predictions, "batch_indices": batch_indices}, tmp
            ),
        )
        append_manifest(self.run_dir, "predictions", target, rank=trainer.global_rank)
