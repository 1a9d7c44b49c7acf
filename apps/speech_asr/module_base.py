"""What the two speech modules share: routing, kept evaluation batches, the LR schedule.

The streaming :class:`~apps.speech_asr.module.SpeechAdapterModule` and the
:class:`~apps.speech_asr.whisper.module.WhisperAdapterModule` both route each sample to its
language's adapter (:class:`~apps.speech_asr.routing.LanguageRouting`), decode the whole
validation and test sets at epoch end (so each step only keeps its batch), and train with a
linear warm-up then cosine decay over the run unless the recipe sets its own scheduler.
"""

from __future__ import annotations

from typing import Any

from core.training import FineTuneModule
from core.training.schedules import with_warmup_cosine

from .routing import LanguageRouting


class SpeechModuleBase(LanguageRouting, FineTuneModule):
    """Base of the speech modules; subclasses set ``warmup_steps`` and call
    :meth:`keep_eval_batches` in ``__init__``."""

    warmup_steps: int

    def keep_eval_batches(self) -> None:
        """Start the per-stage lists of batches decoded at epoch end."""
        self._eval_batches: dict[str, list[dict[str, Any]]] = {"val": [], "test": []}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        self._eval_batches["val"].append(batch)
        return super().validation_step(batch, batch_idx)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        self._eval_batches["test"].append(batch)
        return super().test_step(batch, batch_idx)

    def on_validation_epoch_start(self) -> None:
        self._eval_batches["val"] = []

    def on_test_epoch_start(self) -> None:
        self._eval_batches["test"] = []

    def configure_optimizers(self) -> Any:
        """The base optimizer with a per-step warm-up + cosine schedule over the run's steps
        (unless the recipe sets its own ``lr_scheduler``)."""
        configured = super().configure_optimizers()
        if self.lr_scheduler_factory is not None or self.warmup_steps <= 0:
            return configured
        # max_steps, or the steps max_epochs amounts to (capped by limit_train_batches).
        return with_warmup_cosine(
            configured, self.warmup_steps, self.trainer.estimated_stepping_batches
        )
