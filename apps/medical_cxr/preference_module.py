"""Factuality preference tuning of an SFT report generator with a DPO-style loss.

The network is the SFT model of ``model.pretrained``, shape and tokenizer included; only
an adapter trains, so the frozen reference model is the same network with its adapters
disabled. Pairs come from :mod:`.preference_data`; the loss is
:func:`core.training.preference.dpo_loss`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from core.adapters import AdapterConfig
from core.training.preference import LOSS_TYPES, dpo_loss

from .data import run_seed
from .preference_data import (
    REJECTED,
    PreferencePairs,
    balance_normal_abnormal,
    mine_pairs,
    write_pairs,
)
from .report_module import ReportGenModule, balanced_pos_weight
from .weights import architecture, read_checkpoint

#: Options that fix the network's shape: read from the SFT checkpoint, never given here.
ARCH_KEYS = (
    "encoder",
    "image_size",
    "vit_dim",
    "vit_depth",
    "vit_heads",
    "patch_size",
    "decoder_pretrained",
    "decoder_hidden",
    "decoder_layers",
    "decoder_heads",
    "vocab_size",
    "max_text_tokens",
    "label_prompt",
)
#: How observations count in the score that ranks the sampled candidates.
REWARD_WEIGHTS = ("uniform", "balanced", "corpus_gain")
#: Which label prompt the candidates are sampled and scored with.
PAIR_PROMPTS = ("predicted", "reference")
#: Which split's studies the pairs are mined from (``pair_split``).
PAIR_SPLITS = ("train", "val")
#: Which mined pairs train (``pair_balance``).
PAIR_BALANCES = ("none", "normal_abnormal")
#: Of :data:`ARCH_KEYS`, those a checkpoint written before they existed may lack (their
#: default then holds).
OPTIONAL_ARCH_KEYS = ("label_prompt",)


def sft_architecture(path: str) -> dict[str, Any]:
    """The :data:`ARCH_KEYS` an SFT checkpoint was trained with (all of them, or an error)."""
    arch = architecture(read_checkpoint(path), ARCH_KEYS)
    missing = [k for k in ARCH_KEYS if k not in arch and k not in OPTIONAL_ARCH_KEYS]
    if missing:
        raise ValueError(
            f"model.pretrained {path!r} is not a report-generation checkpoint (its "
            f"hyperparameters lack {missing}); give the last.ckpt of a ReportGenModule run."
        )
    return arch


class PreferenceModule(ReportGenModule):
    """Factuality preference tuning of an SFT report generator with a DPO-style loss.

    At ``setup("fit")`` the studies of ``pair_split`` become preference pairs
    (:func:`~.preference_data.mine_pairs`: the best of ``num_samples`` sampled reports by
    clinical-efficacy F1 against the worst, or against the SFT model's beam-search report),
    written to ``<run_dir>/preference_pairs.jsonl``. Training then
    minimises :func:`core.training.preference.dpo_loss` (``loss_type``: ``sigmoid`` = DPO,
    ``ipo``, ``hinge``) plus ``sft_weight`` times the NLL of the chosen report.

    Args:
        pretrained: Lightning checkpoint of the SFT report generator. Its architecture
            options (:data:`ARCH_KEYS`), weights and tokenizer are used; values given for the
            architecture options are replaced by the checkpoint's (``data.image_size`` must
            equal its ``image_size``; checked at setup).
        adapter: Required, e.g. LoRA on the decoder's attention projections.
        beta: Strength of the implicit KL to the reference (> 0).
        loss_type: ``sigmoid`` (DPO), ``ipo`` or ``hinge`` (SLiC).
        label_smoothing: Conservative-DPO smoothing in [0, 0.5) (``sigmoid`` only).
        num_samples: Reports sampled per study (>= 2).
        sample_temperature: Sampling temperature of the candidates (> 0).
        sample_top_p: Nucleus sampling of the candidates, in (0, 1].
        max_pair_studies: Use at most this many studies of ``pair_split`` for pairs.
        sft_weight: Weight of the chosen report's NLL added to the loss (0: pure DPO).
        reward_weights: How observations count in a candidate's score: ``uniform`` (each
            label once) or ``balanced`` (each label ``sqrt(negatives / positives)`` of the
            training split, at most 20: naming a rare finding right, or missing it, moves
            the score more, which is what macro F1 rewards) or ``corpus_gain`` (not a
            per-report F1: each candidate scores what it would add to corpus micro + macro
            F1 at the SFT model's sampled operating point, hits gaining and false alarms
            costing per observation; :func:`~.preference_data.candidate_scores`).
        pair_prompt: The label prompt the candidates are sampled and scored with:
            ``predicted`` (the classifier's, as at test) or ``reference`` (the reference
            report's labels: the pairs then reward saying what the prompt says; the
            classifier's errors are not the decoder's to fix). Without a label prompt in the
            SFT model only ``predicted`` applies.
        pair_balance: ``none`` (every mined pair) or ``normal_abnormal`` (at most as many
            pairs of normal studies as of abnormal ones, a seeded subset).
        pair_split: The studies the pairs are mined from: ``train`` (the SFT model's own
            training studies) or ``val`` (studies it never trained on: there its samples
            make the errors it makes at test, while on its training studies the best sample
            is often the memorised reference and the worst a high-temperature
            hallucination). The test split is never used.
        rejected: The rejected report of a pair: ``worst_sample`` (the worst of the
            samples) or ``beam_search`` (the SFT model's own beam-search report, paired
            with the best sample when that scores higher: the decoder's test-time
            mistakes; :func:`~.preference_data.mine_pairs`).
        length_normalized: Compare the reports' mean per-token log-probabilities instead of
            their sums (length-normalised DPO, as Tulu 3's recipe and SimPO do; raise
            ``beta`` by about the reports' length to keep its strength). Sampled chosen
            reports are shorter than rejected ones in most training-split pairs; normalising
            did not stop the decoder writing less (docs/medical_cxr.md).
        **kwargs: Decoding, evaluation and optimisation options of
            :class:`~.report_module.ReportGenModule` and its bases, passed through.
    """

    def __init__(
        self,
        pretrained: str,
        adapter: AdapterConfig | None = None,
        beta: float = 0.1,
        loss_type: str = "sigmoid",
        label_smoothing: float = 0.0,
        num_samples: int = 4,
        sample_temperature: float = 1.0,
        sample_top_p: float = 1.0,
        max_pair_studies: int | None = None,
        sft_weight: float = 0.0,
        reward_weights: str = "uniform",
        pair_prompt: str = "predicted",
        pair_balance: str = "none",
        pair_split: str = "train",
        rejected: str = "worst_sample",
        length_normalized: bool = False,
        **kwargs: Any,
    ) -> None:
        check_preference_options(
            adapter,
            beta=beta,
            loss_type=loss_type,
            label_smoothing=label_smoothing,
            num_samples=num_samples,
            sample_temperature=sample_temperature,
            sample_top_p=sample_top_p,
            max_pair_studies=max_pair_studies,
            sft_weight=sft_weight,
            reward_weights=reward_weights,
            pair_prompt=pair_prompt,
            pair_balance=pair_balance,
            pair_split=pair_split,
            rejected=rejected,
        )
        # The network is the SFT model: its shape and tokenizer come from the checkpoint (the
        # data's image size is checked against it at setup).
        kwargs.update(sft_architecture(pretrained), tokenizer=None, encoder_pretrained=None)
        super().__init__(pretrained=pretrained, adapter=adapter, **kwargs)
        self.beta, self.loss_type, self.label_smoothing = beta, loss_type, label_smoothing
        self.num_samples = num_samples
        self.sample_temperature, self.sample_top_p = sample_temperature, sample_top_p
        self.max_pair_studies = max_pair_studies
        self.sft_weight = sft_weight
        self.reward_weights = reward_weights
        self.pair_prompt = pair_prompt
        self.pair_balance = pair_balance
        self.pair_split = pair_split
        self.rejected = rejected
        self.length_normalized = length_normalized
        if pair_prompt == "reference" and not self.model.label_prompt:
            raise ValueError(
                f"model.pair_prompt=reference: the SFT model {pretrained!r} has no label "
                "prompt; use pair_prompt=predicted."
            )
        self.pairs: list[dict[str, Any]] = []

    def setup(self, stage: str) -> None:
        """Mine the preference pairs once, before fitting; train on them."""
        super().setup(stage)
        if stage != "fit" or self.pairs:
            return
        datamodule = self.trainer.datamodule
        weights = None
        if self.reward_weights == "balanced":
            weights = balanced_pos_weight(datamodule.sets["train"].targets).tolist()
        self.pairs = mine_pairs(
            self,
            datamodule.sets[self.pair_split],
            self.num_samples,
            self.sample_temperature,
            self.sample_top_p,
            self.max_pair_studies,
            seed=run_seed(),
            weights=weights,
            reference_prompt=self.pair_prompt == "reference",
            corpus_gain=self.reward_weights == "corpus_gain",
            rejected=self.rejected,
        )
        if self.pair_balance == "normal_abnormal":
            mined = len(self.pairs)
            self.pairs = balance_normal_abnormal(self.pairs, seed=run_seed())
            rank_zero_info(f"preference pairs balanced: {len(self.pairs)} of {mined} kept")
        if not self.pairs:
            against = (
                "the SFT model's beam-search report"
                if self.rejected == "beam_search"
                else "the worst sample"
            )
            raise ValueError(
                f"no preference pair could be formed from the {self.pair_split} studies: no "
                f"sample scored above {against}; raise model.num_samples or "
                "model.sample_temperature, or set model.rejected=worst_sample."
            )
        datamodule.use_train_dataset(PreferencePairs(self.pairs))
        if self.trainer.is_global_zero:
            run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
            write_pairs(run_dir / "preference_pairs.jsonl", self.pairs)

    def shared_step(self, batch: dict[str, Any], stage: str) -> dict[str, Any]:
        """The preference loss on (chosen, rejected) pairs; other stages as in SFT."""
        if stage != "train":
            return super().shared_step(batch, stage)
        images = batch["image"]
        n = len(batch["chosen"])
        ids, mask = self.encode(list(batch["chosen"]) + list(batch["rejected"]))
        states = batch.get("label_states")  # a tensor when mined with the reference's prompt
        states = torch.cat([states, states]) if isinstance(states, Tensor) else None
        logits = self.model(torch.cat([images, images]), ids, mask, states=states).float()
        logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        token_mask = mask[:, 1:].float()
        seq, ref = report_scores(
            logp,
            token_mask,
            torch.cat([batch["ref_chosen"], batch["ref_rejected"]]),
            self.length_normalized,
        )
        out = dpo_loss(
            seq[:n],
            seq[n:],
            ref[:n],
            ref[n:],
            beta=self.beta,
            loss_type=self.loss_type,
            label_smoothing=self.label_smoothing,
        )
        loss: Tensor = out.loss
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


def report_scores(
    token_logp: Tensor, token_mask: Tensor, reference_sums: Tensor, length_normalized: bool
) -> tuple[Tensor, Tensor]:
    """The policy's and the reference's score of each report, as the DPO loss compares them.

    ``token_logp`` and ``token_mask`` are (reports, tokens); ``reference_sums`` the frozen
    model's summed log-probabilities of the same reports over the same tokens. Sums by
    default; with ``length_normalized``, both divided by each report's token count.
    """
    policy = (token_logp * token_mask).sum(-1)
    reference = reference_sums.to(policy)
    if not length_normalized:
        return policy, reference
    lengths = token_mask.sum(-1).clamp_min(1.0)
    return policy / lengths, reference / lengths


def check_preference_options(
    adapter: AdapterConfig | None,
    beta: float,
    loss_type: str,
    label_smoothing: float,
    num_samples: int,
    sample_temperature: float,
    sample_top_p: float,
    max_pair_studies: int | None,
    sft_weight: float,
    reward_weights: str = "uniform",
    pair_prompt: str = "predicted",
    pair_balance: str = "none",
    pair_split: str = "train",
    rejected: str = "worst_sample",
) -> None:
    """Raise ``ValueError`` naming the first :class:`PreferenceModule` option out of range."""
    if adapter is None:
        raise ValueError(
            "PreferenceModule needs model.adapter (e.g. LoRA on the decoder's q_proj/v_proj): "
            "the frozen SFT model it is compared to is the network with adapters disabled."
        )
    checks = [
        (beta > 0, f"model.beta={beta} must be > 0"),
        (loss_type in LOSS_TYPES, f"model.loss_type={loss_type!r} must be one of {LOSS_TYPES}"),
        (
            0 <= label_smoothing < 0.5,
            f"model.label_smoothing={label_smoothing} must lie in [0, 0.5)",
        ),
        (num_samples >= 2, f"model.num_samples={num_samples} must be >= 2 to form pairs"),
        (sample_temperature > 0, f"model.sample_temperature={sample_temperature} must be > 0"),
        (0 < sample_top_p <= 1, f"model.sample_top_p={sample_top_p} must lie in (0, 1]"),
        (
            max_pair_studies is None or max_pair_studies >= 1,
            f"model.max_pair_studies={max_pair_studies} must be >= 1 (or null: all)",
        ),
        (sft_weight >= 0, f"model.sft_weight={sft_weight} must be >= 0"),
        (
            reward_weights in REWARD_WEIGHTS,
            f"model.reward_weights={reward_weights!r} must be one of {REWARD_WEIGHTS}",
        ),
        (
            pair_prompt in PAIR_PROMPTS,
            f"model.pair_prompt={pair_prompt!r} must be one of {PAIR_PROMPTS}",
        ),
        (
            pair_balance in PAIR_BALANCES,
            f"model.pair_balance={pair_balance!r} must be one of {PAIR_BALANCES}",
        ),
        (
            pair_split in PAIR_SPLITS,
            f"model.pair_split={pair_split!r} must be one of {PAIR_SPLITS}",
        ),
        (rejected in REJECTED, f"model.rejected={rejected!r} must be one of {REJECTED}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message + ".")
