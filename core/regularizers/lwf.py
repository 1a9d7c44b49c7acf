"""Learning without Forgetting / knowledge distillation to a frozen copy (Li & Hoiem, 2016).

Penalty on the current batch ``x``: ``weight * T^2 * KL(softmax(z_old/T) || softmax(z/T))``,
with ``z_old`` the outputs of the model as it was at the last ``update`` (the frozen
teacher) and ``z`` the current outputs, averaged over the batch (and over token positions
for sequence outputs). ``T^2`` keeps gradient sizes comparable across temperatures
(Hinton et al., 2015).

The teacher is not a deep copy of the network: its parameters and buffers are kept in a
:class:`TensorStore` and the current network is run on them with
``torch.func.functional_call``. The snapshot is therefore in the checkpoint, and any
architecture works without knowing how to rebuild it. The teacher runs in eval mode.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import ContinualRegularizer, TensorStore, default_inputs, default_logits, register
from .snapshot import call_with_state, eval_mode, take_snapshot

__all__ = ["LwF", "distillation_kl"]


def distillation_kl(student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, mean over all leading dims."""
    t = float(temperature)
    log_p_student = F.log_softmax(student.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher.float() / t, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    return kl.mean() * t * t


@register("lwf")
class LwF(ContinualRegularizer):
    """Distill the current model towards its snapshot on each training batch.

    Args:
        weight: Multiplies the distillation term.
        temperature: Softmax temperature ``T``.
        input_fn: Model inputs of a batch (default: the batch or its first element).
        output_fn: Logits of a model output (default: the tensor or ``.logits``).
        name: Logged name.
    """

    def __init__(
        self,
        weight: float = 1.0,
        temperature: float = 2.0,
        input_fn: Callable[[Any], Any] = default_inputs,
        output_fn: Callable[[Any], Tensor] = default_logits,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if weight < 0 or temperature <= 0:
            raise ValueError(f"LwF weight={weight} must be >= 0 and temperature={temperature} > 0.")
        self.weight = float(weight)
        self.temperature = float(temperature)
        self.input_fn = input_fn
        self.output_fn = output_fn
        self.teacher = TensorStore()
        self._inputs: Any = None

    def observe(self, batch: Any) -> None:
        """Remember the inputs of the current training batch for the next ``penalty``."""
        self._inputs = self.input_fn(batch)

    def _update(self, model: nn.Module, data: Iterable[Any] | None, task: Any) -> None:
        take_snapshot(model, self.teacher)

    def teacher_logits(self, model: nn.Module, inputs: Any) -> Tensor:
        """Outputs of the frozen snapshot on ``inputs`` (eval mode, no gradient)."""
        self.require_ready("teacher_logits()")
        with eval_mode(model), torch.no_grad():
            out = call_with_state(model, dict(self.teacher.items()), inputs)
        return self.output_fn(out).detach()

    def _penalty(self, model: nn.Module) -> Tensor:
        if self._inputs is None:
            raise RuntimeError(
                f"{self.name} needs the current batch: call observe(batch) before penalty() "
                "(core.training.compute_penalties and RegularizerCallback do this)."
            )
        inputs, self._inputs = self._inputs, None
        teacher = self.teacher_logits(model, inputs)
        student = self.output_fn(model(**inputs) if isinstance(inputs, dict) else model(inputs))
        return self.weight * distillation_kl(student, teacher, self.temperature)
