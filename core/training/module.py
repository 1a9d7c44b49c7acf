"""``FineTuneModule``: the LightningModule every domain app subclasses.

It owns what every fine-tuning run has in common, so an app only says how a batch becomes a
loss: the model and its adapter (injected here, so only adapter weights and the listed
``modules_to_save`` train), the anti-forgetting regularizers (their penalties are added to
the training loss and logged one by one), the optimizer and LR scheduler (built from
``OptimizerCallable`` / ``LRSchedulerCallable`` so YAML and ``--model.optimizer.lr`` both
work) and the loss function.

Subclasses implement ``forward`` and ``shared_step(batch, stage) -> dict``; the dict holds
``"loss"`` (except when predicting) and optionally scalar metrics, which are logged as
``{stage}/{name}``.
"""

import copy
import dataclasses
import importlib
from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from jsonargparse import set_parsing_settings
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from core.adapters import AdapterConfig, config_from_dict, inject, resolve_modules_to_save

from .penalties import compute_penalties, end_stage, penalty_names, start_stage
from .regularizer_protocol import Regularizer
from .report import TestReport, metrics_table

# Adapter configs are dataclasses. jsonargparse treats a pure dataclass as a fixed group of
# fields; enabling subclasses lets a YAML (and the command line) pick the method by
# ``class_path: core.adapters.LoraConfig`` and lets ``--help`` list every known method.
set_parsing_settings(subclasses_enabled=[AdapterConfig])

STAGES = ("train", "val", "test", "predict")


