"""Rehearsal: replay buffers, replay as a loss term, and the DMT data-mixing recipe.

- :class:`ReservoirBuffer` keeps a uniform sample of everything it was shown (Vitter's
  reservoir sampling), whatever the task boundaries;
- :class:`TaskBalancedBuffer` splits its capacity evenly over the tasks seen so far (a
  reservoir per task; older tasks shrink when a new one arrives);
- :class:`Replay` is the regularizer: ``update(model, data, task)`` puts the finished task's
  samples into a buffer, ``penalty(model)`` is ``weight * loss(model(x_r), y_r)`` on a
  replay minibatch. Adding it to the new-task loss is rehearsal by loss mixing: with
  ``weight = m / n`` it has the gradient of a mixed batch of ``n`` new and ``m`` old samples
  up to the factor ``n / (n + m)``;
- :func:`dmt_stages` builds the DMT recipe (Dong et al., 2023): stage 1 the specialist data,
  stage 2 the general data plus a small share of the specialist data. :meth:`as_dataset`
  turns a buffer into a dataset to concatenate with new data for data-level mixing.

Buffers are ``nn.Module`` s: samples, labels and task ids are buffers, task names extra
state, so a checkpoint carries the whole memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, Dataset, Subset, TensorDataset

from .base import (
    ContinualRegularizer,
    TensorStore,
    default_inputs,
    default_logits,
    default_targets,
    register,
)

__all__ = ["Replay", "ReplayBuffer", "ReservoirBuffer", "TaskBalancedBuffer", "dmt_stages"]


class ReplayBuffer(nn.Module):
    """Fixed-capacity memory of ``(x, y, task)`` samples; subclasses choose what stays.

    Args:
        capacity: Most samples held.
        seed: Seeds which samples are kept and drawn (reproducible across runs).
    """

    def __init__(self, capacity: int, seed: int = 0) -> None:
        super().__init__()
        if capacity < 1:
            raise ValueError(f"replay buffer capacity={capacity} must be >= 1.")
        self.capacity = int(capacity)
        self.seed = int(seed)
        self.store = TensorStore()  # "x", "y", "task" once something was added
        self.register_buffer("num_seen", torch.zeros((), dtype=torch.long))
        self.task_names: list[str] = []

    # ----------------------------------------------------------------- checkpointed names
    def get_extra_state(self) -> Any:
        return {"task_names": list(self.task_names)}

    def set_extra_state(self, state: Any) -> None:
        self.task_names = list(state.get("task_names", []))

    # ----------------------------------------------------------------- views
    def __len__(self) -> int:
        return 0 if "y" not in self.store else int(self.store["y"].shape[0])

    @property
    def x(self) -> Tensor:
        """Stored inputs (first dimension: samples)."""
        return self.store["x"]

    @property
    def y(self) -> Tensor:
        """Stored labels."""
        return self.store["y"]

    @property
    def tasks(self) -> Tensor:
        """Task index of each stored sample (index into ``task_names``)."""
        return self.store["task"]

    def as_dataset(self) -> TensorDataset:
        """The memory as a ``TensorDataset(x, y)``, to concatenate with new data."""
        if len(self) == 0:
            raise ValueError("the replay buffer is empty; add a finished task's data first.")
        return TensorDataset(self.x, self.y)

    def _task_index(self, task: Any) -> int:
        key = str(task)
        if key not in self.task_names:
            self.task_names.append(key)
        return self.task_names.index(key)

    def _generator(self, salt: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + salt)

    def _set(self, x: Tensor, y: Tensor, task: Tensor) -> None:
        self.store["x"], self.store["y"], self.store["task"] = x, y, task

    # ----------------------------------------------------------------- API
    @torch.no_grad()
    def add(self, x: Tensor, y: Tensor, task: Any = 0) -> None:
        """Offer a batch of samples of ``task`` to the memory."""
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"replay add: x has {x.shape[0]} samples but y has {y.shape[0]}.")
        if x.shape[0] == 0:
            return
        t = torch.full((x.shape[0],), self._task_index(task), dtype=torch.long)
        self._add(x.detach().cpu(), y.detach().cpu(), t)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` samples drawn uniformly with replacement from the memory."""
        if len(self) == 0:
            raise ValueError("cannot sample from an empty replay buffer; add data first.")
        idx = torch.randint(len(self), (n,), generator=generator)
        return self.x[idx], self.y[idx]

    def _add(self, x: Tensor, y: Tensor, task: Tensor) -> None:  # pragma: no cover
        raise NotImplementedError


