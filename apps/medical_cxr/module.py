"""Lightning modules: report generation (SFT), multi-label classification, and factuality
preference tuning (DPO against the frozen SFT model).

All three subclass :class:`core.training.FineTuneModule`, so adapters, regularizers,
optimizer and scheduler come from the core and the command line. Per-part adapters: the
core's ``adapter`` may target any module of the network (``q_proj``/``v_proj`` hit only the
decoder), and ``encoder_adapter`` puts a second adapter, of any method, on the image
encoder alone (e.g. LoRA on the decoder and SSF on the encoder); it is exported next to the
main one as ``<run_dir>/adapter_encoder/``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from core.adapters import AdapterConfig, disable_adapters, inject, save_adapter
from core.training import FineTuneModule, Regularizer, default_loss
from core.training.module import coerce_adapter_config
from core.training.preference import dpo_loss

from .evaluation import write_evaluation
from .labeler import CHEXPERT_LABELS
from .metrics import clinical_efficacy, clinical_f1_per_report, macro_auroc, nlg_metrics
from .model import (
    CxrClassifier,
    ReportGenerator,
    build_decoder,
    build_encoder,
    load_tokenizer,
    tokenizer_from_json,
    train_tokenizer,
)
from .reports import normalise_report

#: Hyperparameters that fix the network's shape (read back from an SFT checkpoint).
ARCH_KEYS = (
    "encoder",
    "image_size",
    "vit_dim",
    "vit_depth",
    "vit_heads",
    "patch_size",
    "decoder_path",
    "decoder_hidden",
    "decoder_layers",
    "decoder_heads",
    "vocab_size",
    "max_text_tokens",
)


def run_seed() -> int:
    """The seed of this run (``seed_everything`` sets ``PL_GLOBAL_SEED``), 0 if unset."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


class _EncoderAdapterMixin:
    """Inject ``encoder_adapter`` into ``model.encoder`` and export it after fit."""

    def _inject_encoder_adapter(self, adapter: AdapterConfig | dict | None) -> None:
        self.encoder_adapter_config = coerce_adapter_config(adapter)
        if self.encoder_adapter_config is None:
            return
        try:
            inject(self.model.encoder, self.encoder_adapter_config, name="encoder")
        except (ValueError, TypeError) as err:
            raise ValueError(f"model.encoder_adapter: {err}") from err

    def on_fit_end(self) -> None:
        if self.encoder_adapter_config is None or not self.trainer.is_global_zero:
            return
        run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        path = save_adapter(self.model.encoder, run_dir / "adapter_encoder", name="encoder")
        rank_zero_info(f"encoder adapter written to {path}")


