"""Continual learning: task streams, a runner filling the accuracy matrix, metrics, plots.

>>> from core.continual import TaskStream, ContinualRunner  # doctest: +SKIP
>>> stream = TaskStream([("digits-0-4", dm_a), ("digits-5-9", dm_b)])  # doctest: +SKIP
>>> runner = ContinualRunner(module, stream, [EWC(100)], run_dir="runs/x")  # doctest: +SKIP
>>> result = runner.run()  # doctest: +SKIP
>>> result.metrics()["forgetting"]  # doctest: +SKIP

``python -m core.continual.experiment`` runs the embedded MNIST experiment (docs/continual.md).
"""

from .metrics import (
    average_accuracy,
    average_incremental_accuracy,
    backward_transfer,
    forgetting,
    forgetting_last,
    forward_transfer,
    summary,
)
from .plots import plot_accuracy_matrix
from .runner import ContinualResult, ContinualRunner, write_results
from .stream import Task, TaskStream

__all__ = [
    "ContinualResult",
    "ContinualRunner",
    "Task",
    "TaskStream",
    "average_accuracy",
    "average_incremental_accuracy",
    "backward_transfer",
    "forgetting",
    "forgetting_last",
    "forward_transfer",
    "plot_accuracy_matrix",
    "summary",
    "write_results",
]
