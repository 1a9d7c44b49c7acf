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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from core.adapters import AdapterConfig
from core.training import FineTuneModule, Regularizer, default_loss

from .alignment import AlignmentConfig, contrastive_loss, lit_alignment, prompt_features_for
from .model import (
    DEFAULT_TEMPLATES,
    DIGIT_NAMES,
    ImageTextClassifier,
    build_open_clip,
    build_timm,
    check_templates,
    efficientnet_lite0,
    prompts,
)

__all__ = ["VisionModule", "build_classifier", "geodesic_mixup_loss", "slerp"]


def build_classifier(
    backbone: str = "embedded",
    checkpoint_path: str | None = None,
    class_names: list[str] | None = None,
    templates: list[str] | None = None,
    split: int = 6,
    embed_dim: int = 256,
    alignment_steps: int = 400,
    cache_dir: str | None = None,
    text_model_path: str | None = None,
    alignment_images: int | None = None,
    alignment_copies: int = 3,
) -> ImageTextClassifier:
    """The zero-shot classifier of a backbone.

    ``backbone``: ``"embedded"`` (EfficientNet-lite0 + MiniLM, LiT-aligned and cached),
    ``"open_clip:<arch>"`` (a CLIP model; ``checkpoint_path`` = its local weights) or
    ``"timm:<name>"`` (an image-only model: head from a linear probe or random, no FLYP).
    """
    names = list(class_names or DIGIT_NAMES)
    temps = check_templates(templates or DEFAULT_TEMPLATES)
    kind, _, name = backbone.partition(":")
    if kind == "embedded":
        align_cfg = AlignmentConfig(
            embed_dim=embed_dim,
            steps=alignment_steps,
            max_images=alignment_images,
            copies=alignment_copies,
        )
        lit = lit_alignment(align_cfg, cache_dir=cache_dir, text_model_path=text_model_path)
        feats = lit["prompt_features"]
        if names != DIGIT_NAMES or temps != DEFAULT_TEMPLATES:
            feats = prompt_features_for(names, temps, text_model_path)
        image_proj = nn.Linear(lit["image_proj"]["weight"].shape[1], embed_dim)
        image_proj.load_state_dict(lit["image_proj"])
        text_proj = nn.Linear(feats.shape[-1], embed_dim)
        text_proj.load_state_dict(lit["text_proj"])
        encoder = efficientnet_lite0(split=split)
        return ImageTextClassifier(encoder, image_proj, text_proj, feats, lit["logit_scale"])
    if kind == "open_clip" and name:
        import open_clip

        clip = build_open_clip(name, checkpoint_path).eval()
        tokenizer = open_clip.get_tokenizer(name)
        with torch.no_grad():
            feats = clip.encode_text(tokenizer(prompts(names, temps))).float()
        feats = F.normalize(feats, dim=-1).view(len(names), len(temps), -1)
        scale = float(clip.logit_scale.exp())
        return ImageTextClassifier(clip.visual, nn.Identity(), nn.Identity(), feats, scale)
    if kind == "timm" and name:
        encoder = build_timm(name, checkpoint_path, num_classes=0)
        dim = int(encoder.num_features)
        return ImageTextClassifier(encoder, nn.Identity(), None, None, 1.0, len(names), dim)
    raise ValueError(
        f"model.backbone={backbone!r} is not 'embedded', 'open_clip:<architecture>' or "
        "'timm:<model name>'."
    )


def slerp(a: Tensor, b: Tensor, lam: Tensor) -> Tensor:
    """Spherical interpolation between unit vectors: ``lam=0`` gives ``a``, ``lam=1`` ``b``."""
    cos = (a * b).sum(-1, keepdim=True).clamp(-1 + 1e-6, 1 - 1e-6)
    theta = torch.acos(cos)
    lam = lam.view(-1, 1)
    out = (torch.sin((1 - lam) * theta) * a + torch.sin(lam * theta) * b) / torch.sin(theta)
    return F.normalize(out, dim=-1)


