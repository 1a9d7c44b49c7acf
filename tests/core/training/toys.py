"""Small modules, data and regularizers shared by the core.training tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from core.adapters import AdapterConfig
from core.training import FineTuneModule, Regularizer, default_loss


def quiet_trainer(**kwargs: Any) -> pl.Trainer:
    """A CPU Trainer for tests: one epoch, no logger, checkpoints, progress bar or summary.

    Keyword arguments override these defaults.
    """
    defaults: dict[str, Any] = dict(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    return pl.Trainer(**{**defaults, **kwargs})


class ToyNet(nn.Module):
    def __init__(self, in_features: int = 6, hidden: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class ToyModule(FineTuneModule):
    """A FineTuneModule over :class:`ToyNet` (seeded init)."""

    def __init__(
        self,
        seed: int = 0,
        adapter: AdapterConfig | None = None,
        modules_to_save: list[str] | None = None,
        regularizers: list[Regularizer] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        loss: Callable[..., Any] = default_loss,
        calibration_batches: int = 8,
    ) -> None:
        torch.manual_seed(seed)
        super().__init__(
            ToyNet(),
            adapter=adapter,
            modules_to_save=modules_to_save,
            regularizers=regularizers,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            loss=loss,
            calibration_batches=calibration_batches,
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> dict[str, Any]:
        x, y = batch
        logits = self(x)
        if stage == "predict":
            return {"preds": logits.argmax(-1)}
        return {"loss": self.loss_fn(logits, y), "acc": (logits.argmax(-1) == y).float().mean()}


class ToyData(pl.LightningDataModule):
    """Three Gaussian blobs in 6-d, 96 samples per split, seeded."""

    def __init__(self, batch_size: int = 16, seed: int = 0) -> None:
        super().__init__()
        self.batch_size = batch_size
        gen = torch.Generator().manual_seed(seed)
        centers = torch.randn(3, 6, generator=gen) * 3

        def split() -> TensorDataset:
            y = torch.randint(0, 3, (96,), generator=gen)
            return TensorDataset(centers[y] + torch.randn(96, 6, generator=gen), y)

        self.train_set, self.val_set, self.test_set = split(), split(), split()

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=self.batch_size)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=self.batch_size)


class ConstantPenalty:
    """Adds ``value`` to the loss (times zero of a parameter, so the graph is connected)."""

    def __init__(self, value: float = 2.5) -> None:
        self.value = value

    def penalty(self, model: nn.Module) -> Tensor:
        anchor = next(model.parameters())
        return anchor.sum() * 0.0 + self.value


class HeadL2(nn.Module):
    """``weight * ||head.weight||^2``; an nn.Module with a buffer, like EWC's state."""

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("weight", torch.tensor(float(weight)))

    def penalty(self, model: nn.Module) -> Tensor:
        return self.weight * model.get_submodule("head").weight.pow(2).sum()
