"""A small MLP digit classifier, fine-tuned through :class:`core.training.FineTuneModule`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from core.adapters import AdapterConfig
from core.training import FineTuneModule, Regularizer, default_loss


class MLP(nn.Module):
    """``fc1 -> ReLU -> fc2 -> ReLU -> head``: two hidden linear layers and a linear head."""

    def __init__(self, in_features: int, hidden_size: int, num_classes: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_size)
        self.fc2 = nn.Linear(hidden_size, hidden_size)
        self.head = nn.Linear(hidden_size, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.head(x)


class DigitsClassifier(FineTuneModule):
    """Classify 8x8 digits with an :class:`MLP`; logs loss and accuracy per stage.

    The MLP is built here from a seeded random initialisation (no pre-trained weights are
    downloaded). With the default config its base weights stay frozen, LoRA adapts the two
    hidden layers and the head trains in full: a demo of the machinery, not of transfer.

    Args:
        hidden_size: Width of the two hidden layers.
        in_features: Input size (64 pixels).
        num_classes: Number of classes (10 digits).
        adapter: Adapter injected into the MLP, e.g. LoraConfig on ``[fc1, fc2]``.
        modules_to_save: Modules trained in full next to the adapter (saved in its file), e.g.
            ``[head]``.
        regularizers: Objects with ``penalty(model) -> Tensor`` added to the training loss.
        optimizer: Optimizer over the trainable parameters (default AdamW, lr 1e-3).
        lr_scheduler: Optional LR scheduler, stepped every epoch.
        loss: ``loss(logits, target) -> Tensor`` (default cross-entropy).
    """

    def __init__(
        self,
        hidden_size: int = 64,
        in_features: int = 64,
        num_classes: int = 10,
        adapter: AdapterConfig | None = None,
        modules_to_save: list[str] | None = None,
        regularizers: list[Regularizer] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        loss: Callable[..., Any] = default_loss,
    ) -> None:
        if hidden_size < 1:
            raise ValueError(f"model.hidden_size={hidden_size} must be >= 1.")
        super().__init__(
            model=MLP(in_features, hidden_size, num_classes),
            adapter=adapter,
            modules_to_save=modules_to_save,
            regularizers=regularizers,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            loss=loss,
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> dict[str, Any]:
        x, y = batch
        logits = self(x)
        preds = logits.argmax(dim=-1)
        if stage == "predict":
            return {"preds": preds, "target": y}
        return {
            "loss": self.loss_fn(logits, y),
            "acc": (preds == y).float().mean(),
            "batch_size": len(y),
        }
