"""Small modules, data and regularizers shared by the core.training tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from core.training import FineTuneModule


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


def trainer_args(**options: Any) -> list[str]:
    """``--trainer.<name> <value>`` for each option, as typed on a command line (booleans as
    ``true``/``false``): ``trainer_args(max_epochs=1)`` is ``["--trainer.max_epochs", "1"]``.
    """
    args: list[str] = []
    for name, value in options.items():
        args += [f"--trainer.{name}", str(value).lower() if isinstance(value, bool) else str(value)]
    return args


def toy_app_configs(folder: Path, module: str, **model: Any) -> dict[bool, Path]:
    """``{subclass_mode: default config}`` of a toy app, written in ``folder``: ``plain.yaml``
    for an app that fixes its module class, ``picked.yaml`` for one whose config picks it
    (``class_path: <module>``). Both hold the ``model`` options (``init_args`` when picked),
    if any, and a data batch size of 16.
    """
    data = {"batch_size": 16}
    picked_model: dict[str, Any] = {"class_path": module}
    if model:
        picked_model["init_args"] = model
    contents = {
        False: {"model": model, "data": data} if model else {"data": data},
        True: {"model": picked_model, "data": data},
    }
    paths = {False: folder / "plain.yaml", True: folder / "picked.yaml"}
    for mode, path in paths.items():
        path.write_text(yaml.safe_dump(contents[mode], sort_keys=False))
    return paths


class ToyNet(nn.Module):
    def __init__(self, in_features: int = 6, hidden: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class ToyModule(FineTuneModule):
    """A FineTuneModule over :class:`ToyNet` (seeded init).

    Args:
        seed: Seeds the network's initial weights.
        **kwargs: The :class:`~core.training.FineTuneModule` options (``adapter``,
            ``regularizers``, ``optimizer``, ...), passed through unchanged.
    """

    def __init__(self, seed: int = 0, **kwargs: Any) -> None:
        torch.manual_seed(seed)
        super().__init__(ToyNet(), **kwargs)

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
