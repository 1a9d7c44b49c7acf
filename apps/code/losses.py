"""Multitask losses: MFTCoder's task-balanced loss and CoBa's dynamic task weights.

**Task-balanced loss** (MFTCoder, Liu et al., 2023): with per-token losses l and the task
t(k) of each target token k, each task present in the batch gets its own token mean

    m_t = sum_{k: t(k)=t} l_k / n_t,

and the loss is their (weighted) mean over the tasks present:

    L = sum_{t present} w_t m_t / sum_{t present} w_t        (w_t = 1: the plain mean).

A task with many tokens in the batch thus counts as much as one with few, and a task absent
from the batch neither contributes nor changes the normalisation.

**CoBa** (Gong et al., 2024, "CoBa: Convergence Balancer for Multitask Finetuning of
LLMs") sets the weights w_t from the slopes of each task's validation loss: see
:class:`CoBaWeighter`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def per_task_means(
    token_losses: Tensor, task_ids: Tensor, num_tasks: int
) -> tuple[Tensor, Tensor, Tensor]:
    """``(sums, counts, means)`` per task, each of shape ``(num_tasks,)``.

    ``task_ids`` has the shape of ``token_losses``; entries outside ``[0, num_tasks)``
    (``-1``: not a target token) are ignored. Absent tasks have count 0 and mean 0.
    """
    if token_losses.shape != task_ids.shape:
        raise ValueError(
            f"token_losses {tuple(token_losses.shape)} and task_ids {tuple(task_ids.shape)} "
            "must have the same shape (one task id per token)."
        )
    flat_loss = token_losses.reshape(-1).float()
    flat_ids = task_ids.reshape(-1)
    keep = (flat_ids >= 0) & (flat_ids < num_tasks)
    ids = flat_ids[keep]
    sums = torch.zeros(num_tasks, dtype=torch.float32, device=token_losses.device)
    sums = sums.index_add(0, ids, flat_loss[keep])
    counts = torch.zeros(num_tasks, dtype=torch.float32, device=token_losses.device)
    counts = counts.index_add(0, ids, torch.ones_like(flat_loss[keep]))
    means = sums / counts.clamp_min(1.0)
    return sums, counts, means


def task_balanced_loss(
    token_losses: Tensor,
    task_ids: Tensor,
    num_tasks: int,
    weights: Tensor | None = None,
    include: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """MFTCoder's loss: the (weighted) mean over present tasks of each task's token mean.

    Args:
        token_losses: Per-token losses (any shape).
        task_ids: Task index per token, ``-1`` where the token is not a target.
        num_tasks: Number of task indices.
        weights: Optional ``(num_tasks,)`` non-negative task weights (CoBa); default 1.
        include: Optional ``(num_tasks,)`` bool: tasks that count towards the loss (the
            others, e.g. a perplexity-only "general" task, are still measured).

    Returns:
        ``(loss, means, present)``: the scalar loss, the per-task token means and which
        tasks had target tokens. With no counted task present the loss is ``0 * sum``
        (still differentiable, so a step on such a batch is a no-op).
    """
    _, counts, means = per_task_means(token_losses, task_ids, num_tasks)
    present = counts > 0
    counted = present if include is None else present & include.to(present.device)
    w = torch.ones_like(means) if weights is None else weights.to(means)
    if weights is not None and (weights.shape != (num_tasks,) or bool((weights < 0).any())):
        raise ValueError(
            f"task weights must be a non-negative tensor of shape ({num_tasks},); got "
            f"{tuple(weights.shape)}."
        )
    w = w * counted
    if not bool(counted.any()) or float(w.sum()) == 0.0:
        return token_losses.sum() * 0.0, means, present
    return (w * means).sum() / w.sum(), means, present


def _slope(values: Sequence[float]) -> float:
    """Least-squares slope of ``values`` against 0, 1, 2, ... (0 for fewer than two)."""
    n = len(values)
    if n < 2:
        return 0.0
    x = torch.arange(n, dtype=torch.float64)
    y = torch.tensor(list(values), dtype=torch.float64)
    xc = x - x.mean()
    return float((xc * (y - y.mean())).sum() / (xc * xc).sum())


class CoBaWeighter:
    """CoBa task weights from the slopes of the per-task validation losses.

    Call :meth:`observe` with the per-task validation losses after each validation run;
    :attr:`weights` are then, for K tasks (normalised to mean 1 so the loss scale stays):

    - losses are normalised by each task's first observed value, l_i(s) / l_i(0);
    - alpha_i: least-squares slope of task i's last ``window`` normalised losses;
    - RCS_i = softmax_i(K alpha_i / sum_j |alpha_j|): slower-converging tasks get more;
    - ACS_i = softmax_i(-M alpha_i / sum_{s<=M} |alpha_i(s)|) over task i's own last M
      slopes: a task that starts to diverge (slope turning up) gets less;
    - DF = min(M softmax_s(-tau M a(s) / sum_s |a(s)|)[last], 1), with a(s) the slope of
      the worst task's normalised loss: near 1 while everything converges (RCS decides),
      smaller once the losses turn up (ACS takes over);
    - w_i = K (DF RCS_i + (1 - DF) ACS_i).

    Until ``warmup`` observations exist the weights are all 1 (plain MFTCoder). Tasks with no
    validation data (``nan``) keep weight 1.
    """

    def __init__(self, num_tasks: int, warmup: int = 3, window: int = 4, tau: float = 5.0):
        if num_tasks < 1 or warmup < 2 or window < 2 or tau <= 0:
            raise ValueError(
                f"CoBa needs num_tasks >= 1, warmup >= 2, window >= 2, tau > 0; got "
                f"{num_tasks}, {warmup}, {window}, {tau}."
            )
        self.num_tasks, self.warmup, self.window, self.tau = num_tasks, warmup, window, tau
        self.history: list[list[float]] = []
        self.slopes: list[list[float]] = []
        self.max_slopes: list[float] = []
        self._weights = torch.ones(num_tasks, dtype=torch.float64)

    @property
    def weights(self) -> Tensor:
        """The current ``(num_tasks,)`` weights (float32, mean 1 over the known tasks)."""
        return self._weights.float()

    def observe(self, val_losses: Sequence[float] | Tensor) -> Tensor:
        """Record one validation run's per-task losses and recompute the weights."""
        values = [float(v) for v in torch.as_tensor(val_losses, dtype=torch.float64).tolist()]
        if len(values) != self.num_tasks:
            raise ValueError(f"expected {self.num_tasks} task losses, got {len(values)}.")
        self.history.append(values)
        if len(self.history) < self.warmup:
            return self.weights
        first = torch.tensor(self.history[0], dtype=torch.float64)
        hist = torch.tensor(self.history[-self.window :], dtype=torch.float64) / first
        known = torch.isfinite(hist).all(0) & torch.isfinite(first) & (first > 0)
        if not bool(known.any()):
            return self.weights
        slopes = torch.tensor([_slope(hist[:, i].tolist()) if known[i] else 0.0
                               for i in range(self.num_tasks)], dtype=torch.float64)  # fmt: skip
        self.slopes.append(slopes.tolist())
        self.max_slopes.append(_slope(hist[:, known].max(dim=1).values.tolist()))
        k = int(known.sum())
        a = slopes[known]
        rcs = torch.softmax(k * a / a.abs().sum().clamp_min(1e-12), 0)
        own = torch.tensor(self.slopes[-self.window :], dtype=torch.float64)[:, known]
        m = own.shape[0]
        acs = torch.softmax(-m * a / own.abs().sum(0).clamp_min(1e-12), 0)
        ms = torch.tensor(self.max_slopes[-self.window :], dtype=torch.float64)
        div = torch.softmax(-self.tau * len(ms) * ms / ms.abs().sum().clamp_min(1e-12), 0)
        df = min(float(div[-1]) * len(ms), 1.0)
        w = torch.ones(self.num_tasks, dtype=torch.float64)
        w[known] = k * (df * rcs + (1 - df) * acs)
        self._weights = w
        self.divergence_factor = df
        return self.weights

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state, for Lightning checkpoints."""
        return {
            "history": self.history, "slopes": self.slopes, "max_slopes": self.max_slopes,
            "weights": self._weights.tolist(),
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.history = [list(h) for h in state["history"]]
        self.slopes = [list(s) for s in state["slopes"]]
        self.max_slopes = list(state["max_slopes"])
        self._weights = torch.tensor(state["weights"], dtype=torch.float64)
