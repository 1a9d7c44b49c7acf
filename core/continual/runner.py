"""``ContinualRunner``: fit a ``FineTuneModule`` task after task and fill the accuracy matrix.

For each task of a :class:`TaskStream`: ``trainer.fit`` on its data module (a fresh
``Trainer`` per task, so optimizer state starts anew, as in the usual protocol), then
``update`` every regularizer on that task's training data, then evaluate *every* task
(seen and unseen) with ``trainer.test``, giving one row of ``R``. Before the first task all
tasks are evaluated once: the baseline of forward transfer.

Regularizers are wired in by :class:`core.regularizers.RegularizerCallback`, the same code
path a single ``fit`` uses. With a ``run_dir``, ``results.json`` (the partial matrix and
its metrics) and ``accuracy_matrix.png`` are rewritten atomically after every task, so an
interrupted run leaves a consistent record of what finished.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from core.atomic import atomic_write_text
from core.regularizers import RegularizerCallback
from core.training import FineTuneModule
from core.training.penalties import penalty_names

from .metrics import summary
from .plots import plot_accuracy_matrix
from .stream import Task, TaskStream, as_stream

__all__ = ["ContinualResult", "ContinualRunner", "write_results"]

DEFAULT_TRAINER = {
    "max_epochs": 1,
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}


@dataclass
class ContinualResult:
    """What a run measured: ``R`` (rows so far x tasks), the baseline and the metrics."""

    task_names: list[str]
    R: list[list[float]] = field(default_factory=list)
    baseline: list[float] | None = None
    metric: str = "acc"
    seed: int = 0
    regularizers: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Whether every task has been trained."""
        return len(self.R) == len(self.task_names)

    def metrics(self) -> dict[str, float]:
        """:func:`core.continual.metrics.summary` of the rows so far (empty before any)."""
        return summary(self.R, self.baseline) if self.R else {}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; ``nan`` becomes ``None``."""
        return json_safe(
            {
                "tasks": self.task_names,
                "metric": self.metric,
                "seed": self.seed,
                "regularizers": self.regularizers,
                "accuracy_matrix": self.R,
                "baseline": self.baseline,
                "metrics": self.metrics(),
                "complete": self.complete,
            }
        )


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as None (JSON has no NaN), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_results(result: ContinualResult, run_dir: str | Path) -> tuple[Path, Path | None]:
    """Write ``results.json`` and (once a row exists) ``accuracy_matrix.png``, atomically."""
    run_dir = Path(run_dir)
    text = json.dumps(result.to_dict(), indent=2) + "\n"
    json_path = atomic_write_text(run_dir / "results.json", text)
    png = None
    if result.R:
        png = plot_accuracy_matrix(
            result.R,
            result.task_names,
            run_dir / "accuracy_matrix.png",
            title=f"{result.metric} after each task",
        )
    return json_path, png


class ContinualRunner:
    """Train ``module`` on each task of ``stream`` in turn; evaluate all tasks after each.

    Args:
        module: The ``FineTuneModule`` trained throughout (its weights carry over).
        stream: A :class:`TaskStream` (or ``(name, datamodule)`` pairs).
        regularizers: Attached for every task through ``RegularizerCallback``. These and
            the module's own ``regularizers`` are updated after each task on its
            ``train_dataloader()``.
        trainer_kwargs: ``pl.Trainer`` arguments for every fit/test (merged over quiet
            defaults: one epoch, no logger, no checkpoints, no progress bar).
        trainer_factory: Instead of ``trainer_kwargs``, builds each ``Trainer`` from a list
            of callbacks.
        metric: Logged metric read as accuracy: ``"<stage>/<metric>"`` from ``trainer.test``.
        run_dir: Where ``results.json`` and ``accuracy_matrix.png`` go (``None``: nowhere).
        seed: Seeds everything (``lightning.seed_everything``) before the run.
        evaluate_baseline: Evaluate every task before training (for forward transfer).
    """

    def __init__(
        self,
        module: FineTuneModule,
        stream: TaskStream | Sequence[Any],
        regularizers: Sequence[Any] = (),
        *,
        trainer_kwargs: dict[str, Any] | None = None,
        trainer_factory: Callable[[list[pl.Callback]], pl.Trainer] | None = None,
        metric: str = "acc",
        run_dir: str | Path | None = None,
        seed: int = 0,
        evaluate_baseline: bool = True,
    ) -> None:
        if not isinstance(module, FineTuneModule):
            raise TypeError(
                f"ContinualRunner trains a core.training.FineTuneModule; got "
                f"{type(module).__name__}."
            )
        if trainer_kwargs is not None and trainer_factory is not None:
            raise ValueError("pass trainer_kwargs or trainer_factory, not both.")
        self.module = module
        self.stream = as_stream(stream)
        self.callback = RegularizerCallback(list(regularizers))
        self.trainer_kwargs = {**DEFAULT_TRAINER, **(trainer_kwargs or {})}
        self.trainer_factory = trainer_factory
        self.metric = metric
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.seed = seed
        self.evaluate_baseline = evaluate_baseline

    def _trainer(self, callbacks: list[pl.Callback]) -> pl.Trainer:
        if self.trainer_factory is not None:
            return self.trainer_factory(callbacks)
        return pl.Trainer(callbacks=callbacks, **self.trainer_kwargs)

    def evaluate(self, task: Task) -> float:
        """Accuracy (``test/<metric>``) of the module on ``task``'s test data."""
        trainer = self._trainer([])
        results = trainer.test(self.module, datamodule=task.datamodule, verbose=False)
        key = f"test/{self.metric}"
        logged = results[0] if results else {}
        if key not in logged:
            raise KeyError(
                f"evaluating task {task.name!r}: the module logged no {key!r} in test "
                f"(logged: {sorted(logged)}); set metric= to one of those names without "
                "the 'test/' prefix."
            )
        return float(logged[key])

    def evaluate_all(self) -> list[float]:
        """One accuracy per task of the stream, in order."""
        return [self.evaluate(task) for task in self.stream]

    def _update_regularizers(self, task: Task) -> None:
        """``update`` the runner's regularizers and the module's own after ``task``."""
        seen: set[int] = set()
        data = task.datamodule.train_dataloader()
        for reg in [*self.module.regularizers, *self.callback.regularizers]:
            if id(reg) in seen or not callable(getattr(reg, "update", None)):
                continue
            seen.add(id(reg))
            reg.update(self.module.model, data, task.name)

    def run(self) -> ContinualResult:
        """Train on every task in order; return (and write) the filled accuracy matrix."""
        pl.seed_everything(self.seed, workers=True, verbose=False)
        result = ContinualResult(
            task_names=self.stream.names,
            metric=self.metric,
            seed=self.seed,
            regularizers=penalty_names(self.callback.regularizers),
        )
        if self.evaluate_baseline:
            result.baseline = self.evaluate_all()
        for task in self.stream:
            self.callback.task = task.name
            trainer = self._trainer([self.callback])
            trainer.fit(self.module, datamodule=task.datamodule)
            self._update_regularizers(task)
            result.R.append(self.evaluate_all())
            if self.run_dir is not None:
                write_results(result, self.run_dir)
        return result
