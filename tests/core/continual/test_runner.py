"""ContinualRunner with a real FineTuneModule and LightningDataModules (Lightning path)."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import pytest
import torch

from core.continual import ContinualRunner, TaskStream, summary
from core.regularizers import EWC, HalfFineTuning, LwF
from tests.core.training.toys import ToyData, ToyModule, quiet_trainer


class PenaltyRecorder(pl.Callback):
    """Records the epoch-mean logged penalties at the end of each fit."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_end(self, trainer, pl_module) -> None:
        m = trainer.callback_metrics
        self.rows.append({k: float(v) for k, v in m.items() if k.startswith("train/reg/")})


def _stream() -> TaskStream:
    return TaskStream([(f"blobs{s}", ToyData(seed=s)) for s in (1, 2, 3)])


def test_runner_fills_R_writes_results_and_penalties_start_after_task_one(tmp_path) -> None:
    recorder = PenaltyRecorder()

    def factory(callbacks):
        return quiet_trainer(max_epochs=2, callbacks=[*callbacks, recorder] if callbacks else [])

    module = ToyModule(optimizer=lambda p: torch.optim.Adam(p, lr=0.05))
    regs = [EWC(lambda_=10.0, labels="true", max_samples=64), LwF(weight=0.5), HalfFineTuning()]
    runner = ContinualRunner(
        module, _stream(), regs, trainer_factory=factory, run_dir=tmp_path, seed=0
    )
    result = runner.run()

    assert len(result.R) == 3 and all(len(row) == 3 for row in result.R) and result.complete
    assert all(0.0 <= a <= 1.0 for row in result.R for a in row)
    assert result.R[0][0] > 0.5  # it learns (chance: 1/3)
    assert len(result.baseline) == 3
    # penalties: exactly zero while training the first task, positive afterwards
    assert recorder.rows[0]["train/reg/EWC"] == 0.0
    assert all(r["train/reg/EWC"] > 0 for r in recorder.rows[1:])
    assert recorder.rows[0]["train/reg/LwF"] == 0.0 and recorder.rows[2]["train/reg/LwF"] > 0
    assert module.regularizers == []  # nothing left attached after the run

    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["tasks"] == ["blobs1", "blobs2", "blobs3"] and saved["complete"]
    assert saved["accuracy_matrix"] == result.R
    expected = summary(result.R, result.baseline)
    assert saved["metrics"]["forgetting"] == pytest.approx(expected["forgetting"])
    assert saved["regularizers"] == ["EWC", "LwF", "HalfFineTuning"]
    assert (tmp_path / "accuracy_matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_partial_results_are_valid_json_with_nulls(tmp_path) -> None:
    from core.continual import ContinualResult, write_results

    partial = ContinualResult(task_names=["a", "b"], R=[[0.9, 0.1]], baseline=[0.1, 0.1])
    write_results(partial, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["complete"] is False and saved["metrics"]["backward_transfer"] is None
    assert saved["metrics"]["average_accuracy"] == pytest.approx(0.9)


def test_runner_is_seeded_and_reproducible() -> None:
    def run() -> list[list[float]]:
        module = ToyModule(seed=0)
        stream = TaskStream([("x", ToyData(seed=1)), ("y", ToyData(seed=2))])
        kwargs = {"accelerator": "cpu", "limit_train_batches": 3}
        return ContinualRunner(module, stream, trainer_kwargs=kwargs, seed=7).run().R

    assert run() == run()


def test_the_modules_own_regularizers_are_updated_too() -> None:
    ewc = EWC(lambda_=1.0, labels="true", max_samples=16)
    module = ToyModule(regularizers=[ewc])
    stream = TaskStream([("x", ToyData(seed=1)), ("y", ToyData(seed=2))])
    kwargs = {"accelerator": "cpu", "limit_train_batches": 2}
    ContinualRunner(module, stream, trainer_kwargs=kwargs, evaluate_baseline=False).run()
    assert ewc.terms() == [0, 1]


def test_bad_inputs() -> None:
    with pytest.raises(TypeError, match="FineTuneModule"):
        ContinualRunner(torch.nn.Linear(2, 2), _stream())
    with pytest.raises(ValueError, match="unique"):
        ContinualRunner(ToyModule(), [("a", ToyData()), ("a", ToyData())])
    runner = ContinualRunner(
        ToyModule(), [("a", ToyData())], metric="f1", trainer_kwargs={"accelerator": "cpu"}
    )
    with pytest.raises(KeyError, match=r"no 'test/f1'.*test/acc"):
        runner.run()