def default_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy (mean over the batch), the loss used when none is configured."""
    return F.cross_entropy(logits, target)


def coerce_adapter_config(adapter: AdapterConfig | dict | None) -> AdapterConfig | None:
    """Accept an ``AdapterConfig`` or its dict forms, as found in configs and checkpoints.

    Dicts are either registry style (``{"method": "lora", "r": 4}``) or jsonargparse style
    (``{"class_path": "core.adapters.LoraConfig", "init_args": {...}}``).
    """
    if adapter is None or isinstance(adapter, AdapterConfig):
        return adapter
    if isinstance(adapter, dict) and "class_path" in adapter:
        module_name, _, class_name = str(adapter["class_path"]).rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError, ValueError) as err:
            raise ValueError(
                f"adapter class_path {adapter['class_path']!r} cannot be imported; use e.g. "
                "core.adapters.LoraConfig."
            ) from err
        if not (isinstance(cls, type) and issubclass(cls, AdapterConfig)):
            raise ValueError(
                f"adapter class_path {adapter['class_path']!r} is not an AdapterConfig subclass."
            )
        return cls(**dict(adapter.get("init_args") or {}))
    if isinstance(adapter, dict):
        return config_from_dict(adapter)
    raise TypeError(
        f"adapter must be an AdapterConfig (e.g. LoraConfig(r=8)), a dict with a 'method' "
        f"key, or None; got {type(adapter).__name__}."
    )


def _plain(value: Any) -> Any:
    """A YAML/``torch.load(weights_only=True)``-safe copy of a hyperparameter, or ``...``.

    Adapter configs become ``{"class_path", "init_args"}`` dicts; objects that are not plain
    data (callables, modules) are dropped (``...``): the run's ``config.yaml`` holds them.
    """
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, AdapterConfig):
        cls = type(value)
        return {
            "class_path": f"{cls.__module__}.{cls.__qualname__}",
            "init_args": _plain(dataclasses.asdict(value)),
        }
    if isinstance(value, list | tuple):
        items = [_plain(v) for v in value]
        return ... if any(v is ... for v in items) else items
    if isinstance(value, dict):
        items = {str(k): _plain(v) for k, v in value.items()}
        return ... if any(v is ... for v in items.values()) else items
    return ...


class FineTuneModule(pl.LightningModule):
    """Base LightningModule for fine-tuning a model with an adapter, regularizers and a loss.

    Args:
        model: The network. With an ``adapter``, the adapter is injected into it in place and
            every base parameter is frozen.
        adapter: Adapter to inject, chosen by class, e.g. ``core.adapters.LoraConfig``
            (YAML: ``class_path: core.adapters.LoraConfig`` + ``init_args``). ``None`` trains
            the whole model (or only ``modules_to_save`` when that is given).
        modules_to_save: Modules trained in full next to the adapter, e.g. ``["head"]`` for
            a new classification head (PEFT's ``modules_to_save``: a module name or dotted
            suffix). They are saved inside the adapter file. With no adapter, everything
            else is frozen (a linear probe when it names the head).
        regularizers: Objects with ``penalty(model) -> Tensor``; each penalty is added to
            the training loss and logged as ``train/reg/<name>`` (see
            ``core.training.penalties`` for ``observe``/``ready`` and the stage hooks, and
            ``core.regularizers`` for the methods). ``core.regularizers.RegularizerCallback``
            attaches more from outside.
        optimizer: Builds the optimizer from the trainable parameters only
            (default ``torch.optim.AdamW`` with lr 1e-3).
        lr_scheduler: Optional; builds an LR scheduler from the optimizer. Stepped every
            epoch; ``ReduceLROnPlateau`` watches ``monitor``.
        loss: ``loss(output, target) -> Tensor``, for ``shared_step`` to call as
            ``self.loss_fn``. Defaults to cross-entropy.
        monitor: Metric that ``ReduceLROnPlateau`` watches.
        calibration_batches: For data-dependent adapter inits (LoRA ``init="corda"``): how
            many training batches feed the calibration. Such an adapter is injected in
            ``setup`` (when the data is there), each batch run through
            :meth:`calibration_forward`.
    """

    def __init__(
        self,
        model: nn.Module,
        adapter: AdapterConfig | None = None,
        modules_to_save: list[str] | None = None,
        regularizers: list[Regularizer] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        loss: Callable[..., Any] = default_loss,
        monitor: str = "val/loss",
        calibration_batches: int = 8,
    ) -> None:
        super().__init__()
        # The model object is saved by the state dict, not as a hyperparameter; the rest is
        # kept only where it is plain data, so checkpoints load with weights_only=True.
        self.save_hyperparameters(ignore=["model"])
        self._make_hparams_plain()

        self.model = model
        self.adapter_config = coerce_adapter_config(adapter)
        self.modules_to_save = list(modules_to_save or [])
        try:
            self._saved_modules = resolve_modules_to_save(self.model, self.modules_to_save)
        except ValueError as err:
            raise ValueError(f"model.modules_to_save: {err}") from err
        if self.adapter_config is not None:
            if self.modules_to_save:
                both = list(self.adapter_config.modules_to_save or []) + self.modules_to_save
                self.adapter_config = dataclasses.replace(
                    self.adapter_config, modules_to_save=list(dict.fromkeys(both))
                )
            if not self.needs_calibration:
                self._inject()
        elif self._saved_modules:
            self.model.requires_grad_(False)
            for name in self._saved_modules:
                self.model.get_submodule(name).requires_grad_(True)

        regs = list(regularizers or [])
        _check_regularizers(regs)
        self._regularizers = regs
        # nn.Module regularizers become sub-modules so their buffers are checkpointed.
        self.regularizer_modules = nn.ModuleList([r for r in regs if isinstance(r, nn.Module)])
        # Regularizers attached from outside (core.regularizers.RegularizerCallback): used the
        # same way, but not sub-modules; the callback checkpoints their state itself.
        self._attached_regularizers: list[Regularizer] = []
        self._regularizer_names = penalty_names(regs)

        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.loss_fn = loss
        self.monitor = monitor
        if calibration_batches < 1:
            raise ValueError(f"model.calibration_batches={calibration_batches} must be at least 1.")
        self.calibration_batches = calibration_batches

    # ------------------------------------------------------------------ adapter injection
    @property
    def needs_calibration(self) -> bool:
        """Whether the adapter config needs calibration data (LoRA CorDA), so injecting it
        waits for ``setup`` (the config says so: ``AdapterConfig.needs_calibration``)."""
        return self.adapter_config is not None and self.adapter_config.needs_calibration

    def _inject(self, **kwargs: Any) -> None:
        try:
            inject(self.model, self.adapter_config, **kwargs)
        except (ValueError, TypeError) as err:
            kind = TypeError if isinstance(err, TypeError) else ValueError
            raise kind(f"model.adapter: {err}") from err
        self._injected = True

    def calibration_forward(self, batch: Any) -> Any:
        """Run one training batch through the model for adapter calibration.

        The default feeds the first element of a tuple/list batch (``(x, y)``) or a tensor
        batch to ``forward``; apps with other batch layouts override this.
        """
        inputs = batch[0] if isinstance(batch, list | tuple) else batch
        return self(inputs)

    def setup(self, stage: str) -> None:
        """Inject a data-dependent adapter once the data module is ready.

        During ``fit`` the first ``calibration_batches`` training batches calibrate it; for
        the other stages the adapter's structure is built to receive a checkpoint.
        """
        if not self.needs_calibration or getattr(self, "_injected", False):
            return
        if stage != "fit":
            self._inject(structure_only=True)
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            raise ValueError(
                "model.adapter: LoRA init='corda' calibrates on training batches and needs a "
                "LightningDataModule; pass datamodule= to fit, or use init='pissa'/'default'."
            )
        loader = datamodule.train_dataloader()
        batches = [batch for _, batch in zip(range(self.calibration_batches), loader, strict=False)]
        self._inject(
            calibration=batches, forward=lambda _model, batch: self.calibration_forward(batch)
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint holds the calibrated adapter: build its structure to load it into."""
        if self.needs_calibration and not getattr(self, "_injected", False):
            self._inject(structure_only=True)

    # ------------------------------------------------------------------ setup helpers
    def _make_hparams_plain(self) -> None:
        plain = {k: _plain(v) for k, v in self.hparams.items()}
        self.hparams.clear()
        self.hparams.update({k: v for k, v in plain.items() if v is not ...})
        self._hparams_initial = copy.deepcopy(self._hparams)

    @property
    def regularizers(self) -> list[Regularizer]:
        """The regularizers: those given to ``__init__``, then the attached ones, in order."""
        return [*self._regularizers, *self._attached_regularizers]

    def attach_regularizers(self, regularizers: list[Regularizer]) -> None:
        """Add regularizers from outside (a callback, a continual runner) for later steps.

        They are treated exactly like the ``regularizers`` given to ``__init__`` (penalty
        added to the loss, logged as ``train/reg/<name>``) but are not registered as
        sub-modules, so the module's state dict, and checkpoints loaded without the
        attaching callback, do not change. Attaching an object twice is a no-op.
        """
        _check_regularizers(list(regularizers))
        present = {id(r) for r in self.regularizers}
        for reg in regularizers:
            if id(reg) not in present:
                self._attached_regularizers.append(reg)
                present.add(id(reg))
        self._regularizer_names = penalty_names(self.regularizers)

    def detach_regularizers(self, regularizers: list[Regularizer]) -> None:
        """Remove regularizers added by :meth:`attach_regularizers` (others are ignored)."""
        drop = {id(r) for r in regularizers}
        self._attached_regularizers = [r for r in self._attached_regularizers if id(r) not in drop]
        self._regularizer_names = penalty_names(self.regularizers)

    def saved_module_parameters(self) -> dict[str, Tensor]:
        """Parameters of the ``modules_to_save`` modules of ``self.model``, by full name."""
        return {
            f"{module}.{n}": p
            for module in self._saved_modules
            for n, p in self.model.get_submodule(module).named_parameters()
        }

    def optimizer_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) for everything the optimizer updates: trainable, not regularizer."""
        for name, param in self.named_parameters():
            if param.requires_grad and not name.startswith("regularizer_modules."):
                yield name, param

    # ------------------------------------------------------------------ subclass API
    def shared_step(self, batch: Any, stage: str) -> dict[str, Any]:
        """Compute ``{"loss": ..., <metric>: ...}`` for one batch in ``stage``.

        ``stage`` is one of ``"train"``, ``"val"``, ``"test"``, ``"predict"``. Scalar entries
        are logged as ``{stage}/{key}``; an integer ``"batch_size"`` entry, when given, weights
        the epoch averages. In ``"predict"`` the dict is returned as the prediction and
        ``"loss"`` may be absent.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement shared_step().")

    def test_report(self) -> TestReport | None:
        """What ``report.md`` says after ``test`` (written by ``run_cli``'s ``ReportWriter``).

        Called once at the end of ``test`` on global rank zero, after ``on_test_epoch_end``.
        The default reports the logged ``test/*`` metrics (``None`` when there are none).
        Override it to add sections and figures, starting from ``super().test_report()``;
        see :mod:`core.training.report`.
        """
        metrics = {k: v for k, v in self.trainer.callback_metrics.items() if k.startswith("test/")}
        if not metrics:
            return None
        sections = {"Metrics": metrics_table(metrics)}
        if self.trainer.ckpt_path:
            sections["Weights"] = f"Loaded from `{self.trainer.ckpt_path}`."
        return TestReport(title=f"{type(self).__name__}: test", sections=sections)

    # ------------------------------------------------------------------ Lightning hooks
    def regularization_penalties(self, batch: Any = None) -> dict[str, Tensor]:
        """Each regularizer's penalty on ``self.model``, by logged name.

        ``batch`` (the training batch) is shown first to regularizers that ``observe`` it
        (LwF, DR-Tune); regularizers not yet ``update``-d contribute zero. See
        :func:`core.training.penalties.compute_penalties`.
        """
        return compute_penalties(
            self.regularizers, self.model, batch=batch, names=self._regularizer_names
        )

    def on_train_start(self) -> None:
        """Regularizers' stage hooks: Half Fine-Tuning freezes this stage's half here."""
        start_stage(self.regularizers, self.model)

    def on_train_end(self) -> None:
        """Regularizers' stage hooks: Half Fine-Tuning makes its frozen half trainable again."""
        end_stage(self.regularizers, self.model)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        out = dict(self.shared_step(batch, "train"))
        penalties = self.regularization_penalties(batch)
        if penalties:
            out["task_loss"] = out["loss"]
            for name, value in penalties.items():
                out[f"reg/{name}"] = value
            out["loss"] = out["loss"] + sum(penalties.values())
        self._log_outputs(out, "train")
        return out["loss"]

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        out = self.shared_step(batch, "val")
        self._log_outputs(out, "val")
        return out

    def test_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        out = self.shared_step(batch, "test")
        self._log_outputs(out, "test")
        return out

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        return self.shared_step(batch, "predict")

    def _log_outputs(self, out: dict[str, Any], stage: str) -> None:
        if "loss" not in out:
            raise KeyError(
                f"{type(self).__name__}.shared_step(batch, {stage!r}) must return a dict with "
                f"a 'loss' entry; got keys {sorted(out)}."
            )
        batch_size = out.get("batch_size")
        training = stage == "train"
        for key, value in out.items():
            if key == "batch_size" or not _is_scalar(value):
                continue
            self.log(
                f"{stage}/{key}",
                value.detach().float() if isinstance(value, Tensor) else float(value),
                prog_bar=not key.startswith("reg/"),
                on_step=training,
                on_epoch=True,
                # Averaged over ranks under DDP, so logs and metrics.json describe all data.
                sync_dist=True,
                batch_size=batch_size,
            )

    def configure_optimizers(self) -> Any:
        params = [p for _, p in self.optimizer_parameters()]
        if not params:
            raise ValueError(
                f"{type(self).__name__} has no trainable parameters: set model.adapter, "
                "model.modules_to_save, or leave both empty to train the whole model."
            )
        optimizer = self.optimizer_factory(params)
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        config: dict[str, Any] = {"scheduler": scheduler, "interval": "epoch"}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = self.monitor
        return {"optimizer": optimizer, "lr_scheduler": config}


def _is_scalar(value: Any) -> bool:
    if isinstance(value, Tensor):
        return value.numel() == 1 and (value.is_floating_point() or value.dtype == torch.long)
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_regularizers(regularizers: list[Any]) -> None:
    for reg in regularizers:
        if not callable(getattr(reg, "penalty", None)):
            raise TypeError(
                f"regularizer {reg!r} has no penalty(model) method; regularizers must "
                "implement penalty(model) -> Tensor."
            )
