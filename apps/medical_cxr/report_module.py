"""Chest X-ray report generation: teacher-forced SFT, beam-search evaluation, ``report.md``.

:class:`ReportGenModule` joins an image encoder (:class:`~.encoder_module.EncoderModule`, its
options) and a causal decoder by a visual prefix (:class:`~.model.ReportGenerator`). The
report tokenizer is trained on the training split's reports at ``setup`` (through the app's
cache, :mod:`core.tokenizers`) unless one is given, and travels in every checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from core.tokenizers import TokenizerCheckpointMixin, load_tokenizer_state
from core.training.report import TestReport

from .data import run_seed
from .encoder_module import EncoderModule
from .evaluation import Evaluation, evaluation_report, write_eval_files
from .metrics import (
    best_f1_thresholds,
    clinical_efficacy,
    macro_auroc,
    nlg_metrics,
    precision_recall_f1,
)
from .model import (
    ImageEncoder,
    ReportGenerator,
    build_decoder,
    cached_report_tokenizer,
    decode_reports,
    encode_reports,
    load_report_tokenizer,
    report_recipe,
)


def given_tokenizer(
    tokenizer: str | None, decoder_pretrained: str | None
) -> PreTrainedTokenizerBase | None:
    """``model.tokenizer``, else the ``tokenizer.json`` in the ``decoder_pretrained`` folder,
    else ``None`` (one is taken from ``pretrained`` or trained at ``setup``)."""
    if tokenizer:
        return load_report_tokenizer(tokenizer)
    if decoder_pretrained and (Path(decoder_pretrained) / "tokenizer.json").is_file():
        return load_report_tokenizer(decoder_pretrained)
    return None


def balanced_pos_weight(targets: Tensor, cap: float = 20.0) -> Tensor:
    """Per observation ``sqrt(negatives / positives)`` of binary ``targets`` ``(N, 14)``,
    clipped to ``[1, cap]`` (an observation without positives gets ``cap``)."""
    positives = targets.float().sum(0)
    ratio = (len(targets) - positives) / positives.clamp(min=1e-9)
    return ratio.sqrt().clamp(min=1.0, max=cap)


class ReportGenModule(TokenizerCheckpointMixin, EncoderModule):
    """Chest X-ray report generation: teacher-forced SFT, beam-search evaluation.

    Test logs BLEU-1..4, METEOR, ROUGE-L, CIDEr and clinical efficacy as ``test/<metric>``,
    writes the references, hypotheses and per-observation scores under
    ``<run_dir>/eval/test_seed<seed>/`` and describes ``report.md`` (:meth:`test_report`).

    Args:
        tokenizer: A ``tokenizer.json`` file or tokenizer folder; empty: the one of
            ``decoder_pretrained`` or ``pretrained`` if they hold one, else a WordPiece
            tokenizer trained on the training split's reports at ``setup``.
        decoder_pretrained: A local causal-LM folder (``save_pretrained``); empty builds a
            small Llama-style decoder (``decoder_hidden``, ``decoder_layers``,
            ``decoder_heads``).
        vocab_size: Vocabulary of the built decoder and of the trained tokenizer (a given
            tokenizer sets it to its own size).
        max_text_tokens: Reports are truncated to this many tokens for training.
        decoder_hidden: Width of the built decoder.
        decoder_layers: Layers of the built decoder.
        decoder_heads: Attention heads of the built decoder.
        num_beams: Beams of the test's beam search.
        no_repeat_ngram_size: No token n-gram of this size repeats in a generated report
            (3: no repeated trigram; 0: off).
        max_new_tokens: Longest generated report, in tokens.
        uncertain_as: How uncertain labels count in clinical efficacy (0 negative); set from
            ``data.uncertain_as`` (the two are linked).
        num_examples: Generated reports shown beside their references in ``report.md``.
        meteor: Compute METEOR at test (it starts a Java process; skipped with a warning
            where Java is missing).
        label_loss_weight: Weight of an auxiliary BCE loss that predicts the report's 14
            CheXpert labels from the pooled image tokens (0: off): the finding classifier.
            It teaches the encoder the findings early, so the decoder learns to read them
            from the visual prefix.
        balance_label_loss: Weigh each observation's positives in that BCE by
            ``sqrt(negatives / positives)`` of the training split (at most 20): rare
            findings are not drowned by "No Finding".
        label_prompt: Condition the decoder on the finding classifier's predictions, one
            prompt token per observation (:class:`~.model.ReportGenerator`). Each
            observation's decision threshold is the one with the best F1 on the validation
            split, re-chosen after every validation and saved with the weights.
        prompt_teacher_forcing: Share of training batches whose label prompt holds the
            reference report's labels (positive / uncertain / negative) instead of the
            classifier's predictions (1: always the reference's; 0: always the predictions).
        encoder_epochs: Train the encoder and the finding classifier for this many epochs,
            then freeze them (batch-norm statistics included) and train the rest on their
            outputs, computed once per study and kept in memory: the decoder gets many
            cheap epochs after a few costly joint ones. ``None``: never freeze.
        **kwargs: The encoder's options and ``pretrained`` (:class:`EncoderModule`) and the
            :class:`~core.training.FineTuneModule` options, passed through.
    """

    def __init__(
        self,
        tokenizer: str | None = None,
        decoder_pretrained: str | None = None,
        decoder_hidden: int = 128,
        decoder_layers: int = 2,
        decoder_heads: int = 4,
        vocab_size: int = 1000,
        max_text_tokens: int = 96,
        num_beams: int = 3,
        no_repeat_ngram_size: int = 3,
        max_new_tokens: int = 96,
        uncertain_as: int = 0,
        num_examples: int = 6,
        meteor: bool = True,
        label_loss_weight: float = 0.0,
        balance_label_loss: bool = False,
        label_prompt: bool = False,
        prompt_teacher_forcing: float = 1.0,
        encoder_epochs: int | None = None,
        **kwargs: Any,
    ) -> None:
        if label_loss_weight < 0:
            raise ValueError(f"model.label_loss_weight={label_loss_weight} must be >= 0.")
        if not 0 <= prompt_teacher_forcing <= 1:
            raise ValueError(
                f"model.prompt_teacher_forcing={prompt_teacher_forcing} must lie in [0, 1]."
            )
        if encoder_epochs is not None and encoder_epochs < 0:
            raise ValueError(f"model.encoder_epochs={encoder_epochs} must be >= 0 (or null).")
        if label_prompt and label_loss_weight == 0 and not kwargs.get("pretrained"):
            raise ValueError(
                "model.label_prompt needs a trained finding classifier: set "
                "model.label_loss_weight > 0 (e.g. 1.0)."
            )
        if max_text_tokens < 4 or max_new_tokens < 1 or num_beams < 1:
            raise ValueError(
                f"model.max_text_tokens={max_text_tokens} (>= 4), model.max_new_tokens="
                f"{max_new_tokens} (>= 1) and model.num_beams={num_beams} (>= 1) are out of range."
            )
        if uncertain_as not in (0, 1):
            raise ValueError(f"model.uncertain_as={uncertain_as} must be 0 or 1.")
        tok = given_tokenizer(tokenizer, decoder_pretrained)
        vocab = len(tok) if tok is not None else vocab_size

        def network(encoder: ImageEncoder, checkpoint: dict[str, Any] | None) -> ReportGenerator:
            nonlocal tok
            if tok is None and checkpoint is not None:  # the pretrained model's own tokenizer
                tok = load_tokenizer_state(checkpoint, report_recipe())
            decoder = build_decoder(
                vocab, decoder_pretrained, decoder_hidden, decoder_layers, decoder_heads
            )
            return ReportGenerator(encoder, decoder, label_prompt=label_prompt)

        super().__init__(network=network, **kwargs)
        self.tokenizer = tok
        self.vocab_size = vocab
        self.max_text_tokens = max_text_tokens
        self.decoding = {
            "num_beams": num_beams,
            "no_repeat_ngram_size": no_repeat_ngram_size,
            "max_new_tokens": max_new_tokens,
        }
        self.uncertain_as = uncertain_as
        self.num_examples = num_examples
        self.meteor = meteor
        self.label_loss_weight = label_loss_weight
        self.balance_label_loss = balance_label_loss
        self.label_prompt = label_prompt
        self.prompt_teacher_forcing = prompt_teacher_forcing
        self.label_pos_weight: Tensor | None = None
        self.encoder_epochs = encoder_epochs
        self.encoder_frozen = False
        self._token_cache: dict[str, Tensor] = {}
        self._val_labels: list[tuple[Tensor, Tensor]] = []
        self._records: list[dict[str, Any]] = []
        self._evaluation: Evaluation | None = None

    # ------------------------------------------------------------------ tokenizer
    def setup(self, stage: str) -> None:
        """Train the tokenizer on the training reports if there is none yet (cached)."""
        if self.tokenizer is None:
            datamodule = getattr(self.trainer, "datamodule", None)
            if datamodule is None or not hasattr(datamodule, "train_texts"):
                raise ValueError(
                    "model.tokenizer is empty and there is no CxrDataModule to train one on; "
                    "pass model.tokenizer=<tokenizer.json> or a checkpoint that holds one."
                )
            self.tokenizer = cached_report_tokenizer(
                datamodule.train_texts(), self.vocab_size, getattr(datamodule, "cache_dir", None)
            )
        if self.balance_label_loss and stage == "fit" and self.label_pos_weight is None:
            datamodule = getattr(self.trainer, "datamodule", None)
            train = getattr(datamodule, "sets", {}).get("train")
            if train is None:
                raise ValueError(
                    "model.balance_label_loss needs the training labels of a CxrDataModule."
                )
            self.label_pos_weight = balanced_pos_weight(train.targets)
        super().setup(stage)

    def encode(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """``[BOS] report [EOS]`` ids and attention mask, right-padded, on this device."""
        assert self.tokenizer is not None, "setup() trains or loads the tokenizer first"
        ids, mask = encode_reports(self.tokenizer, texts, self.max_text_tokens)
        return ids.to(self.device), mask.to(self.device)

    # ------------------------------------------------------------------ steps
    def forward(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Next-token logits of the reports ``input_ids`` given the images."""
        return self.model(images, input_ids, attention_mask)

    # ------------------------------------------------------------------ frozen encoder
    def train(self, mode: bool = True) -> ReportGenModule:
        """As ``nn.Module.train``, but a frozen encoder stays in eval mode."""
        super().train(mode)
        if self.encoder_frozen:
            self.model.encoder.eval()
        return self

    def on_train_epoch_start(self) -> None:
        """Freeze the encoder and the finding classifier once ``encoder_epochs`` are done."""
        done = self.encoder_epochs is not None and self.current_epoch >= self.encoder_epochs
        if done and not self.encoder_frozen:
            self.freeze_encoder()

    def freeze_encoder(self) -> None:
        """Stop training the encoder and the finding classifier; cache their outputs."""
        self.model.encoder.requires_grad_(False).eval()
        self.model.label_head.requires_grad_(False)
        self.encoder_frozen = True
        self._token_cache = {}

    def image_tokens(self, batch: dict[str, Any]) -> Tensor | None:
        """The frozen encoder's tokens of the batch's studies (computed once per study id),
        or ``None`` while the encoder trains."""
        if not self.encoder_frozen:
            return None
        ids = batch["study_id"]
        new = [i for i, study in enumerate(ids) if study not in self._token_cache]
        if new:
            with torch.no_grad():
                tokens = self.model.encoder(batch["image"][new])
            if not self._token_cache:
                self._warn_if_cache_is_large(tokens[0])
            self._token_cache.update((ids[i], t) for i, t in zip(new, tokens, strict=True))
        return torch.stack([self._token_cache[study] for study in ids])

    def _warn_if_cache_is_large(self, one: Tensor, limit_gib: float = 4.0) -> None:
        """Warn when caching every study's tokens would take more than ``limit_gib``."""
        sets = getattr(getattr(self.trainer, "datamodule", None), "sets", {})
        studies = sum(len(split) for split in sets.values())
        gib = studies * one.numel() * one.element_size() / 2**30
        if gib > limit_gib:
            rank_zero_warn(
                f"the frozen encoder's tokens of {studies} studies take {gib:.1f} GiB of "
                "memory; set model.encoder_epochs=null on large data sets (the encoder then "
                "runs on every batch)."
            )

    def calibration_forward(self, batch: dict[str, Any]) -> Tensor:
        """One training batch through the network (for data-dependent adapter inits)."""
        ids, mask = self.encode(batch["text"])
        return self(batch["image"].to(self.device), ids, mask)

    def token_loss(
        self,
        images: Tensor,
        texts: list[str],
        labels: Tensor | None = None,
        states: Tensor | None = None,
        tokens: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Mean next-token cross-entropy over report tokens (``token_loss``), token accuracy
        and, with ``labels`` and ``label_loss_weight``, the auxiliary label BCE.

        ``states``: the label prompt to condition on (``None``: the classifier's);
        ``tokens``: the images' encoder outputs when known (:meth:`image_tokens`).
        """
        ids, mask = self.encode(texts)
        logits, label_logits = self.model(
            images, ids, mask, return_label_logits=True, states=states, tokens=tokens
        )
        targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
        valid = targets != -100
        out = {
            "token_loss": loss,
            "token_acc": (logits.argmax(-1) == targets)[valid].float().mean(),
        }
        if labels is not None and self.label_loss_weight > 0:
            weight = self.label_pos_weight
            out["label_loss"] = F.binary_cross_entropy_with_logits(
                label_logits.float(),
                labels,
                pos_weight=None if weight is None else weight.to(labels.device),
            )
        out["label_probs"] = torch.sigmoid(label_logits.detach().float())
        return out

    def generate_reports(self, images: Tensor, **overrides: Any) -> list[str]:
        """Reports for a batch of images (beam search unless ``do_sample=True``); the
        overrides are :meth:`~.model.ReportGenerator.generate` options."""
        tok = self.tokenizer
        assert tok is not None
        options = {**self.decoding, **overrides}
        ids = self.model.generate(
            images, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, **options
        )
        return decode_reports(tok, ids)

    def shared_step(self, batch: dict[str, Any], stage: str) -> dict[str, Any]:
        """Teacher-forced losses; at test also beam-search reports, kept for the metrics."""
        images = batch["image"]
        if stage == "predict":
            return {"study_id": batch["study_id"], "report": self.generate_reports(images)}
        states = None
        if self.label_prompt and stage == "train" and "label_states" in batch:
            share = self.prompt_teacher_forcing
            if share >= 1 or (share > 0 and torch.rand(()).item() < share):
                states = batch["label_states"]
        tokens = self.image_tokens(batch)
        parts = self.token_loss(images, batch["text"], batch.get("labels"), states, tokens)
        probs = parts.pop("label_probs")
        if stage == "val" and "labels" in batch:
            self._val_labels.append((probs.cpu(), batch["labels"].cpu()))
        loss = parts["token_loss"]
        if "label_loss" in parts:
            loss = loss + self.label_loss_weight * parts["label_loss"]
        # val/loss (checkpoint monitor) stays the report's token cross-entropy
        out = {**parts, "loss": loss if stage == "train" else parts["token_loss"]}
        out["batch_size"] = len(batch["text"])
        if stage == "test":
            for i, hyp in enumerate(self.generate_reports(images, tokens=tokens)):
                self._records.append(
                    {
                        "study_id": batch["study_id"][i],
                        "reference": batch["text"][i],
                        "hypothesis": hyp,
                        "image": batch["image"][i, 0].detach().cpu().numpy(),
                    }
                )
        return out

    # ------------------------------------------------------------------ thresholds
    def on_validation_epoch_start(self) -> None:
        """Start collecting the finding classifier's validation probabilities."""
        self._val_labels = []

    def on_validation_epoch_end(self) -> None:
        """Log the classifier's validation macro AUROC; with a label prompt, set each
        observation's threshold to the one with the best validation F1 and log that F1."""
        if not self._val_labels or self.label_loss_weight == 0:
            return
        probs = torch.cat([p for p, _ in self._val_labels]).numpy()
        targets = torch.cat([t for _, t in self._val_labels]).numpy()
        self._val_labels = []
        auroc, _ = macro_auroc(probs, targets.astype(int))
        self.log("val/label_auroc", auroc)
        if self.label_prompt and not self.trainer.sanity_checking:
            thresholds = best_f1_thresholds(probs, targets)
            self.model.thresholds.copy_(torch.as_tensor(thresholds))
            f1 = precision_recall_f1(targets, probs > thresholds)["ce_f1_macro"]
            self.log("val/label_f1_macro", f1)

    # ------------------------------------------------------------------ test outputs
    def on_test_epoch_start(self) -> None:
        """Start collecting the test's generated reports."""
        self._records = []
        self._evaluation = None

    def on_test_epoch_end(self) -> None:
        """Log the NLG and clinical-efficacy metrics; write the evaluation files (rank 0)."""
        records = self._records
        if not records:
            return
        refs = [r["reference"] for r in records]
        hyps = [r["hypothesis"] for r in records]
        metrics = {
            **nlg_metrics(refs, hyps, meteor=self.meteor),
            **clinical_efficacy(refs, hyps, self.uncertain_as),
        }
        for key, value in metrics.items():
            self.log(f"test/{key}", float(value), sync_dist=True)
        if self.trainer.is_global_zero:
            run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
            ev = Evaluation(run_dir, "test", run_seed(), records, metrics, self.uncertain_as)
            write_eval_files(ev)
            self._evaluation = ev
        self._records = []

    def test_report(self) -> TestReport | None:
        """``report.md``: metrics, per-observation table, examples, plots (see evaluation)."""
        base = super().test_report()
        if self._evaluation is None:
            return base
        datamodule = getattr(self.trainer, "datamodule", None)
        report = evaluation_report(
            self._evaluation, self.num_examples, getattr(datamodule, "source", None)
        )
        if base is not None and "Weights" in base.sections:
            report.sections["Weights"] = base.sections["Weights"]
        return report
