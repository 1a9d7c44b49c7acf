"""``TaskStream``: the ordered, uniquely named tasks of a continual run."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

__all__ = ["Task", "TaskStream"]


@dataclass(frozen=True)
class Task:
    """One task: a name (unique within its stream) and its data module."""

    name: str
    datamodule: Any


class TaskStream(Sequence[Task]):
    """Tasks in training order, from ``(name, datamodule)`` pairs or :class:`Task` s.

    A data module is anything with ``train_dataloader()`` (a ``LightningDataModule``); the
    runner also asks for ``test_dataloader()`` or ``val_dataloader()`` to evaluate. Names
    must be non-empty strings and unique: results, logs and plots are keyed by them.
    """

    def __init__(self, tasks: Iterable[Task | tuple[str, Any]]) -> None:
        items: list[Task] = []
        for i, task in enumerate(tasks):
            if not isinstance(task, Task):
                try:
                    name, datamodule = task
                except (TypeError, ValueError) as err:
                    raise TypeError(
                        f"task stream entry {i} must be a Task or a (name, datamodule) pair; "
                        f"got {task!r}."
                    ) from err
                task = Task(name, datamodule)
            if not isinstance(task.name, str) or not task.name:
                raise ValueError(
                    f"task stream entry {i}: name {task.name!r} must be a non-empty str."
                )
            if not callable(getattr(task.datamodule, "train_dataloader", None)):
                raise TypeError(
                    f"task {task.name!r}: {type(task.datamodule).__name__} has no "
                    "train_dataloader(); pass a LightningDataModule."
                )
            items.append(task)
        if not items:
            raise ValueError("a task stream needs at least one task.")
        dupes = {n: c for n, c in Counter(t.name for t in items).items() if c > 1}
        if dupes:
            listed = ", ".join(f"{n!r} x{c}" for n, c in dupes.items())
            raise ValueError(
                f"task names must be unique in a stream; repeated: {listed}. Rename them "
                "(e.g. append the repetition number) to run a task more than once."
            )
        self._tasks = items

    @property
    def names(self) -> list[str]:
        """Task names in order."""
        return [t.name for t in self._tasks]

    def __len__(self) -> int:
        return len(self._tasks)

    @overload
    def __getitem__(self, index: int) -> Task: ...
    @overload
    def __getitem__(self, index: slice) -> list[Task]: ...
    def __getitem__(self, index: int | slice) -> Task | list[Task]:
        return self._tasks[index]

    def __iter__(self) -> Iterator[Task]:
        return iter(self._tasks)

    def index_of(self, name: str) -> int:
        """Position of the task called ``name``."""
        try:
            return self.names.index(name)
        except ValueError as err:
            raise KeyError(f"no task named {name!r}; tasks: {self.names}.") from err

    def __repr__(self) -> str:
        return f"TaskStream({self.names})"


def as_stream(tasks: TaskStream | Sequence[Any]) -> TaskStream:
    """A :class:`TaskStream` from itself or from what its constructor accepts."""
    return tasks if isinstance(tasks, TaskStream) else TaskStream(tasks)