def geodesic_mixup_loss(
    image_emb: Tensor, text_emb: Tensor, labels: Tensor, scale: Tensor | float, lam: Tensor
) -> Tensor:
    """m2-mix (So et al., 2023): hard negatives on the geodesic between the two modalities.

    ``m_i = slerp(image_i, text_i, lam_i)`` lies between a matched pair. Each image is scored
    against every caption (positives: captions of its class) plus the mixed embeddings of
    other classes as extra negatives; the same for each caption against the images.
    """
    mixed = slerp(image_emb, text_emb, lam)
    other = labels[:, None] != labels[None, :]
    target = (~other).float()
    target = target / target.sum(1, keepdim=True)

    def one_side(q: Tensor, keys: Tensor) -> Tensor:
        pos = scale * q @ keys.t()
        neg = (scale * q @ mixed.t()).masked_fill(~other, float("-inf"))
        logp = F.log_softmax(torch.cat([pos, neg], 1), dim=1)[:, : len(keys)]
        return -(target * logp).sum(1).mean()

    return 0.5 * (one_side(image_emb, text_emb) + one_side(text_emb, image_emb))


class VisionModule(FineTuneModule):
    """Fine-tune a zero-shot image-text classifier; see the module docstring for methods.

    Args:
        backbone: ``"embedded"``, ``"open_clip:<arch>"`` or ``"timm:<name>"``
            (:func:`build_classifier`).
        checkpoint_path: Local weight file of an open_clip / timm backbone.
        class_names: Class names in label order (default: the ten digit names).
        templates: Prompt templates, each with one ``{}`` (default: eight digit prompts).
        split: Embedded backbone: EfficientNet block where the frozen trunk ends.
        embed_dim: Embedded backbone: joint embedding size of the LiT heads.
        alignment_steps: Embedded backbone: LiT optimisation steps (cached per value).
        alignment_images / alignment_copies: Embedded backbone: scikit-learn digits used
            for LiT (``None``: all 1,797) and augmented copies of each (tests use few).
        cache_dir: Cache of LiT heads and features (default ~/.cache/specialist-finetuners).
        text_model_path: Local sentence-transformer directory (default: packaged MiniLM).
        objective: ``"ce"`` (cross-entropy on the head) or ``"flyp"`` (CLIP loss).
        head_init: ``"zeroshot"``, ``"linear_probe"`` (LP-FT) or ``"random"``.
        lp_c: Inverse L2 strength of the linear-probe logistic regression.
        mixup_weight: Weight of the geodesic multimodal mixup loss (FLYP only; 0 = off).
        mixup_beta: Mixing ratio ``lam ~ Beta(b, b)``.
        adapter / modules_to_save / regularizers / optimizer / lr_scheduler / loss:
            :class:`core.training.FineTuneModule`.
    """

    def __init__(
        self,
        backbone: str = "embedded",
        checkpoint_path: str | None = None,
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
        adapter: AdapterConfig | None = None,
        modules_to_save: list[str] | None = None,
        regularizers: list[Regularizer] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        loss: Callable[..., Any] = default_loss,
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
        model = build_classifier(
            backbone,
            checkpoint_path,
            class_names,
            templates,
            split,
            embed_dim,
            alignment_steps,
            cache_dir,
            text_model_path,
            alignment_images,
            alignment_copies,
        )
        if model.prompt_features is None and (objective == "flyp" or head_init == "zeroshot"):
            raise ValueError(
                f"model.backbone={backbone!r} has no text tower: use model.objective: ce with "
                "model.head_init: linear_probe or random."
            )
        self.objective, self.head_init, self.lp_c = objective, head_init, lp_c
        self.mixup_weight, self.mixup_beta = mixup_weight, mixup_beta
        super().__init__(
            model=model,
            adapter=adapter,
            modules_to_save=modules_to_save,
            regularizers=regularizers,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            loss=loss,
        )
        if objective == "flyp":
            # The head is derived from the text side, never trained directly.
            self.model.head.requires_grad_(False)
        if head_init == "random":
            with torch.no_grad():
                nn.init.normal_(self.model.head.weight, std=0.01)
                self.model.head.bias.zero_()
        #: The starting weights (zero-shot head, adapters at identity): WiSE-FT's theta_0.
        self.initial_state = _clone_state(self.model)
        self._head_ready = head_init != "linear_probe"

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and not self._head_ready:
            datamodule = getattr(self.trainer, "datamodule", None)
            if datamodule is None:
                raise ValueError("model.head_init: linear_probe needs a datamodule to fit on.")
            self.fit_linear_probe(datamodule.train_dataloader())
        self._names_match_data()

    def _names_match_data(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        names = getattr(datamodule, "class_names", None)
        if names is not None and len(names) != self.model.num_classes:
            raise ValueError(
                f"the data has {len(names)} classes but the model {self.model.num_classes}; "
                "give the same model.class_names as data.class_names."
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


def _clone_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
