"""Checkpoints that cannot be lost: an atomic checkpoint writer and a ``last.ckpt`` that keeps up.

Two behaviours of stock Lightning (2.6.6, the version this was written against) lose work,
and each is fixed here:

* :class:`AtomicCheckpointIO` (a ``CheckpointIO`` plugin). Lightning's ``TorchCheckpointIO``
  saves through ``lightning.fabric.utilities.cloud_io._atomic_save``: an fsspec transaction
  whose local file is first written to ``tempfile.mkstemp()`` -- in ``$TMPDIR`` -- and then
  ``shutil.move``-d onto the checkpoint. When ``$TMPDIR`` is on another filesystem the move
  is a copy into the truncated destination, so a kill during it leaves ``last.ckpt`` empty
  or half-written, the previous good copy gone (and nothing is fsynced). This plugin writes
  the checkpoint next to its destination, fsyncs it, renames it into place and fsyncs the
  folder (:func:`core.atomic.atomic_write`).
* :class:`LastStepCheckpoint` (a ``ModelCheckpoint``). Lightning's ``ModelCheckpoint`` writes
  ``last.ckpt`` at the end of an epoch only when a top-k checkpoint was written at that
  step ("Only save last checkpoint if a checkpoint was actually saved in this step" in
  ``on_validation_end``/``on_train_epoch_end``), and ``on_train_end`` only when no ``last``
  was ever written. With ``monitor="val/loss"``, ``last.ckpt`` therefore stops at the last
  improvement: a resume silently replays (differently) every epoch since, and
  ``test --ckpt_path last.ckpt`` scores stale weights. This subclass writes ``last.ckpt``
  whenever it is behind the trainer's step at a checkpoint point, and at the end of ``fit``.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import fsspec
import lightning.pytorch as pl
import torch
from lightning.fabric.plugins import CheckpointIO, TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from core.atomic import atomic_write, fsync_path


def is_local_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` is on the local filesystem (no ``s3://``, ``gs://``... protocol)."""
    return fsspec.utils.get_protocol(str(path)) == "file"


def _local(path: str | os.PathLike) -> str:
    path = str(path)
    return path[len("file://") :] if path.startswith("file://") else path


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic and durable, whatever ``$TMPDIR`` is.

    ``torch.save`` writes a hidden temporary file in the checkpoint's own folder; it is
    fsynced, given the umask's mode and renamed onto the checkpoint, and the folder is
    fsynced. A kill at any moment leaves the previous checkpoint intact and loadable.
    Remote paths (``s3://`` and the like) keep Lightning's own code path, as does loading.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` (see the class docstring)."""
        if not is_local_path(path):
            super().save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        if storage_options is not None:
            raise TypeError(
                "`Trainer.save_checkpoint(..., storage_options=...)` with `storage_options` arg"
                f" is not supported for `{type(self).__name__}`. Please implement your custom "
                "`CheckpointIO` to define how you'd like to use `storage_options`."
            )
        atomic_write(_local(path), lambda tmp: torch.save(checkpoint, tmp))


def checkpoint_plugins(plugins: Any, strategy: Any = None) -> list[Any]:
    """``plugins`` (None, one plugin or a list) with an :class:`AtomicCheckpointIO` added.

    Nothing is added when the plugins already hold a ``CheckpointIO`` or ``strategy`` is a
    strategy object that carries its own: the user's choice wins (Lightning refuses two).
    """
    if plugins is None:
        plugins = []
    elif not isinstance(plugins, list | tuple):
        plugins = [plugins]
    plugins = list(plugins)
    if any(isinstance(p, CheckpointIO) for p in plugins):
        return plugins
    if getattr(strategy, "_checkpoint_io", None) is not None:
        return plugins
    return [*plugins, AtomicCheckpointIO()]


class LastStepCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` always holds the latest step of the fit.

    Same arguments and top-k behaviour as Lightning's ``ModelCheckpoint``; the difference is
    ``save_last``. Wherever the stock callback considers checkpointing (the end of a
    validation or of a training epoch, every ``every_n_epochs``) and ``last.ckpt`` is behind
    the trainer's ``global_step``, ``last.ckpt`` is written, whether or not the monitored
    metric improved; and when ``fit`` ends it is brought up to the final step. With
    ``save_last="link"``, ``last.ckpt`` is a link only when a top-k checkpoint of the same
    step exists (a link to an older one would be stale) and the link is replaced atomically.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_step_in_last: int | None = None

    # --------------------------------------------------------------- when last is written
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Lightning's checkpointing, then ``last.ckpt`` brought up to date if it is behind."""
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer) and self._epoch_is_due(trainer):
            self.save_last_if_behind(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Lightning's checkpointing, then ``last.ckpt`` brought up to date if it is behind."""
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer) and self._epoch_is_due(trainer):
            self.save_last_if_behind(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Make sure the fit ends with ``last.ckpt`` at its final step."""
        super().on_train_end(trainer, pl_module)
        self.save_last_if_behind(trainer)

    def save_last_if_behind(self, trainer: pl.Trainer) -> bool:
        """Write ``last.ckpt`` when ``save_last`` is on and it is older than ``global_step``.

        Returns whether it wrote. Nothing is written outside ``fit``, during the sanity check
        or under ``fast_dev_run`` (as in Lightning). Called on every rank alike: saving is a
        collective call under DDP.
        """
        if (
            not self.save_last
            or self._last_step_in_last == trainer.global_step
            or bool(trainer.fast_dev_run)
            or trainer.state.fn != TrainerFn.FITTING
            or trainer.sanity_checking
        ):
            return False
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        return True

    def _epoch_is_due(self, trainer: pl.Trainer) -> bool:
        every = self._every_n_epochs
        return every >= 1 and (trainer.current_epoch + 1) % every == 0

    # --------------------------------------------------------------- how last is written
    def _save_last_checkpoint(
        self, trainer: pl.Trainer, monitor_candidates: dict[str, Tensor]
    ) -> None:
        if self.save_last == "link" and self._last_global_step_saved != trainer.global_step:
            # No checkpoint of this step exists to link to: write last.ckpt in full instead.
            self._last_checkpoint_saved = ""
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._last_step_in_last = trainer.global_step

    @staticmethod
    def _link_checkpoint(trainer: pl.Trainer, filepath: str, linkpath: str) -> None:
        """Point ``linkpath`` at ``filepath`` with a relative symlink, replaced in one rename.

        Lightning removes the old ``last.ckpt`` before creating the link, so a kill between
        the two leaves none. Where symlinks are refused the file is copied (atomically);
        remote paths keep Lightning's code.
        """
        if not (is_local_path(filepath) and is_local_path(linkpath)):
            ModelCheckpoint._link_checkpoint(trainer, filepath, linkpath)
            return
        filepath, linkpath = _local(filepath), _local(linkpath)
        if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
            if os.path.isdir(linkpath) and not os.path.islink(linkpath):
                raise IsADirectoryError(
                    f"cannot link {linkpath!r} to {filepath!r}: it is a directory; remove it."
                )
            folder = os.path.dirname(os.path.abspath(linkpath))
            tmp = os.path.join(folder, f".{os.path.basename(linkpath)}.{os.getpid()}.link")
            try:
                if os.path.lexists(tmp):
                    os.remove(tmp)
                os.symlink(os.path.relpath(filepath, folder), tmp)
            except OSError:  # no symlinks here: an atomic copy instead (Lightning copies too)
                atomic_write(linkpath, lambda copy: shutil.copyfile(filepath, copy))
            else:
                os.replace(tmp, linkpath)
                fsync_path(folder)
        trainer.strategy.barrier()