# ---------------------------------------------------------------------------- SFT
class ReportGenModule(_EncoderAdapterMixin, FineTuneModule):
    """Chest X-ray report generation: teacher-forced SFT, beam-search evaluation.

    Test writes ``refs``/``hyps``/``metrics`` per split and seed, a ``report.md`` and plots
    into the run directory, logs BLEU-1..4, METEOR, ROUGE-L, CIDEr and clinical efficacy as
    ``test/<metric>`` and prints the metrics table with the report's path.

    Args:
        encoder: ``"vit_tiny"``, ``"densenet121"`` (timm), ``"monai_densenet121"`` or a timm name.
        image_size: Input side (must match ``data.image_size``).
        encoder_checkpoint: Local weights for the encoder backbone.
        vit_dim / vit_depth / vit_heads / patch_size: Shape of ``vit_tiny``.
        decoder_path: A local causal-LM checkpoint folder; empty builds a small Llama-style
            decoder (``decoder_hidden``, ``decoder_layers``, ``decoder_heads``).
        vocab_size: Vocabulary of the built decoder (and of the BPE tokenizer trained on the
            training reports when ``tokenizer`` is empty).
        tokenizer: A ``tokenizer.json`` file or tokenizer folder; empty: train one (BPE) on
            the training split's reports at ``setup``; it is saved in the checkpoint.
        max_text_tokens: Reports are truncated to this many tokens for training.
        num_beams / no_repeat_ngram_size / max_new_tokens: Decoding (beam 3, no repeated
            token trigram).
        uncertain_as: How uncertain labels count in clinical efficacy (0 negative).
        init_checkpoint: A report-generation Lightning checkpoint whose network weights are
            loaded before adapters are injected (fine-tune a trained model).
        encoder_adapter: A second adapter on the encoder only (see the module doc).
        num_examples: Generated reports shown beside their references in ``report.md``.
        meteor: Compute METEOR at test (it starts a Java process; skipped with a warning
            where Java is missing).
        label_loss_weight: Weight of an auxiliary BCE loss that predicts the report's 14
            CheXpert labels from the pooled image tokens (0: off). It teaches the encoder the
            findings early, so the decoder learns to read them from the visual prefix.
        adapter / modules_to_save / regularizers / optimizer / lr_scheduler / loss: as in
            :class:`core.training.FineTuneModule`.
    """

    def __init__(
        self,
        encoder: str = "vit_tiny",
        image_size: int = 64,
        encoder_checkpoint: str | None = None,
        vit_dim: int = 128,
        vit_depth: int = 2,
        vit_heads: int = 4,
        patch_size: int = 8,
        decoder_path: str | None = None,
        decoder_hidden: int = 128,
        decoder_layers: int = 2,
        decoder_heads: int = 4,
        vocab_size: int = 1000,
        tokenizer: str | None = None,
        max_text_tokens: int = 96,
        num_beams: int = 3,
        no_repeat_ngram_size: int = 3,
        max_new_tokens: int = 96,
        uncertain_as: int = 0,
        init_checkpoint: str | None = None,
        encoder_adapter: AdapterConfig | None = None,
        num_examples: int = 6,
        meteor: bool = True,
        label_loss_weight: float = 0.0,
        adapter: AdapterConfig | None = None,
        modules_to_save: list[str] | None = None,
        regularizers: list[Regularizer] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        loss: Callable[..., Any] = default_loss,
    ) -> None:
        if label_loss_weight < 0:
            raise ValueError(f"model.label_loss_weight={label_loss_weight} must be >= 0.")
        if max_text_tokens < 4 or max_new_tokens < 1 or num_beams < 1:
            raise ValueError(
                f"model.max_text_tokens={max_text_tokens} (>= 4), model.max_new_tokens="
                f"{max_new_tokens} (>= 1) and model.num_beams={num_beams} (>= 1) are out of range."
            )
        if uncertain_as not in (0, 1):
            raise ValueError(f"model.uncertain_as={uncertain_as} must be 0 or 1.")
        self.tokenizer = load_tokenizer(tokenizer) if tokenizer else None
        if (
            self.tokenizer is None
            and decoder_path
            and (Path(decoder_path) / "tokenizer.json").is_file()
        ):
            self.tokenizer = load_tokenizer(decoder_path)
        vocab = len(self.tokenizer) if self.tokenizer is not None else vocab_size
        network = ReportGenerator(
            build_encoder(
                encoder,
                image_size,
                encoder_checkpoint,
                vit_dim=vit_dim,
                vit_depth=vit_depth,
                vit_heads=vit_heads,
                patch_size=patch_size,
            ),
            build_decoder(vocab, decoder_path, decoder_hidden, decoder_layers, decoder_heads),
        )
        if init_checkpoint:
            self._load_network(network, init_checkpoint)
        super().__init__(
            model=network,
            adapter=adapter,
            modules_to_save=modules_to_save,
            regularizers=regularizers,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            loss=loss,
        )
        self._inject_encoder_adapter(encoder_adapter)
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
        self._records: list[dict[str, Any]] = []

    def _load_network(self, network: ReportGenerator, path: str) -> None:
        """Network weights (and tokenizer) of a report-generation checkpoint."""
        ckpt = read_checkpoint(path)
        state = {
            k.removeprefix("model."): v
            for k, v in ckpt["state_dict"].items()
            if k.startswith("model.")
        }
        if any(".base_layer." in k or "adapters." in k for k in state):
            raise ValueError(
                f"checkpoint {path!r} holds adapter layers; merge them first, or start from a "
                "checkpoint trained without an adapter."
            )
        try:
            network.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(
                f"checkpoint {path!r} does not fit this network ({err}); use the same "
                "architecture options as the run that wrote it."
            ) from err
        if self.tokenizer is None and "tokenizer_json" in ckpt:
            self.tokenizer = tokenizer_from_json(ckpt["tokenizer_json"])

    # ------------------------------------------------------------------ tokenizer
    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.tokenizer is not None:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "train_texts"):
            raise ValueError(
                "model.tokenizer is empty and there is no CxrDataModule to train one on; "
                "pass model.tokenizer=<tokenizer.json> or a checkpoint that holds one."
            )
        self.tokenizer = train_tokenizer(datamodule.train_texts(), self.vocab_size)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.tokenizer is not None:
            checkpoint["tokenizer_json"] = self.tokenizer.backend_tokenizer.to_str()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if "tokenizer_json" in checkpoint:
            self.tokenizer = tokenizer_from_json(checkpoint["tokenizer_json"])

    def encode(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """``[BOS] report [EOS]`` ids and attention mask, right-padded, on this device."""
        tok = self.tokenizer
        assert tok is not None, "setup() trains or loads the tokenizer first"
        rows = [
            [
                tok.bos_token_id,
                *tok(t, add_special_tokens=False).input_ids[: self.max_text_tokens - 2],
                tok.eos_token_id,
            ]
            for t in texts
        ]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return ids.to(self.device), mask.to(self.device)

    def decode(self, ids: Tensor) -> list[str]:
        """Generated ids -> normalised report texts (cut at the first EOS)."""
        tok = self.tokenizer
        assert tok is not None
        texts = []
        for row in ids.tolist():
            if tok.eos_token_id in row:
                row = row[: row.index(tok.eos_token_id)]
            texts.append(normalise_report(tok.decode(row, skip_special_tokens=True)))
        return texts

    # ------------------------------------------------------------------ steps
    def forward(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model(images, input_ids, attention_mask)

    def token_loss(
        self, images: Tensor, texts: list[str], labels: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Mean next-token cross-entropy over report tokens (``token_loss``), token accuracy
        and, with ``labels`` and ``label_loss_weight``, the auxiliary label BCE."""
        ids, mask = self.encode(texts)
        logits, label_logits = self.model(images, ids, mask, return_label_logits=True)
        targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
        valid = targets != -100
        out = {
            "token_loss": loss,
            "token_acc": (logits.argmax(-1) == targets)[valid].float().mean(),
        }
        if labels is not None and self.label_loss_weight > 0:
            out["label_loss"] = F.binary_cross_entropy_with_logits(label_logits.float(), labels)
        return out

    def generate_reports(self, images: Tensor, **overrides: Any) -> list[str]:
        """Reports for a batch of images (beam search unless ``do_sample=True``)."""
        tok = self.tokenizer
        assert tok is not None
        options = {**self.decoding, **overrides}
        ids = self.model.generate(
            images, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, **options
        )
        return self.decode(ids)

    def shared_step(self, batch: dict[str, Any], stage: str) -> dict[str, Any]:
        images = batch["image"]
        if stage == "predict":
            return {"study_id": batch["study_id"], "report": self.generate_reports(images)}
        parts = self.token_loss(images, batch["text"], batch.get("labels"))
        loss = parts["token_loss"]
        if "label_loss" in parts:
            loss = loss + self.label_loss_weight * parts["label_loss"]
        # val/loss (checkpoint monitor) stays the report's token cross-entropy
        out = {**parts, "loss": loss if stage == "train" else parts["token_loss"]}
        out["batch_size"] = len(batch["text"])
        if stage == "test":
            hyps = self.generate_reports(images)
            for i, hyp in enumerate(hyps):
                self._records.append(
                    {
                        "study_id": batch["study_id"][i],
                        "reference": batch["text"][i],
                        "hypothesis": hyp,
                        "image": batch["image"][i, 0].detach().cpu().numpy(),
                    }
                )
        return out

    def on_test_epoch_start(self) -> None:
        self._records = []

    def on_test_epoch_end(self) -> None:
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
            path = write_evaluation(
                run_dir=Path(self.trainer.log_dir or self.trainer.default_root_dir),
                split="test",
                seed=run_seed(),
                records=records,
                metrics=metrics,
                uncertain_as=self.uncertain_as,
                num_examples=self.num_examples,
                dataset=getattr(getattr(self.trainer, "datamodule", None), "dataset", None),
            )
            self.report_path = path
        self._records = []


# ---------------------------------------------------------------------------- classification
class ClassifierModule(_EncoderAdapterMixin, FineTuneModule):
    """Multi-label classification of the 14 CheXpert observations (BCE, macro AUROC).

    Logs ``{val,test}/auroc`` (mean AUROC over observations that have both classes in the
    split) and ``{val,test}/auroc_excluded`` (how many observations were left out).

    Args:
        encoder / image_size / encoder_checkpoint / vit_*: as in :class:`ReportGenModule`.
        pos_weight: Optional positive-class weight of the BCE (one value for all labels).
        encoder_adapter: A second adapter on the encoder only.
        adapter / modules_to_save / ...: as in :class:`core.training.FineTuneModule`.
    """

    def __init__(
        self,
        encoder: str = "vit_tiny",
        image_size: int = 64,
        encoder_checkpoint: str | None = None,
        vit_dim: int = 128,
        vit_depth: int = 2,
        vit_heads: int = 4,
        patch_size: int = 8,
        pos_weight: float | None = None,
        encoder_adapter: AdapterConfig | None = None,
        adapter: AdapterConfig | None = None,
        modules_to_save: list[str] | None = None,
        regularizers: list[Regularizer] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        loss: Callable[..., Any] = default_loss,
    ) -> None:
        network = CxrClassifier(
            build_encoder(
                encoder,
                image_size,
                encoder_checkpoint,
                vit_dim=vit_dim,
                vit_depth=vit_depth,
                vit_heads=vit_heads,
                patch_size=patch_size,
            ),
            num_labels=len(CHEXPERT_LABELS),
        )
        super().__init__(
            model=network,
            adapter=adapter,
            modules_to_save=modules_to_save,
            regularizers=regularizers,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            loss=loss,
        )
        self._inject_encoder_adapter(encoder_adapter)
        if pos_weight is not None and pos_weight <= 0:
            raise ValueError(f"model.pos_weight={pos_weight} must be > 0.")
        self.pos_weight = pos_weight
        self._outputs: dict[str, list[tuple[Tensor, Tensor]]] = {"val": [], "test": []}

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def shared_step(self, batch: dict[str, Any], stage: str) -> dict[str, Any]:
        logits = self(batch["image"])
        if stage == "predict":
            return {"study_id": batch["study_id"], "probs": torch.sigmoid(logits)}
        targets = batch["labels"]
        weight = None
        if self.pos_weight is not None:
            weight = torch.full_like(targets[0], self.pos_weight)
        loss = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weight)
        if stage in self._outputs:
            self._outputs[stage].append((torch.sigmoid(logits).detach().cpu(), targets.cpu()))
        return {"loss": loss, "batch_size": len(targets)}

    def _log_auroc(self, stage: str) -> None:
        outputs = self._outputs[stage]
        if not outputs:
            return
        probs = torch.cat([p for p, _ in outputs]).float().numpy()
        targets = torch.cat([t for _, t in outputs]).numpy().astype(int)
        auroc, excluded = macro_auroc(probs, targets)
        self.log(f"{stage}/auroc", auroc)
        self.log(f"{stage}/auroc_excluded", float(excluded))
        self._outputs[stage] = []

    def on_validation_epoch_start(self) -> None:
        self._outputs["val"] = []

    def on_validation_epoch_end(self) -> None:
        self._log_auroc("val")

    def on_test_epoch_start(self) -> None:
        self._outputs["test"] = []

    def on_test_epoch_end(self) -> None:
        self._log_auroc("test")


# ---------------------------------------------------------------------------- preference
def read_checkpoint(path: str) -> dict[str, Any]:
    """A Lightning checkpoint as a dict, with a clear error when it is not one."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"checkpoint {str(file)!r} does not exist; train the report generator first "
            "(python -m apps.medical_cxr.train) and pass its checkpoints/last.ckpt."
        )
    ckpt = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{str(file)!r} is not a Lightning checkpoint (no state_dict).")
    return ckpt


class PreferencePairs(torch.utils.data.Dataset):
    """(image, chosen report, rejected report, reference log-probabilities) per study."""

    def __init__(self, pairs: list[dict[str, Any]]) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.pairs[index]


class PreferenceModule(ReportGenModule):
    """Factuality preference tuning of an SFT report generator with a DPO-style loss.

    At ``setup("fit")``: for each training study, sample ``num_samples`` reports from the
    SFT model, score each by :func:`~.metrics.clinical_f1_per_report` against the study's
    reference, and keep (best, worst) as a (chosen, rejected) pair when their scores differ.
    Reference log-probabilities come from the same network with its adapters disabled (the
    frozen SFT model) and are computed once. Training then minimises
    :func:`core.training.preference.dpo_loss` (``loss_type``: ``sigmoid`` = DPO, ``ipo``,
    ``hinge``) plus ``sft_weight`` times the NLL of the chosen report. The pairs are written
    to ``<run_dir>/preference_pairs.jsonl``.

    Args:
        sft_checkpoint: Lightning checkpoint of the SFT report generator. Its architecture
            options (``ARCH_KEYS``) and tokenizer are read from it; those given here are
            ignored.
        beta / loss_type / label_smoothing: of the preference loss.
        num_samples: Reports sampled per study (>= 2).
        sample_temperature / sample_top_p: Sampling for the candidates.
        max_pair_studies: Use at most this many training studies for pairs.
        sft_weight: Weight of the chosen report's NLL added to the loss (0: pure DPO).
        adapter: Required, e.g. LoRA on the decoder's attention projections.
        Decoding, evaluation and optimisation options: as in :class:`ReportGenModule`.
    """

    def __init__(
        self,
        sft_checkpoint: str,
        beta: float = 0.1,
        loss_type: str = "sigmoid",
        label_smoothing: float = 0.0,
        num_samples: int = 4,
        sample_temperature: float = 1.0,
        sample_top_p: float = 1.0,
        max_pair_studies: int | None = None,
        sft_weight: float = 0.0,
        num_beams: int = 3,
        no_repeat_ngram_size: int = 3,
        max_new_tokens: int = 96,
        uncertain_as: int = 0,
        num_examples: int = 6,
        meteor: bool = True,
        adapter: AdapterConfig | None = None,
        encoder_adapter: AdapterConfig | None = None,
        modules_to_save: list[str] | None = None,
        regularizers: list[Regularizer] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        if num_samples < 2:
            raise ValueError(f"model.num_samples={num_samples} must be >= 2 to form pairs.")
        ckpt = read_checkpoint(sft_checkpoint)
        # The network is the SFT model: its shape comes from the checkpoint.
        arch = {k: v for k, v in ckpt.get("hyper_parameters", {}).items() if k in ARCH_KEYS}
        if adapter is None:
            raise ValueError(
                "PreferenceModule needs model.adapter (e.g. LoRA on the decoder's q_proj/v_proj): "
                "the frozen SFT model it is compared to is the network with adapters disabled."
            )
        super().__init__(
            **arch,
            num_beams=num_beams,
            no_repeat_ngram_size=no_repeat_ngram_size,
            max_new_tokens=max_new_tokens,
            uncertain_as=uncertain_as,
            init_checkpoint=sft_checkpoint,
            encoder_adapter=encoder_adapter,
            num_examples=num_examples,
            meteor=meteor,
            adapter=adapter,
            modules_to_save=modules_to_save,
            regularizers=regularizers,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
        )
        dpo_loss(
            *(torch.zeros(1),) * 4, beta=beta, loss_type=loss_type, label_smoothing=label_smoothing
        )
        self.beta, self.loss_type, self.label_smoothing = beta, loss_type, label_smoothing
        self.num_samples = num_samples
        self.sample_temperature, self.sample_top_p = sample_temperature, sample_top_p
        self.max_pair_studies = max_pair_studies
        self.sft_weight = sft_weight
        self.pairs: list[dict[str, Any]] = []

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage != "fit" or self.pairs:
            return
        datamodule = self.trainer.datamodule
        self.pairs = self.build_pairs(datamodule.sets["train"])
        if not self.pairs:
            raise ValueError(
                "no preference pair could be formed: every sampled report scored the same; "
                "raise model.num_samples or model.sample_temperature."
            )
        datamodule.use_train_dataset(PreferencePairs(self.pairs))
        if self.trainer.is_global_zero:
            self._write_pairs()

    @torch.no_grad()
    def build_pairs(self, dataset: Any) -> list[dict[str, Any]]:
        """Sample, score and pair reports for the training studies (see the class doc)."""
        from tqdm.auto import tqdm

        from .data import collate

        was_training = self.model.training
        self.model.eval()
        n = (
            len(dataset)
            if self.max_pair_studies is None
            else min(len(dataset), self.max_pair_studies)
        )
        batch_size = max(1, 256 // self.num_samples)
        gen = torch.Generator().manual_seed(run_seed())
        pairs: list[dict[str, Any]] = []
        for start in tqdm(range(0, n, batch_size), desc="sampling preference pairs"):
            batch = collate([dataset[i] for i in range(start, min(n, start + batch_size))])
            images = batch["image"].to(self.device)
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            with disable_adapters(self.model):
                samples = self.generate_reports(
                    images,
                    do_sample=True,
                    temperature=self.sample_temperature,
                    top_p=self.sample_top_p,
                    num_return_sequences=self.num_samples,
                )
            for i, ref in enumerate(batch["text"]):
                cands = samples[i * self.num_samples : (i + 1) * self.num_samples]
                scores = [clinical_f1_per_report(ref, c, self.uncertain_as) for c in cands]
                best, worst = int(np.argmax(scores)), int(np.argmin(scores))
                if scores[best] == scores[worst]:
                    continue
                pairs.append(
                    {
                        "image": batch["image"][i],
                        "study_id": batch["study_id"][i],
                        "reference": ref,
                        "chosen": cands[best],
                        "rejected": cands[worst],
                        "chosen_score": scores[best],
                        "rejected_score": scores[worst],
                    }
                )
        # Reference log-probabilities under the frozen SFT model, once.
        for start in range(0, len(pairs), 64):
            chunk = pairs[start : start + 64]
            images = torch.stack([p["image"] for p in chunk]).to(self.device)
            with disable_adapters(self.model):
                ref_c = self.sequence_logprobs(images, [p["chosen"] for p in chunk])
                ref_r = self.sequence_logprobs(images, [p["rejected"] for p in chunk])
            for p, c, r in zip(chunk, ref_c.tolist(), ref_r.tolist(), strict=True):
                p["ref_chosen"], p["ref_rejected"] = torch.tensor(c), torch.tensor(r)
        self.model.train(was_training)
        rank_zero_info(f"preference pairs: {len(pairs)} of {n} studies")
        return pairs

    def sequence_logprobs(self, images: Tensor, texts: list[str]) -> Tensor:
        ids, mask = self.encode(texts)
        return self.model.sequence_logprobs(images, ids, mask)

    def _write_pairs(self) -> None:
        import json

        from core.atomic import atomic_write_text

        run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        keys = ("study_id", "reference", "chosen", "rejected", "chosen_score", "rejected_score")
        lines = [json.dumps({k: p[k] for k in keys}) for p in self.pairs]
        atomic_write_text(run_dir / "preference_pairs.jsonl", "\n".join(lines) + "\n")

    def shared_step(self, batch: dict[str, Any], stage: str) -> dict[str, Any]:
        if stage != "train":
            return super().shared_step(batch, stage)
        images = batch["image"]
        n = len(batch["chosen"])
        both = torch.cat([images, images])
        ids, mask = self.encode(list(batch["chosen"]) + list(batch["rejected"]))
        logits = self(both, ids, mask).float()
        targets = ids[:, 1:]
        logp = torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
        token_mask = mask[:, 1:].float()
        seq = (logp * token_mask).sum(-1)
        out = dpo_loss(
            seq[:n],
            seq[n:],
            batch["ref_chosen"].to(seq),
            batch["ref_rejected"].to(seq),
            beta=self.beta,
            loss_type=self.loss_type,
            label_smoothing=self.label_smoothing,
        )
        loss = out.loss
        result: dict[str, Any] = {"batch_size": n}
        if self.sft_weight:
            nll = -(logp[:n] * token_mask[:n]).sum() / token_mask[:n].sum()
            loss = loss + self.sft_weight * nll
            result["chosen_nll"] = nll
        result.update(
            loss=loss,
            pref_loss=out.loss,
            reward_acc=(out.chosen_rewards > out.rejected_rewards).float().mean(),
            reward_margin=(out.chosen_rewards - out.rejected_rewards).mean(),
        )
        return result
