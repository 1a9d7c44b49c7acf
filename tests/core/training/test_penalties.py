"""compute_penalties: names, zero for regularizers not yet ready, observe before penalty."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.training import compute_penalties, end_stage, penalty_names, start_stage


class Recorder:
    def __init__(self, ready: bool = True, name: str | None = None) -> None:
        self.ready = ready
        self.calls: list[str] = []
        if name:
            self.name = name

    def observe(self, batch) -> None:
        self.calls.append(f"observe:{batch}")

    def penalty(self, model) -> torch.Tensor:
        self.calls.append("penalty")
        return torch.tensor(1.5)


def test_names_use_name_attribute_or_class_and_number_repeats() -> None:
    assert penalty_names([Recorder(), Recorder(name="ewc"), Recorder()]) == [
        "Recorder_0",
        "ewc",
        "Recorder_1",
    ]


def test_observe_comes_before_penalty_and_not_ready_gives_an_exact_zero() -> None:
    ready, waiting = Recorder(), Recorder(ready=False, name="waiting")
    out = compute_penalties([ready, waiting], nn.Linear(2, 2), batch="b0")
    assert ready.calls == ["observe:b0", "penalty"] and out["Recorder"].item() == 1.5
    assert waiting.calls == [] and out["waiting"].item() == 0.0


def test_name_count_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="2 names for 1 regularizers"):
        compute_penalties([Recorder()], nn.Linear(2, 2), names=["a", "b"])


class Stage:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_train_start(self, model) -> None:
        self.calls.append("start")

    def on_train_end(self, model) -> None:
        self.calls.append("end")

    def penalty(self, model) -> torch.Tensor:
        return torch.zeros(())


def test_stage_hooks_are_called_where_present() -> None:
    stage = Stage()
    start_stage([stage, Recorder()], nn.Linear(2, 2))
    end_stage([stage, Recorder()], nn.Linear(2, 2))
    assert stage.calls == ["start", "end"]


def test_finetune_module_runs_stage_hooks_of_its_own_regularizers() -> None:

    from .toys import ToyData, ToyModule, quiet_trainer

    stage = Stage()
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(ToyModule(regularizers=[stage]), datamodule=ToyData())
    assert stage.calls == ["start", "end"]
