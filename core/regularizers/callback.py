"""``RegularizerCallback``: attach any list of regularizers to any ``FineTuneModule``.

The module already knows how to use regularizers (``FineTuneModule(regularizers=...)``:
penalties added to the loss, logged as ``train/reg/<name>``). The callback is the way in
from outside, for code that does not build the module (a continual runner, a recipe that
adds EWC to an app): at ``setup`` it calls ``pl_module.attach_regularizers(...)``, so the
very same code path computes, adds and logs the penalties; at ``teardown`` it detaches
them. It also

- moves ``nn.Module`` regularizers to the module's device;
- through the module, gets the optional stage hooks ``on_train_start(model)`` /
  ``on_train_end(model)`` called (Half Fine-Tuning freezes and restores its half there:
  ``FineTuneModule.on_train_start`` / ``on_train_end`` call them for every regularizer);
- optionally calls ``update(model, train_dataloader, task)`` when training ends
  (``update_on_fit_end=True``: each ``trainer.fit`` is then one task);
- keeps the regularizers' buffers in the checkpoint, as this callback's state (the
  module's state dict stays that of the bare module, so checkpoints load without it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from torch import nn

from core.training import FineTuneModule
from core.training.penalties import end_stage, penalty_names

from .base import build

__all__ = ["RegularizerCallback"]


class RegularizerCallback(Callback):
    """Wire ``regularizers`` into the ``FineTuneModule`` being trained.

    Args:
        regularizers: Objects with ``penalty(model) -> Tensor`` (and optionally ``update``,
            ``observe``, ``ready``, ``on_train_start`` / ``on_train_end``), or registry
            specs built with :func:`core.regularizers.build`: ``"ewc"`` or
            ``{"method": "ewc", "lambda_": 100}`` (what a YAML config holds).
        update_on_fit_end: After each ``fit``, call ``update(model, train loader, task)`` on
            every regularizer (``task`` = :attr:`task`, which a runner may set).
    """

    def __init__(self, regularizers: Sequence[Any], update_on_fit_end: bool = False) -> None:
        regs = [build(r) if isinstance(r, str | Mapping) else r for r in regularizers]
        for reg in regs:
            if not callable(getattr(reg, "penalty", None)):
                raise TypeError(
                    f"regularizer {reg!r} has no penalty(model) method; build one with "
                    "core.regularizers.build(name, ...) or implement penalty(model) -> Tensor."
                )
        self.regularizers = regs
        self.names = penalty_names(regs)
        self.update_on_fit_end = update_on_fit_end
        self.task: Any = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(regularizers=tuple(self.names))

    # ------------------------------------------------------------------ wiring
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not isinstance(pl_module, FineTuneModule):
            raise TypeError(
                f"RegularizerCallback needs a core.training.FineTuneModule; got "
                f"{type(pl_module).__name__}. Subclass FineTuneModule, or call "
                "core.training.compute_penalties in your own training_step."
            )
        for reg in self.regularizers:
            if isinstance(reg, nn.Module):
                reg.to(pl_module.device)
        pl_module.attach_regularizers(self.regularizers)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if isinstance(pl_module, FineTuneModule):
            pl_module.detach_regularizers(self.regularizers)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.update_on_fit_end:
            end_stage(self.regularizers, pl_module.model)  # HFT restored before any update
            self.update(pl_module.model, trainer.train_dataloader, self.task)

    def update(self, model: nn.Module, data: Iterable[Any] | None = None, task: Any = None) -> None:
        """Call ``update(model, data, task)`` on every regularizer that has one."""
        for reg in self.regularizers:
            if callable(getattr(reg, "update", None)):
                reg.update(model, data, task)

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {
            name: reg.state_dict()
            for name, reg in zip(self.names, self.regularizers, strict=True)
            if isinstance(reg, nn.Module)
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for name, reg in zip(self.names, self.regularizers, strict=True):
            if isinstance(reg, nn.Module) and name in state_dict:
                reg.load_state_dict(state_dict[name])