class ReservoirBuffer(ReplayBuffer):
    """Uniform sample of the whole stream: sample ``k`` (1-based) is kept with prob ``C/k``."""

    def _add(self, x: Tensor, y: Tensor, task: Tensor) -> None:
        gen = self._generator(int(self.num_seen.item()))
        n_have = len(self)
        room = min(self.capacity - n_have, x.shape[0])
        if room > 0:
            if n_have:
                self._set(
                    torch.cat([self.x, x[:room]]),
                    torch.cat([self.y, y[:room]]),
                    torch.cat([self.tasks, task[:room]]),
                )
            else:
                self._set(x[:room].clone(), y[:room].clone(), task[:room].clone())
        seen = int(self.num_seen.item()) + room
        bx, by, bt = self.x, self.y, self.tasks
        for i, j in _reservoir_slots(seen, room, x.shape[0], self.capacity, gen):
            bx[j], by[j], bt[j] = x[i], y[i], task[i]
        self.num_seen.fill_(seen + x.shape[0] - room)


class TaskBalancedBuffer(ReplayBuffer):
    """Capacity split evenly over tasks seen so far, a uniform reservoir within each task."""

    def __init__(self, capacity: int, seed: int = 0) -> None:
        super().__init__(capacity, seed)
        self.per_task_seen = TensorStore()  # "<task index>" -> samples of that task seen

    def quota(self, num_tasks: int) -> list[int]:
        """Slots per task: ``capacity // num_tasks``, the remainder to the earliest tasks."""
        base, extra = divmod(self.capacity, num_tasks)
        return [base + (1 if i < extra else 0) for i in range(num_tasks)]

    def _add(self, x: Tensor, y: Tensor, task: Tensor) -> None:
        t = int(task[0])
        num_tasks = len(self.task_names)
        quota = self.quota(num_tasks)
        key = str(t)
        seen_before = int(self.per_task_seen[key]) if key in self.per_task_seen else 0
        gen = self._generator(int(self.num_seen.item()))
        keep_x, keep_y, keep_t = [], [], []
        for other in range(num_tasks):
            mask = self.tasks == other if len(self) else torch.zeros(0, dtype=torch.bool)
            ox, oy = (self.x[mask], self.y[mask]) if len(self) else (x[:0], y[:0])
            if other == t:  # reservoir within this task's quota, over old + new samples
                ox, oy = self._reservoir(ox, oy, x, y, quota[t], seen_before, gen)
            elif ox.shape[0] > quota[other]:  # shrink: a uniform subset stays uniform
                pick = torch.randperm(ox.shape[0], generator=gen)[: quota[other]].sort().values
                ox, oy = ox[pick], oy[pick]
            keep_x.append(ox)
            keep_y.append(oy)
            keep_t.append(torch.full((ox.shape[0],), other, dtype=torch.long))
        self._set(torch.cat(keep_x), torch.cat(keep_y), torch.cat(keep_t))
        self.per_task_seen[key] = torch.tensor(seen_before + x.shape[0])
        self.num_seen += x.shape[0]

    @staticmethod
    def _reservoir(
        bx: Tensor, by: Tensor, x: Tensor, y: Tensor, cap: int, seen: int, gen: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        bx, by = bx[:cap].clone(), by[:cap].clone()
        room = max(0, min(cap - bx.shape[0], x.shape[0]))
        bx, by = torch.cat([bx, x[:room]]), torch.cat([by, y[:room]])
        for i, j in _reservoir_slots(seen + room, room, x.shape[0], cap, gen):
            bx[j], by[j] = x[i], y[i]
        return bx, by


def _reservoir_slots(
    seen: int, start: int, stop: int, capacity: int, gen: torch.Generator
) -> list[tuple[int, int]]:
    """Reservoir replacements for new samples ``start..stop-1``, ``seen`` counted before them.

    The ``k``-th sample of the stream (1-based) draws ``j`` uniform in ``[0, k)`` and
    replaces slot ``j`` when ``j < capacity``. Returned in stream order, so applying them in
    order gives exactly the sequential algorithm; drawn in one vectorized call.
    """
    if stop <= start:
        return []
    k = torch.arange(seen + 1, seen + 1 + stop - start, dtype=torch.float64)
    j = (torch.rand(stop - start, generator=gen, dtype=torch.float64) * k).long()
    hits = (j < capacity).nonzero().flatten().tolist()
    return [(start + h, int(j[h])) for h in hits]


BUFFERS: dict[str, type[ReplayBuffer]] = {
    "reservoir": ReservoirBuffer,
    "task_balanced": TaskBalancedBuffer,
}


@register("replay")
class Replay(ContinualRegularizer):
    """Rehearsal as a loss term: ``weight * loss(model(x_r), y_r)`` on a replay minibatch.

    Args:
        capacity: Buffer size in samples.
        policy: ``"reservoir"`` or ``"task_balanced"``.
        batch_size: Replay samples per training step.
        weight: Multiplies the replay loss.
        max_per_task: Offer at most this many samples of each task to the buffer.
        loss_fn: ``loss(logits, y)`` (default cross-entropy).
        input_fn / target_fn / output_fn: Batch and output layout, as elsewhere.
        seed: Seeds what the buffer keeps and which replay samples are drawn.
        name: Logged name.
    """

    def __init__(
        self,
        capacity: int = 500,
        policy: Literal["reservoir", "task_balanced"] = "reservoir",
        batch_size: int = 32,
        weight: float = 1.0,
        max_per_task: int | None = None,
        loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
        input_fn: Callable[[Any], Any] = default_inputs,
        target_fn: Callable[[Any], Tensor] = default_targets,
        output_fn: Callable[[Any], Tensor] = default_logits,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if policy not in BUFFERS:
            raise ValueError(f"Replay policy={policy!r} must be one of {sorted(BUFFERS)}.")
        if batch_size < 1 or weight < 0:
            raise ValueError(f"Replay batch_size={batch_size} must be >= 1, weight={weight} >= 0.")
        self.buffer = BUFFERS[policy](capacity, seed)
        self.batch_size = int(batch_size)
        self.weight = float(weight)
        self.max_per_task = max_per_task
        self.loss_fn = loss_fn
        self.input_fn, self.target_fn, self.output_fn = input_fn, target_fn, output_fn
        self._draws = torch.Generator().manual_seed(seed)

    def _update(self, model: nn.Module, data: Iterable[Any] | None, task: Any) -> None:
        if data is None:
            raise ValueError(
                f"{self.name}.update(model, data, task) needs data: the finished task's "
                "batches, to put into the replay buffer."
            )
        task = int(self.num_updates.item()) if task is None else task
        offered = 0
        for batch in data:
            x, y = self.input_fn(batch), self.target_fn(batch)
            if self.max_per_task is not None:
                x, y = x[: self.max_per_task - offered], y[: self.max_per_task - offered]
            self.buffer.add(x, y, task)
            offered += x.shape[0]
            if self.max_per_task is not None and offered >= self.max_per_task:
                break
        if len(self.buffer) == 0:
            raise ValueError(f"{self.name}.update: data yielded no samples for task {task!r}.")

    def _penalty(self, model: nn.Module) -> Tensor:
        x, y = self.buffer.sample(self.batch_size, self._draws)
        device = next(model.parameters()).device
        logits = self.output_fn(model(x.to(device)))
        return self.weight * self.loss_fn(logits, y.to(device))


def dmt_stages(
    specialist: Dataset, general: Dataset, specialist_share: float = 1 / 256, seed: int = 0
) -> list[Dataset]:
    """DMT (dual-stage mixed fine-tuning): ``[specialist, general + share of specialist]``.

    Stage 1 trains on the specialist data alone; stage 2 on the general data plus a random
    ``specialist_share`` of the specialist data (at least one sample when the share is
    positive), which keeps the specialist skill from being overwritten.
    """
    if not 0.0 <= specialist_share <= 1.0:
        raise ValueError(f"dmt_stages specialist_share={specialist_share} must lie in [0, 1].")
    n = len(specialist)  # type: ignore[arg-type]
    k = 0 if specialist_share == 0 else max(1, round(specialist_share * n))
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k]
    return [specialist, ConcatDataset([general, Subset(specialist, pick.sort().values.tolist())])]
