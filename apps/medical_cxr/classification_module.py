"""Multi-label classification of the 14 CheXpert observations: BCE, macro AUROC."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .encoder_module import EncoderModule
from .labeler import CHEXPERT_LABELS
from .metrics import macro_auroc
from .model import CxrClassifier, ImageEncoder


def classifier_network(encoder: ImageEncoder, checkpoint: dict[str, Any] | None) -> CxrClassifier:
    """The encoder with a linear head over the 14 observations (nothing read from
    ``checkpoint`` but its weights, which :class:`EncoderModule` loads)."""
    return CxrClassifier(encoder, num_labels=len(CHEXPERT_LABELS))


class ClassifierModule(EncoderModule):
    """Multi-label classification of the 14 CheXpert observations (BCE, macro AUROC).

    Logs ``{val,test}/auroc`` (mean AUROC over observations that have both classes in the
    split) and ``{val,test}/auroc_excluded`` (how many observations were left out).

    Args:
        pos_weight: Optional positive-class weight of the BCE (one value for all labels).
        **kwargs: The encoder's options and ``pretrained`` (:class:`EncoderModule`) and the
            :class:`~core.training.FineTuneModule` options, passed through.
    """

    def __init__(self, pos_weight: float | None = None, **kwargs: Any) -> None:
        if pos_weight is not None and pos_weight <= 0:
            raise ValueError(f"model.pos_weight={pos_weight} must be > 0.")
        super().__init__(network=classifier_network, **kwargs)
        self.pos_weight = pos_weight
        self._outputs: dict[str, list[tuple[Tensor, Tensor]]] = {"val": [], "test": []}

    def forward(self, images: Tensor) -> Tensor:
        """Label logits ``(B, 14)``."""
        return self.model(images)

    def calibration_forward(self, batch: dict[str, Any]) -> Tensor:
        """One training batch through the network (for data-dependent adapter inits)."""
        return self(batch["image"].to(self.device))

    def shared_step(self, batch: dict[str, Any], stage: str) -> dict[str, Any]:
        """BCE over the 14 labels; validation and test keep the probabilities for AUROC."""
        logits = self(batch["image"])
        if stage == "predict":
            return {"study_id": batch["study_id"], "probs": torch.sigmoid(logits)}
        targets = batch["labels"]
        weight = None
        if self.pos_weight is not None:
            weight = torch.full_like(targets[0], self.pos_weight)
        loss = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weight)
        if stage in self._outputs:
            self._outputs[stage].append((torch.sigmoid(logits).detach().cpu(), targets.cpu()))
        return {"loss": loss, "batch_size": len(targets)}

    def _log_auroc(self, stage: str) -> None:
        outputs = self._outputs[stage]
        if not outputs:
            return
        probs = torch.cat([p for p, _ in outputs]).float().numpy()
        targets = torch.cat([t for _, t in outputs]).numpy().astype(int)
        auroc, excluded = macro_auroc(probs, targets)
        self.log(f"{stage}/auroc", auroc)
        self.log(f"{stage}/auroc_excluded", float(excluded))
        self._outputs[stage] = []

    def on_validation_epoch_start(self) -> None:
        """Start collecting the validation probabilities."""
        self._outputs["val"] = []

    def on_validation_epoch_end(self) -> None:
        """Log the validation AUROC."""
        self._log_auroc("val")

    def on_test_epoch_start(self) -> None:
        """Start collecting the test probabilities."""
        self._outputs["test"] = []

    def on_test_epoch_end(self) -> None:
        """Log the test AUROC."""
        self._log_auroc("test")
