"""The one ``Regularizer`` protocol: what the training code asks of an anti-forgetting method.

It lives here, under ``core.training``, because training is the layer that consumes it:
``core.regularizers`` imports ``core.training`` (its callback attaches regularizers to a
``FineTuneModule``), so the protocol cannot live there without an import cycle.
``core.regularizers`` re-exports this very object, so ``core.training.Regularizer`` and
``core.regularizers.Regularizer`` are the same class.

The only required member is ``penalty(model)``; the training code uses the others when an
object has them (duck typing, see :mod:`core.training.penalties`):

- ``ready``: false until the first ``update``; the penalty is then an exact zero;
- ``observe(batch)``: sees the training batch before ``penalty`` (LwF, DR-Tune, replay);
- ``on_train_start(model)`` / ``on_train_end(model)``: stage hooks (Half Fine-Tuning);
- ``update(model, data=None, task=None)``: called after a task by
  ``core.regularizers.RegularizerCallback`` and ``core.continual.ContinualRunner``.

``core.regularizers.ContinualRegularizer`` implements all of them. The signature is typed
with ``Any`` on purpose: a YAML names a regularizer by ``class_path`` and jsonargparse
accepts a class only if its ``penalty`` signature matches the protocol's.
"""

from typing import Any, Protocol, runtime_checkable

__all__ = ["Regularizer"]


@runtime_checkable
class Regularizer(Protocol):
    """Anything with ``penalty(model) -> Tensor`` (a scalar added to the training loss).

    Regularizers that are ``nn.Module`` s are registered as sub-modules, so the state they
    keep in buffers (EWC's Fisher, anchors) travels in the Lightning checkpoint.
    """

    def penalty(self, model: Any) -> Any:
        """A scalar tensor, differentiable w.r.t. the parameters it penalizes."""
        ...
