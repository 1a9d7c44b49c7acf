"""Checkpoints that cannot be lost: AtomicCheckpointIO, LastStepCheckpoint, checkpoint_plugins.

The kill tests run a fit in a child process (``python -m tests.core.training.test_checkpointing
<point> <stack> <ckpt_dir> <tmpdir>``) whose ``$TMPDIR`` is on another filesystem than the
checkpoints when this machine has one (``/dev/shm`` is tmpfs), and SIGKILL it in the middle
of writing ``last.ckpt``. Stock Lightning is run the same way as a control: it shows the
loss the plugin prevents, so these tests fail on the old behaviour.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import SingleDeviceStrategy

from core.training.checkpointing import (
    AtomicCheckpointIO,
    LastStepCheckpoint,
    checkpoint_plugins,
)

from .toys import ToyData, ToyModule, quiet_trainer

REPO = Path(__file__).resolve().parents[3]
TRAIN_BATCHES = 2  # optimizer steps per epoch in these fits


class ScriptedValLoss(ToyModule):
    """A ToyModule whose ``val/loss`` in epoch ``e`` is ``val_losses[e]`` (so the best epoch is
    chosen by the test)."""

    def __init__(self, val_losses: tuple[float, ...] = (1.0, 0.5, 0.9)) -> None:
        super().__init__(seed=0)
        self.val_losses = val_losses

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val/loss", self.val_losses[self.current_epoch], batch_size=len(batch[0]))


def _fit(
    callback: ModelCheckpoint,
    module: pl.LightningModule,
    max_epochs: int = 3,
    ckpt_path: Path | None = None,
    **trainer_kwargs: Any,
) -> pl.Trainer:
    settings: dict[str, Any] = dict(
        max_epochs=max_epochs,
        limit_train_batches=TRAIN_BATCHES,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        enable_checkpointing=True,
        callbacks=[callback],
        plugins=[AtomicCheckpointIO()],
    )
    trainer = quiet_trainer(**{**settings, **trainer_kwargs})
    trainer.fit(module, datamodule=ToyData(), ckpt_path=ckpt_path)
    return trainer


def _checkpoint(
    dirpath: Path, cls: type[ModelCheckpoint] = LastStepCheckpoint, **kwargs: Any
) -> ModelCheckpoint:
    defaults: dict[str, Any] = dict(
        dirpath=dirpath, monitor="val/loss", mode="min", save_last=True, filename="best"
    )
    return cls(**{**defaults, **kwargs})


def _step(path: Path) -> int:
    return torch.load(path, weights_only=True)["global_step"]


# ------------------------------------------------------------------ last.ckpt keeps up
@pytest.mark.parametrize("save_last", [True, "link"])
def test_last_ckpt_holds_the_last_step_when_the_best_epoch_is_not_the_last(
    tmp_path: Path, save_last: bool | str
) -> None:
    module = ScriptedValLoss((1.0, 0.5, 0.9))  # best: epoch 1 (step 4); last: step 6
    trainer = _fit(_checkpoint(tmp_path, save_last=save_last), module)
    assert trainer.global_step == 3 * TRAIN_BATCHES
    assert _step(tmp_path / "best.ckpt") == 2 * TRAIN_BATCHES
    last = tmp_path / "last.ckpt"
    assert not last.is_symlink()  # a link could only point at the older best.ckpt
    assert _step(last) == 3 * TRAIN_BATCHES
    saved = torch.load(last, weights_only=True)["state_dict"]
    for name, value in module.state_dict().items():
        assert torch.equal(saved[name], value), name


def test_stock_model_checkpoint_leaves_last_ckpt_at_the_last_improvement(tmp_path: Path) -> None:
    """The Lightning behaviour LastStepCheckpoint fixes (if this fails, Lightning changed)."""
    _fit(_checkpoint(tmp_path, cls=ModelCheckpoint), ScriptedValLoss((1.0, 0.5, 0.9)))
    assert _step(tmp_path / "last.ckpt") == 2 * TRAIN_BATCHES


def test_last_ckpt_catches_up_when_fit_ends_between_checkpoint_epochs(tmp_path: Path) -> None:
    _fit(_checkpoint(tmp_path, every_n_epochs=2), ScriptedValLoss((1.0, 0.5, 0.2)))
    assert _step(tmp_path / "best.ckpt") == 2 * TRAIN_BATCHES  # epoch 2 is not a save epoch
    assert _step(tmp_path / "last.ckpt") == 3 * TRAIN_BATCHES


def test_last_ckpt_without_validation_is_written_at_every_epoch_end(tmp_path: Path) -> None:
    callback = _checkpoint(tmp_path, monitor=None, save_top_k=0)
    trainer = _fit(callback, ToyModule(), max_epochs=2, limit_val_batches=0)
    assert _step(tmp_path / "last.ckpt") == trainer.global_step == 2 * TRAIN_BATCHES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_link_mode_links_last_to_a_best_checkpoint_of_the_same_step(tmp_path: Path) -> None:
    _fit(_checkpoint(tmp_path, save_last="link"), ScriptedValLoss((1.0, 0.5, 0.2)))
    last = tmp_path / "last.ckpt"
    assert last.is_symlink() and os.readlink(last) == "best.ckpt"
    assert _step(last) == 3 * TRAIN_BATCHES


def test_relinking_last_never_leaves_it_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning removes last.ckpt before linking; a kill in between would leave none."""
    (tmp_path / "best.ckpt").write_text("new")
    (tmp_path / "last.ckpt").write_text("old")
    trainer = quiet_trainer()

    def killed(*args: Any) -> None:
        raise KeyboardInterrupt("killed while linking")

    monkeypatch.setattr(os, "symlink", killed)
    with pytest.raises(KeyboardInterrupt):
        LastStepCheckpoint._link_checkpoint(
            trainer, str(tmp_path / "best.ckpt"), str(tmp_path / "last.ckpt")
        )
    assert (tmp_path / "last.ckpt").read_text() == "old"
    monkeypatch.undo()
    LastStepCheckpoint._link_checkpoint(
        trainer, str(tmp_path / "best.ckpt"), str(tmp_path / "last.ckpt")
    )
    assert (tmp_path / "last.ckpt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]


def test_without_symlinks_last_is_an_atomic_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "best.ckpt").write_text("new")
    (tmp_path / "last.ckpt").write_text("old")

    def refused(*args: Any) -> None:
        raise PermissionError("symlinks are not allowed here")

    monkeypatch.setattr(os, "symlink", refused)
    LastStepCheckpoint._link_checkpoint(
        quiet_trainer(), str(tmp_path / "best.ckpt"), str(tmp_path / "last.ckpt")
    )
    assert not (tmp_path / "last.ckpt").is_symlink()
    assert (tmp_path / "last.ckpt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]


def test_no_checkpoint_is_written_outside_fit(tmp_path: Path) -> None:
    callback = _checkpoint(tmp_path)
    trainer = quiet_trainer(limit_val_batches=1, enable_checkpointing=True, callbacks=[callback])
    trainer.validate(ToyModule(), datamodule=ToyData())
    assert not callback.save_last_if_behind(trainer)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ AtomicCheckpointIO
def test_checkpoint_is_written_next_to_its_destination_with_the_umask_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "tmpdir"
    other.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(other))
    written: list[Path] = []
    real_save = torch.save

    def spy(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        written.append(Path(f))
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", spy)
    old_umask = os.umask(0o002)
    try:
        AtomicCheckpointIO().save_checkpoint({"w": torch.ones(2)}, tmp_path / "ck" / "last.ckpt")
    finally:
        os.umask(old_umask)
    target = tmp_path / "ck" / "last.ckpt"
    assert [p.parent for p in written] == [target.parent] and written[0].name != "last.ckpt"
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(2))
    assert target.stat().st_mode & 0o777 == 0o664
    assert list(other.iterdir()) == []
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    io_plugin, target = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io_plugin.save_checkpoint({"step": 1}, target)
    with pytest.raises(Exception):  # noqa: B017 - whatever torch.save raises for a lambda
        io_plugin.save_checkpoint({"step": 2, "bad": lambda: None}, target)
    assert torch.load(target, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_remote_paths_keep_lightnings_code_path() -> None:
    io_plugin = AtomicCheckpointIO()
    io_plugin.save_checkpoint({"step": 3}, "memory://ckpts/last.ckpt")
    assert io_plugin.load_checkpoint("memory://ckpts/last.ckpt") == {"step": 3}


def test_checkpoint_plugins_adds_the_atomic_writer_unless_one_is_chosen() -> None:
    added = checkpoint_plugins(None)
    assert [type(p) for p in added] == [AtomicCheckpointIO]
    mine = TorchCheckpointIO()
    assert checkpoint_plugins([mine]) == [mine]
    assert checkpoint_plugins(mine) == [mine]
    strategy = SingleDeviceStrategy(device="cpu", checkpoint_io=TorchCheckpointIO())
    assert checkpoint_plugins(None, strategy) == []
    other = object()
    plugins = checkpoint_plugins((other,), "auto")
    assert plugins[0] is other and isinstance(plugins[1], AtomicCheckpointIO)


# ------------------------------------------------------------------ a kill during a save
def _other_filesystem(path: Path) -> Path | None:
    """A writable folder on another filesystem than ``path``, or None."""
    here = path.stat().st_dev
    for candidate in ("/dev/shm", "/run/shm", "/tmp", "/var/tmp", str(Path.home())):
        c = Path(candidate)
        if c.is_dir() and os.access(c, os.W_OK) and c.stat().st_dev != here:
            return c
    return None


@pytest.fixture(scope="module")
def killed_saves(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Run the three kill scenarios side by side (each child imports torch: seconds)."""
    root = tmp_path_factory.mktemp("killed")
    other_fs = _other_filesystem(root)
    scratch = Path(tempfile.mkdtemp(dir=other_fs)) if other_fs else root / "tmpdir"
    scratch.mkdir(exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    runs = {}
    for name, point, stack in [
        ("ours-write", "write", "ours"),
        ("ours-rename", "rename", "ours"),
        ("stock-write", "write", "stock"),
    ]:
        ckpt_dir, tmpdir = root / name, scratch / name
        tmpdir.mkdir()
        cmd = [sys.executable, "-m", __name__, point, stack, str(ckpt_dir), str(tmpdir)]
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        runs[name] = (proc, ckpt_dir)
    results = {"cross_device": other_fs is not None}
    for name, (proc, ckpt_dir) in runs.items():
        out, _ = proc.communicate(timeout=300)
        results[name] = (proc.returncode, ckpt_dir, out.decode(errors="replace")[-3000:])
    yield results
    shutil.rmtree(scratch, ignore_errors=True)


@pytest.mark.parametrize("run", ["ours-write", "ours-rename"])
def test_a_kill_during_a_checkpoint_save_leaves_a_loadable_last_ckpt(
    killed_saves: dict[str, Any], run: str
) -> None:
    returncode, ckpt_dir, output = killed_saves[run]
    assert returncode == -signal.SIGKILL, f"the child was not killed mid-save:\n{output}"
    last = ckpt_dir / "last.ckpt"
    assert _step(last) == TRAIN_BATCHES  # the previous good checkpoint, whole
    # ... and training resumes from it, to the end.
    callback = _checkpoint(ckpt_dir)
    trainer = _fit(callback, ScriptedValLoss((1.0, 0.5)), max_epochs=2, ckpt_path=last)
    assert trainer.global_step == _step(last) == 2 * TRAIN_BATCHES


def test_stock_lightning_loses_last_ckpt_to_the_same_kill(killed_saves: dict[str, Any]) -> None:
    """The control: Lightning's own saving, killed at the same point, truncates last.ckpt."""
    if not killed_saves["cross_device"]:
        pytest.skip("needs a second filesystem for $TMPDIR (e.g. a tmpfs /dev/shm)")
    returncode, ckpt_dir, output = killed_saves["stock-write"]
    assert returncode == -signal.SIGKILL, f"the child was not killed mid-save:\n{output}"
    with pytest.raises((EOFError, RuntimeError, OSError)):  # what torch says of half a zip
        torch.load(ckpt_dir / "last.ckpt", weights_only=True)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(point: str) -> None:
    """Make this process SIGKILL itself while ``last.ckpt`` is being written.

    ``write``: once half of its bytes are on disk, whoever writes them (``torch.save`` into
    a file, or ``shutil.copyfile``, which a cross-filesystem ``shutil.move`` uses).
    ``rename``: just before it is renamed into place.
    """
    if point == "write":
        real_save, real_copyfile = torch.save, shutil.copyfile

        def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
            real_save(obj, f, *args, **kwargs)
            if isinstance(f, str | os.PathLike) and "last.ckpt" in os.fspath(f):
                os.truncate(f, os.path.getsize(f) // 2)
                _die()

        def copyfile(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
            if "last.ckpt" not in os.fspath(dst):
                return real_copyfile(src, dst, *args, **kwargs)
            data = Path(src).read_bytes()
            with open(dst, "wb") as out:
                out.write(data[: len(data) // 2])
            _die()

        torch.save = save  # type: ignore[assignment]
        shutil.copyfile = copyfile  # type: ignore[assignment]
    elif point == "rename":
        real_replace, real_rename = os.replace, os.rename

        def before(real: Any) -> Any:
            def rename(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
                if os.fspath(dst).endswith("last.ckpt"):
                    _die()
                real(src, dst, *args, **kwargs)

            return rename

        os.replace, os.rename = before(real_replace), before(real_rename)
    else:
        raise ValueError(f"unknown kill point {point!r}")


def _child(point: str, stack: str, ckpt_dir: str, tmpdir: str) -> None:
    """Fit one epoch (a good last.ckpt), arm the kill, resume for a second epoch."""
    os.environ["TMPDIR"] = tmpdir
    tempfile.tempdir = tmpdir
    stock = stack == "stock"

    def trainer(max_epochs: int) -> pl.Trainer:
        cls = ModelCheckpoint if stock else LastStepCheckpoint
        return quiet_trainer(
            max_epochs=max_epochs,
            limit_train_batches=TRAIN_BATCHES,
            limit_val_batches=1,
            num_sanity_val_steps=0,
            enable_checkpointing=True,
            callbacks=[_checkpoint(Path(ckpt_dir), cls=cls)],
            plugins=[] if stock else [AtomicCheckpointIO()],
        )

    trainer(1).fit(ScriptedValLoss((1.0, 0.5)), datamodule=ToyData())
    _arm(point)
    last = Path(ckpt_dir) / "last.ckpt"
    trainer(2).fit(ScriptedValLoss((1.0, 0.5)), datamodule=ToyData(), ckpt_path=last)
    print("the save of last.ckpt was not interrupted", file=sys.stderr)
    sys.exit(3)


if __name__ == "__main__":
    _child(*sys.argv[1:])
