"""A small MLP digit classifier, fine-tuned through :class:`core.training.FineTuneModule`.

The reference for an app's module: it builds its network from its own arguments and passes
every other argument through to the base class (``**kwargs``), so adapter, regularizers,
optimizer, scheduler, loss, monitor and calibration options come from the core, on the
command line and in ``--help``, without being listed here. At test time it gathers a
confusion matrix and returns it in :meth:`DigitsClassifier.test_report` (``report.md`` and
``confusion.png``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from core.training import FineTuneModule
from core.training.report import TestReport


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
        **kwargs: The :class:`~core.training.FineTuneModule` options (``adapter``,
            ``modules_to_save``, ``regularizers``, ``optimizer``, ``lr_scheduler``, ``loss``,
            ``monitor``, ``calibration_batches``), passed through unchanged.
    """

    def __init__(
        self, hidden_size: int = 64, in_features: int = 64, num_classes: int = 10, **kwargs: Any
    ) -> None:
        if hidden_size < 1:
            raise ValueError(f"model.hidden_size={hidden_size} must be >= 1.")
        super().__init__(model=MLP(in_features, hidden_size, num_classes), **kwargs)
        self.num_classes = num_classes
        self._confusion: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> dict[str, Any]:
        x, y = batch
        logits = self(x)
        preds = logits.argmax(dim=-1)
        if stage == "predict":
            return {"preds": preds, "target": y}
        if stage == "test" and self._confusion is not None:
            pairs = y * self.num_classes + preds
            counts = torch.bincount(pairs, minlength=self.num_classes**2)
            self._confusion += counts.view(self.num_classes, self.num_classes)
        return {
            "loss": self.loss_fn(logits, y),
            "acc": (preds == y).float().mean(),
            "batch_size": len(y),
        }

    # ------------------------------------------------------------------ test report
    def on_test_epoch_start(self) -> None:
        """Start an empty confusion matrix (rows: true digit, columns: predicted)."""
        self._confusion = torch.zeros(
            self.num_classes, self.num_classes, dtype=torch.long, device=self.device
        )

    def on_test_epoch_end(self) -> None:
        """Sum the confusion matrix over ranks (a collective call: every rank is here)."""
        assert self._confusion is not None
        self._confusion = self.trainer.strategy.reduce(self._confusion, reduce_op="sum")

    def test_report(self) -> TestReport | None:
        """The test metrics, per-digit accuracy and the confusion matrix as a figure."""
        report = super().test_report()
        if report is None or self._confusion is None:
            return report
        confusion = self._confusion.cpu()
        rows = ["| digit | test images | accuracy |", "|---|---|---|"]
        for digit in range(self.num_classes):
            total = int(confusion[digit].sum())
            accuracy = f"{confusion[digit, digit].item() / total:.3f}" if total else "-"
            rows.append(f"| {digit} | {total} | {accuracy} |")
        report.sections["Per digit"] = "\n".join(rows)
        report.sections["Confusion matrix"] = (
            "Rows are the true digit, columns the predicted one.\n\n![confusion](confusion.png)"
        )
        report.figures["confusion"] = confusion_figure(confusion)
        return report


def confusion_figure(confusion: Tensor) -> Any:
    """A matplotlib figure of a confusion matrix with its counts written in the cells."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 4))
    ax = fig.add_subplot()
    ax.imshow(confusion.numpy(), cmap="Blues")
    n, dark = confusion.shape[0], confusion.max().item() / 2
    for i in range(n):
        for j in range(n):
            if confusion[i, j]:
                color = "white" if confusion[i, j] > dark else "black"
                ax.text(
                    j, i, int(confusion[i, j]), ha="center", va="center", fontsize=7, color=color
                )
    ax.set(xlabel="predicted", ylabel="true", xticks=range(n), yticks=range(n))
    ax.set_title("Digits: test confusion matrix")
    return fig
