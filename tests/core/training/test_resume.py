"""A killed and resumed fit ends where an uninterrupted one does (ResumeRngState + last.ckpt).

A "kill" here is an exception that is not an ``Exception`` raised at the start of a
training batch: like a SIGKILL it stops the fit with nothing saved (``ModelCheckpoint``
does not save on exceptions by default), so the resumed run starts from the last
end-of-epoch ``last.ckpt``, in a fresh ``fit`` seeded afresh, as after a real kill.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import Callback

from core.examples.module import DigitsClassifier
from core.examples.train import main
from core.training.checkpointing import AtomicCheckpointIO, LastStepCheckpoint
from core.training.resume import ResumeRngState, capture_rng_states, restore_rng_states

from .toys import ToyData, ToyModule, quiet_trainer

TOY_STEPS_PER_EPOCH = 6  # ToyData: 96 training samples in batches of 16


class Killed(BaseException):
    """Stands in for SIGKILL: not an ``Exception``, so nothing on the way handles it."""


class KillAtStep(Callback):
    """Raise :class:`Killed` when training batch number ``step`` (0-based) is about to run."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise Killed(f"killed before step {self.step}")


def _max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


# ------------------------------------------------------------------ the RNG states
def _draws() -> tuple[Any, ...]:
    return (torch.rand(3), np.random.rand(3), random.random(), torch.randperm(10))


def test_captured_rng_states_restore_every_generator() -> None:
    seed_everything(123)
    states = capture_rng_states()
    first = _draws()
    _draws()  # move every generator on
    restore_rng_states(states)
    again = _draws()
    for x, y in zip(first, again, strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y))


def test_rng_states_survive_a_weights_only_checkpoint_load() -> None:
    states = capture_rng_states()
    expected = _draws()
    buffer = io.BytesIO()
    torch.save({"callbacks": {"ResumeRngState": states}}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)["callbacks"]["ResumeRngState"]
    _draws()
    restore_rng_states(loaded)
    for x, y in zip(expected, _draws(), strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y))


# ------------------------------------------------------------------ a toy fit
def _toy_fit(
    dirpath: Path,
    max_epochs: int = 3,
    ckpt_path: Path | None = None,
    rng: bool = True,
    kill_at: int | None = None,
) -> ToyModule:
    seed_everything(0)
    module = ToyModule(seed=0)
    callbacks: list[Callback] = [
        LastStepCheckpoint(dirpath=dirpath, monitor="val/loss", save_last=True, filename="best")
    ]
    if rng:
        callbacks.append(ResumeRngState())
    if kill_at is not None:
        callbacks.append(KillAtStep(kill_at))
    trainer = quiet_trainer(
        max_epochs=max_epochs,
        limit_val_batches=2,
        enable_checkpointing=True,
        deterministic=True,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
    )
    trainer.fit(module, datamodule=ToyData(), ckpt_path=ckpt_path)
    return module


@pytest.mark.parametrize("rng", [True, False], ids=["with-rng-state", "without"])
def test_a_killed_and_resumed_fit_equals_an_uninterrupted_one(tmp_path: Path, rng: bool) -> None:
    whole = _toy_fit(tmp_path / "whole", rng=rng)
    kill_at = TOY_STEPS_PER_EPOCH + 3  # in the middle of the second epoch
    with pytest.raises(Killed):
        _toy_fit(tmp_path / "killed", rng=rng, kill_at=kill_at)
    last = tmp_path / "killed" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == TOY_STEPS_PER_EPOCH
    resumed = _toy_fit(tmp_path / "resumed", rng=rng, ckpt_path=last)
    assert resumed.global_step == whole.global_step == 3 * TOY_STEPS_PER_EPOCH
    diff = _max_abs_diff(whole.state_dict(), resumed.state_dict())
    if rng:
        assert diff <= 1e-6
    else:  # the cause: without the RNG state the resumed epochs see the data in another order
        assert diff > 1e-3


def test_resuming_from_a_checkpoint_without_rng_state_warns(tmp_path: Path) -> None:
    _toy_fit(tmp_path / "old", max_epochs=1, rng=False)
    with pytest.warns(UserWarning, match="holds no RNG state"):
        _toy_fit(tmp_path / "new", max_epochs=2, ckpt_path=tmp_path / "old" / "last.ckpt")


# ------------------------------------------------------------------ the example app
def _example(root: Path, *args: str) -> Any:
    return main(
        [
            "fit",
            "--trainer.default_root_dir",
            str(root),
            "--trainer.max_epochs",
            "3",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
            *args,
        ]
    )


def test_the_example_app_resumed_after_a_kill_equals_an_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``fit`` 3 epochs vs ``fit`` killed in epoch 3 + ``fit --ckpt_path last.ckpt``."""
    whole = _example(tmp_path / "whole")
    steps_per_epoch = whole.trainer.global_step // 3

    def kill_in_epoch_3(self: DigitsClassifier, batch: Any, batch_idx: int) -> None:
        if self.trainer.global_step == 2 * steps_per_epoch + 5:
            raise Killed("killed in the third epoch")

    monkeypatch.setattr(DigitsClassifier, "on_train_batch_start", kill_in_epoch_3, raising=False)
    with pytest.raises(Killed):
        _example(tmp_path / "killed")
    monkeypatch.undo()
    last = next((tmp_path / "killed").glob("version_*/checkpoints/last.ckpt"))
    assert torch.load(last, weights_only=True)["global_step"] == 2 * steps_per_epoch
    resumed = _example(tmp_path / "killed", "--ckpt_path", str(last))
    assert resumed.trainer.global_step == whole.trainer.global_step
    diff = _max_abs_diff(whole.model.state_dict(), resumed.model.state_dict())
    assert diff <= 1e-6, f"max |dw| = {diff}"
