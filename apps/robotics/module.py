"""The Lightning module of the robotics app: behaviour cloning of a VLA policy, then closed loop.

:class:`PolicyModule` wraps :class:`apps.robotics.policy.VLAPolicy` (EfficientNet-Lite0 and
MiniLM towers, FiLM, spatial softmax, one action head) in the core's ``FineTuneModule``:

- **fit**: the head's loss on normalised action chunks (behaviour cloning); the validation
  loss is the same loss on held-out demonstrations;
- **test**: the offline loss on the held-out demonstrations, then the policy is run **closed
  loop** in the tabletop suite on held-out seeds (:func:`apps.robotics.evaluation.evaluate`):
  success per instruction condition (trained wording, held-out paraphrases, blank) with
  Wilson intervals, the baselines on the same seeds, the policy's speed. The rates are logged
  as ``test/success/<condition>`` (so they land in ``metrics.json``), the full results go to
  ``evaluation.json`` and a few rollouts to GIFs in the run directory, and ``report.md`` gets
  the tables (:func:`apps.robotics.report.add_evaluation`).

What trains: with ``adapter: null`` (the default config), ``train_top`` picks full fine-tuning
of the image tower's top block (True, the default) or only the new layers (False), plus the new
layers (instruction pooling, FiLM, keypoints, MLP, action head); with an ``adapter`` (e.g.
``lora.yaml``: LoRA r = 8 on the top block), the adapter plus the new layers as its
``modules_to_save``. The trunk is always frozen, which is what lets the data module cache its
features.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from core.adapters import AdapterConfig
from core.atomic import atomic_write_text
from core.training import FineTuneModule
from core.training.module import coerce_adapter_config
from core.training.report import TestReport
from core.training.schedules import with_warmup_cosine

from .augment import InstructionAugmenter, drop_words
from .chunking import MODES as CHUNK_MODES
from .chunking import ChunkExecutor
from .evaluation import BASELINES, INSTRUCTION_MODES, evaluate, results_to_dict, write_rollout_gifs
from .normalize import Normalizer
from .policy import NEW_MODULES, TOP_PREFIX, VLAPolicy, adapter_config
from .report import add_evaluation

#: How predicted chunks become actions (``model.execution``): a ChunkExecutor mode, or
#: ``first`` (re-plan every step, play the chunk's first action).
EXECUTIONS = ("first", *CHUNK_MODES)
#: The evaluation file written beside ``report.md``.
EVALUATION_FILE = "evaluation.json"
#: The policy's configuration and normalisation, beside ``adapter/`` (what a user needs to
#: rebuild the policy from the adapter alone).
POLICY_FILE = "policy.json"


class PolicyModule(FineTuneModule):
    """Fine-tune a vision-language-action policy by behaviour cloning; test it closed loop.

    Args:
        head: Action head: ``"l1_chunk"`` (OpenVLA-OFT), ``"tokens"`` (OpenVLA's 256 bins) or
            ``"diffusion"`` (TinyVLA-style).
        chunk_size: Actions per predicted chunk (set by ``data.chunk_size``).
        head_options: Keyword arguments of the head (e.g. ``{"bins": 256}``,
            ``{"steps": 10}``).
        pretrained_towers: ImageNet weights for the image tower (False: random initialisation
            drawn from ``tower_seed``; set by ``data.pretrained_trunk`` so the cached trunk
            features match).
        tower_seed: Seed of that random initialisation (set by ``data.seed``).
        trunk_split: Blocks in the frozen trunk (set by ``data.trunk_split``).
        top_blocks: Fine-tunable blocks after the trunk.
        num_keypoints: Spatial-softmax keypoints.
        feature_dim: Width of the policy's features.
        train_top: Without an adapter: train the top block in full (True) or only the new
            layers (False).
        execution: How chunks are played closed loop (:data:`EXECUTIONS`): ``ensemble``
            (temporal ensembling, ACT), ``receding`` (re-plan every step, first action),
            ``open_loop`` (play the whole chunk), ``first``.
        eval_episodes: Closed-loop episodes per instruction condition (held-out seeds).
        eval_conditions: Instruction conditions to evaluate (``trained``, ``paraphrase``,
            ``blank``).
        eval_envs: Environments stepped together during evaluation.
        eval_baselines: Baselines run on the same seeds (default all: ``expert``, ``random``,
            ``language_blind``).
        gif_episodes: Rollout GIFs written per condition.
        hz_steps: Control steps timed per speed measurement (0: no speed test).
        warmup_steps: Linear warm-up steps of the per-step warm-up + cosine schedule over the
            run (``core.training.schedules``; 0, or a recipe's own ``lr_scheduler``: none).
        word_dropout: Training-time instruction augmentation: each word of an instruction is
            dropped with this probability (random deletion, re-embedded by the text tower), so
            the policy cannot lean on one exact wording; 0 turns it off.
        instruction_augmentation: Training-time probability of replacing a demonstration's
            instruction by another wording of its task from the augmentation grammar
            (:class:`apps.robotics.augment.InstructionAugmenter`, DIAL-style; no word of the
            held-out paraphrases); 0 turns it off.
        augmentation_pool: Wordings per task in the augmentation pool.
        adapter: An adapter on the image tower's top (the default config: none; ``lora.yaml``:
            LoRA r = 8); its unset ``target_modules`` become the top's layers the method
            supports.
        **base: The other ``FineTuneModule`` arguments (optimizer, scheduler, regularizers).
    """

    def __init__(
        self,
        head: str = "l1_chunk",
        chunk_size: int = 8,
        head_options: dict[str, Any] | None = None,
        pretrained_towers: bool = True,
        tower_seed: int = 0,
        trunk_split: int = 2,
        top_blocks: int = 1,
        num_keypoints: int = 32,
        feature_dim: int = 256,
        train_top: bool = True,
        execution: str = "ensemble",
        eval_episodes: int = 100,
        eval_conditions: list[str] | None = None,
        eval_envs: int = 25,
        eval_baselines: list[str] | None = None,
        gif_episodes: int = 2,
        hz_steps: int = 20,
        warmup_steps: int = 100,
        word_dropout: float = 0.0,
        instruction_augmentation: float = 0.0,
        augmentation_pool: int = 64,
        adapter: AdapterConfig | None = None,
        **base: Any,
    ) -> None:
        if execution not in EXECUTIONS:
            raise ValueError(f"model.execution={execution!r} must be one of {list(EXECUTIONS)}")
        conditions = list(eval_conditions or INSTRUCTION_MODES)
        unknown = sorted(set(conditions) - set(INSTRUCTION_MODES))
        if unknown:
            raise ValueError(
                f"model.eval_conditions: unknown {unknown}; choose from {list(INSTRUCTION_MODES)}"
            )
        if eval_episodes < 1 or eval_envs < 1:
            raise ValueError(
                f"model.eval_episodes={eval_episodes} and model.eval_envs={eval_envs} must be >= 1"
            )
        config = coerce_adapter_config(adapter)
        policy = VLAPolicy(
            head=head,
            chunk_size=chunk_size,
            finetune="frozen" if config is not None or not train_top else "top",
            head_options=head_options,
            pretrained=pretrained_towers,
            seed=tower_seed,
            trunk_split=trunk_split,
            top_blocks=top_blocks,
            num_keypoints=num_keypoints,
            feature_dim=feature_dim,
        )
        if config is not None:
            try:
                config = adapter_config(config, policy.encoder.image.top, TOP_PREFIX)
            except ValueError as err:
                raise ValueError(f"model.adapter: {err}") from err
        super().__init__(model=policy, adapter=config, **base)
        self.execution = execution
        self.eval_settings = {
            "num_episodes": int(eval_episodes),
            "conditions": conditions,
            "num_envs": int(eval_envs),
            "baselines": list(BASELINES if eval_baselines is None else eval_baselines),
            "hz_steps": int(hz_steps),
        }
        self.gif_episodes = int(gif_episodes)
        self.warmup_steps = int(warmup_steps)
        if not 0.0 <= word_dropout < 1.0:
            raise ValueError(f"model.word_dropout={word_dropout} must lie in [0, 1)")
        self.word_dropout = float(word_dropout)
        try:
            self.augmenter = (
                InstructionAugmenter(instruction_augmentation, augmentation_pool, tower_seed)
                if instruction_augmentation > 0
                else None
            )
        except ValueError as err:
            raise ValueError(f"model.instruction_augmentation: {err}") from err
        self.evaluation: dict[str, Any] | None = None
        self._gifs: list[tuple[str, Any, str]] = []

    # ------------------------------------------------------------------ the policy
    @property
    def policy(self) -> VLAPolicy:
        return self.model

    def executor_factory(self) -> Any:
        """The evaluation's executor factory for :attr:`execution` (None: first action)."""
        if self.execution == "first":
            return None
        return functools.partial(ChunkExecutor, self.execution, self.policy.chunk_size)

    def _normalizer_from_data(self) -> None:
        """Give the policy the data's normaliser (the checkpoint's when one was loaded)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if datamodule is not None and hasattr(datamodule, "normalizer"):
            self.policy.normalizer = datamodule.normalizer

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self._normalizer_from_data()

    def configure_optimizers(self) -> Any:
        """The base optimizer with a per-step warm-up + cosine schedule over the run's steps
        (``max_steps`` or what ``max_epochs`` amounts to), unless the recipe sets its own."""
        configured = super().configure_optimizers()
        if self.lr_scheduler_factory is not None or self.warmup_steps <= 0:
            return configured
        return with_warmup_cosine(
            configured, self.warmup_steps, self.trainer.estimated_stepping_batches
        )

    # ------------------------------------------------------------------ steps
    def shared_step(self, batch: dict[str, Any], stage: str) -> dict[str, Any]:
        if stage == "train" and self.augmenter is not None:
            batch = {**batch, "instruction": self.augmenter(batch["instruction"])}
        if stage == "train" and self.word_dropout > 0:
            batch = {**batch, "instruction": drop_words(batch["instruction"], self.word_dropout)}
        return {"loss": self.policy.loss(batch), "batch_size": len(batch["instruction"])}

    def on_test_epoch_end(self) -> None:
        """Run the policy closed loop on held-out seeds and log the success rates."""
        self._normalizer_from_data()
        results = evaluate(
            self.policy,
            executor=self.executor_factory(),
            record_frames=self.gif_episodes,
            progress=True,
            **self.eval_settings,
        )
        self.evaluation = results
        for mode, entry in results["conditions"].items():
            self.log(f"test/success/{mode}", float(entry["summary"].rate))
        for name, entry in results["baselines"].items():
            self.log(f"test/baseline/{name}", float(entry["summary"].rate))
        out = self._run_dir()
        if out is None:
            return
        atomic_write_text(out / EVALUATION_FILE, json.dumps(results_to_dict(results)) + "\n")
        self._gifs = []
        for condition, entry in results["conditions"].items():
            for path, episode in write_rollout_gifs(entry["rollout"], out, 10, self.gif_episodes):
                self._gifs.append((path.name, episode, condition))

    def _run_dir(self) -> Path | None:
        """The run directory on global rank zero of a logged run (None: write nothing)."""
        trainer = self._trainer
        if trainer is None or trainer.logger is None or not trainer.is_global_zero:
            return None
        return Path(trainer.log_dir) if trainer.log_dir else None

    def test_report(self) -> TestReport | None:
        report = super().test_report()
        if report is None or self.evaluation is None:
            return report
        counts = self.policy.parameter_counts()
        report.sections["Policy"] = (
            f"Head `{self.policy.head.name}`, chunk {self.policy.chunk_size}, execution "
            f"`{self.execution}`; trainable parameters {counts['trainable']:,} (adapter "
            f"{counts['adapter']:,}, new layers {counts['new']:,}, top {counts['top']:,}), "
            f"frozen {counts['frozen']:,} (text tower not counted)."
        )
        return add_evaluation(report, self.evaluation, gifs=self._gifs)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        normalizer = self.policy.normalizer
        checkpoint["robotics"] = {
            "policy": self.policy.config,
            "normalizer": normalizer.to_dict() if normalizer is not None else None,
            "new_modules": list(NEW_MODULES),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get("robotics", {}).get("normalizer")
        if saved is not None:
            self.policy.normalizer = Normalizer.from_dict(saved)

    def on_fit_end(self) -> None:
        """Write ``policy.json`` (config + normalisation) beside the exported adapter."""
        out, normalizer = self._run_dir(), self.policy.normalizer
        if out is None or normalizer is None:
            return
        payload = {"policy": self.policy.config, "normalizer": normalizer.to_dict()}
        atomic_write_text(out / POLICY_FILE, json.dumps(payload, indent=2) + "\n")
