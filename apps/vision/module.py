"""``VisionModule``: robust fine-tuning of an image-text classifier (CLIP-style).

One module covers the method table; a recipe (``configs/*.yaml``) picks the method:

=================  ===========================================================================
zero-shot          no training (``trainer.max_epochs: 0``): head = class x template prompts
linear probe       ``modules_to_save: [head]``: only the (zero-shot initialised) head trains
full fine-tuning   everything trains with cross-entropy, head initialised zero-shot
LP-FT              ``head_init: linear_probe``: logistic regression on frozen features
                   first (Kumar et al., 2022), then full fine-tuning
FLYP               ``objective: flyp``: the CLIP contrastive loss between images and their
                   class captions; the head is always the text side's zero-shot classifier
m2-mix             FLYP + ``mixup_weight > 0``: geodesic multimodal mixup hard negatives
SSF / LoRA         ``adapter: core.adapters.SsfConfig`` / ``LoraConfig`` (+ head)
L2-SP / EWC        ``regularizers: [core.regularizers.L2SP / EWC]`` anchored at the start
WiSE-FT, soups     post hoc, in weight space: :mod:`apps.vision.robust`
=================  ===========================================================================

Regularizers given here are ``update``-d on the starting (zero-shot) model when fitting
begins (EWC's Fisher on the training data), so they pull toward the pre-trained weights.

At the end of ``test`` the module scores the zero-shot weights, the tested weights and the
WiSE-FT sweep between them on ID validation, ID test and every shift of the data module
(:func:`apps.vision.robust.evaluate_robustness`), writes ``results.jsonl``, ``wiseft.json``
and ``wiseft/alpha_<a>.safetensors`` into the run directory, prints the ID / OOD table, and
returns it with the frontier and reliability plots from :meth:`VisionModule.test_report`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.training import FineTuneModule, TestReport, append_manifest

from .alignment import AlignmentConfig
from .losses import contrastive_loss, geodesic_mixup_loss
from .model import build_classifier
from .report import add_robustness, format_table
from .robust import (
    DEFAULT_ALPHAS,
    RobustnessResult,
    clone_state,
    evaluate_robustness,
    write_results,
)

__all__ = ["VisionModule"]


class VisionModule(FineTuneModule):
    """Fine-tune a zero-shot image-text classifier; see the module docstring for methods.

    Args:
        backbone: ``"embedded"``, ``"open_clip:<arch>"`` or ``"timm:<name>"``
            (:func:`apps.vision.model.build_classifier`).
        pretrained: Local weight file of an open_clip / timm backbone (``None``: random
            initialisation; the embedded backbone's weights ship in packages).
        class_names: Class names in label order (default: the ten digit names); linked to
            ``data.class_names`` on the command line.
        templates: Prompt templates, each with one ``{}`` (default: eight digit prompts).
        split: Embedded backbone: EfficientNet block where the frozen trunk ends (linked to
            ``data.split``, where the cached trunk features end).
        embed_dim: Embedded backbone: joint embedding size of the LiT heads.
        alignment_steps: Embedded backbone: LiT optimisation steps (cached per value).
        alignment_images / alignment_copies: Embedded backbone: scikit-learn digits used
            for LiT (``None``: all 1,797) and augmented copies of each (tiny runs use few).
        cache_dir: The LiT cache instead of ``<cache root>/vision`` (linked to
            ``data.cache_dir``).
        text_model_path: Local sentence-transformer directory (default: packaged MiniLM).
        objective: ``"ce"`` (cross-entropy on the head) or ``"flyp"`` (CLIP loss).
        head_init: ``"zeroshot"``, ``"linear_probe"`` (LP-FT) or ``"random"``.
        lp_c: Inverse L2 strength of the linear-probe logistic regression.
        mixup_weight: Weight of the geodesic multimodal mixup loss (FLYP only; 0 = off).
        mixup_beta: Mixing ratio ``lam ~ Beta(b, b)``.
        method: Name of the method in ``results.jsonl`` and ``report.md`` (a label).
        wiseft_alphas: WiSE-FT mixing weights scored at test (``None``: 0, 0.1, ..., 1;
            ``[]``: no sweep).
        save_wiseft: Write one ``wiseft/alpha_<a>.safetensors`` per alpha at test.
        **kwargs: The :class:`~core.training.FineTuneModule` options (``adapter``,
            ``modules_to_save``, ``regularizers``, ``optimizer``, ``lr_scheduler``, ``loss``,
            ``monitor``, ``calibration_batches``), passed through unchanged.
    """

    def __init__(
        self,
        backbone: str = "embedded",
        pretrained: str | None = None,
        class_names: list[str] | None = None,
        templates: list[str] | None = None,
        split: int = 6,
        embed_dim: int = 256,
        alignment_steps: int = 400,
        alignment_images: int | None = None,
        alignment_copies: int = 3,
        cache_dir: str | None = None,
        text_model_path: str | None = None,
        objective: Literal["ce", "flyp"] = "ce",
        head_init: Literal["zeroshot", "linear_probe", "random"] = "zeroshot",
        lp_c: float = 10.0,
        mixup_weight: float = 0.0,
        mixup_beta: float = 0.5,
        method: str = "finetuned",
        wiseft_alphas: list[float] | None = None,
        save_wiseft: bool = True,
        **kwargs: Any,
    ) -> None:
        if objective not in ("ce", "flyp"):
            raise ValueError(f"model.objective={objective!r} must be 'ce' or 'flyp'.")
        if head_init not in ("zeroshot", "linear_probe", "random"):
            raise ValueError(
                f"model.head_init={head_init!r} must be 'zeroshot', 'linear_probe' or 'random'."
            )
        if mixup_weight < 0 or mixup_beta <= 0:
            raise ValueError("model.mixup_weight must be >= 0 and model.mixup_beta > 0.")
        if mixup_weight > 0 and objective != "flyp":
            raise ValueError("model.mixup_weight > 0 needs model.objective: flyp.")
        alignment = AlignmentConfig(
            embed_dim=embed_dim,
            steps=alignment_steps,
            max_images=alignment_images,
            copies=alignment_copies,
        )
        model = build_classifier(
            backbone,
            pretrained,
            class_names,
            templates,
            split,
            alignment=alignment,
            cache_dir=cache_dir,
            text_model_path=text_model_path,
        )
        if model.prompt_features is None and (objective == "flyp" or head_init == "zeroshot"):
            raise ValueError(
                f"model.backbone={backbone!r} has no text tower: use model.objective: ce with "
                "model.head_init: linear_probe or random."
            )
        super().__init__(model=model, **kwargs)
        self.objective, self.head_init, self.lp_c = objective, head_init, lp_c
        self.mixup_weight, self.mixup_beta = mixup_weight, mixup_beta
        self.method = method
        self.wiseft_alphas = DEFAULT_ALPHAS if wiseft_alphas is None else list(wiseft_alphas)
        self.save_wiseft = save_wiseft
        if objective == "flyp":
            # The head is derived from the text side, never trained directly.
            self.model.head.requires_grad_(False)
        if head_init == "random":
            with torch.no_grad():
                nn.init.normal_(self.model.head.weight, std=0.01)
                self.model.head.bias.zero_()
        #: The starting weights (zero-shot head, adapters at identity): WiSE-FT's theta_0.
        self.initial_state = clone_state(self.model)
        self._head_ready = head_init != "linear_probe"
        #: What the last test found under shift (set at the end of ``test``).
        self.robustness: RobustnessResult | None = None

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        """Fit LP-FT's linear probe before fitting; check the class count against the data."""
        super().setup(stage)
        if stage == "fit" and not self._head_ready:
            datamodule = getattr(self.trainer, "datamodule", None)
            if datamodule is None:
                raise ValueError("model.head_init: linear_probe needs a datamodule to fit on.")
            self.fit_linear_probe(datamodule.train_dataloader())
        self._names_match_data()

    def _names_match_data(self) -> None:
        """The head must have one output per class of the data module."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        names = getattr(datamodule, "class_names", None)
        if names is not None and len(names) != self.model.num_classes:
            raise ValueError(
                f"the data has {len(names)} classes but the model {self.model.num_classes}; "
                "set data.class_names (model.class_names follows it on the command line; "
                "from Python give both the same list)."
            )

    @torch.no_grad()
    def embed_loader(self, loader: Any) -> tuple[Tensor, Tensor]:
        """Normalized image embeddings and labels of a whole loader (eval mode)."""
        was = self.model.training
        self.model.eval()
        embs, labels = [], []
        for x, y in loader:
            embs.append(self.model.embed_image(x.float().to(self.device)).cpu())
            labels.append(y)
        self.model.train(was)
        return torch.cat(embs), torch.cat(labels)

    @torch.no_grad()
    def fit_linear_probe(self, loader: Any) -> float:
        """LP step of LP-FT: multinomial logistic regression on frozen normalized embeddings.

        Sets the head to the fitted weights and returns the training accuracy.
        """
        from sklearn.linear_model import LogisticRegression

        emb, y = self.embed_loader(loader)
        clf = LogisticRegression(C=self.lp_c, max_iter=2000)
        clf.fit(emb.double().numpy(), y.numpy())
        if len(clf.classes_) != self.model.num_classes:
            raise ValueError(
                f"linear probe: the training data holds {len(clf.classes_)} of "
                f"{self.model.num_classes} classes; every class needs training images."
            )
        head = self.model.head
        head.weight.copy_(torch.from_numpy(clf.coef_).to(head.weight))
        head.bias.copy_(torch.from_numpy(clf.intercept_).to(head.bias))
        self._head_ready = True
        return float(clf.score(emb.double().numpy(), y.numpy()))

    def on_fit_start(self) -> None:
        """Anchor the regularizers (L2-SP snapshot, EWC Fisher) at the starting weights."""
        for reg in self.regularizers:
            if callable(getattr(reg, "update", None)) and not getattr(reg, "ready", True):
                reg.update(self.model, self.trainer.datamodule.train_dataloader())

    # ------------------------------------------------------------------ FLYP head
    @torch.no_grad()
    def refresh_head(self) -> None:
        """FLYP: the classifier is the text side's zero-shot head at every evaluation."""
        if self.objective == "flyp":
            self.model.reset_head_to_zero_shot()

    def on_validation_epoch_start(self) -> None:
        self.refresh_head()

    def on_test_epoch_start(self) -> None:
        self.refresh_head()
        self.robustness = None

    def on_predict_epoch_start(self) -> None:
        self.refresh_head()

    def on_train_end(self) -> None:
        super().on_train_end()
        self.refresh_head()

    # ------------------------------------------------------------------ steps
    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.float())

    def _flyp_loss(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        m = self.model
        img = m.embed_image(x.float())
        feats = m.prompt_features
        t = torch.randint(0, feats.shape[1], (len(y),), device=y.device)
        txt = F.normalize(m.text_proj(feats[y, t]), dim=-1)
        out = {"clip_loss": contrastive_loss(img, txt, m.logit_scale, y)}
        loss = out["clip_loss"]
        if self.mixup_weight > 0:
            beta = torch.distributions.Beta(self.mixup_beta, self.mixup_beta)
            lam = beta.sample((len(y),)).to(img)
            out["mix_loss"] = geodesic_mixup_loss(img, txt, y, m.logit_scale, lam)
            loss = loss + self.mixup_weight * out["mix_loss"]
        with torch.no_grad():
            logits = m.logit_scale * img @ m.zero_shot_weights().t()
        out["loss"], out["logits"] = loss, logits
        return out

    def shared_step(self, batch: Any, stage: str) -> dict[str, Any]:
        x, y = batch
        if stage == "train" and self.objective == "flyp":
            out = self._flyp_loss(x, y)
            logits = out.pop("logits")
        else:
            logits = self(x)
            out = {"loss": self.loss_fn(logits, y)}
        if stage == "predict":
            return {"probs": logits.softmax(-1), "target": y}
        out["acc"] = (logits.argmax(-1) == y).float().mean()
        out["batch_size"] = len(y)
        return out

    # ------------------------------------------------------------------ test: under shift
    def on_test_epoch_end(self) -> None:
        """Score zero-shot, tested and WiSE-FT weights under shift; write the run's files.

        Needs a data module with ``eval_sets()`` (:class:`apps.vision.data.VisionDataModule`);
        without one there is nothing to add. Files go into the run directory, which only a
        run with a logger has (a bare ``Trainer(logger=False)`` writes nothing). Runs on
        global rank zero; finding the run directory is a collective call, made on every rank.
        """
        trainer = self.trainer
        run_dir = Path(trainer.log_dir) if trainer.logger is not None else None
        eval_sets = getattr(trainer.datamodule, "eval_sets", None)
        if not trainer.is_global_zero or not callable(eval_sets):
            return
        wiseft_dir = run_dir / "wiseft" if run_dir is not None and self.save_wiseft else None
        result = evaluate_robustness(
            self.model,
            self.initial_state,
            eval_sets(),
            self.method,
            self.wiseft_alphas,
            wiseft_dir,
            self.device,
        )
        self.robustness = result
        if run_dir is not None:
            written = write_results(result, run_dir)
            written += [wiseft_dir] if wiseft_dir is not None and result.curve else []
            for path in written:
                append_manifest(run_dir, "robustness", path, rank=trainer.global_rank)
        print(f"\nID / OOD accuracy (ID test; OOD = mean over {len(result.shifts)} shifts):")
        print(format_table(result.summary_rows(), result.shifts))
        if result.best_alpha is not None:
            print(f"WiSE-FT alpha chosen on ID validation: {result.best_alpha:.1f}")
        if run_dir is not None:
            print(f"results: {run_dir / 'results.jsonl'}\n")

    def test_report(self) -> TestReport | None:
        """The test metrics, then the ID / OOD table, the WiSE-FT sweep and the two plots."""
        report = super().test_report()
        if self.robustness is None:
            return report
        report = report or TestReport(title="")
        report.title = f"Vision: {self.method} under distribution shift"
        return add_robustness(report, self.robustness)
