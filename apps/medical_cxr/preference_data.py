"""Preference pairs for factuality tuning: mined from the SFT model's own samples.

For each study, :func:`mine_pairs` samples ``num_samples`` reports from the frozen SFT
model (the report generator with its adapters disabled), scores each against the study's
reference (:func:`candidate_scores`: its clinical F1, or its gain in corpus F1), and keeps
the best as the chosen report against the worst, or against the SFT model's own
beam-search report, when it scores higher. The reference model's
log-probabilities of both reports are computed once, here. :class:`PreferencePairs` serves
the pairs as a training set; :func:`write_pairs` records them as JSON lines.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from core.adapters import disable_adapters
from core.atomic import atomic_write_text

from .data import collate
from .labeler import POSITIVE, label_report
from .metrics import clinical_f1_per_report, f1_gains, label_matrix

if TYPE_CHECKING:
    from .report_module import ReportGenModule

#: What a pair's rejected report is (``mine_pairs``'s ``rejected``).
REJECTED = ("worst_sample", "beam_search")
#: The fields of a pair written to ``preference_pairs.jsonl``.
PAIR_FIELDS = (
    "study_id", "reference", "normal", "chosen", "rejected", "chosen_score", "rejected_score",
)  # fmt: skip


class PreferencePairs(Dataset):
    """(image, chosen report, rejected report, reference log-probabilities) per study."""

    def __init__(self, pairs: list[dict[str, Any]]) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.pairs[index]


@torch.no_grad()
def mine_pairs(
    module: ReportGenModule,
    dataset: Dataset,
    num_samples: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_studies: int | None = None,
    seed: int = 0,
    weights: Sequence[float] | None = None,
    reference_prompt: bool = False,
    corpus_gain: bool = False,
    rejected: str = "worst_sample",
) -> list[dict[str, Any]]:
    """Sample, score and pair reports for the first ``max_studies`` studies of ``dataset``.

    Args:
        module: The report generator; sampling and reference log-probabilities use its
            network with adapters disabled (the frozen SFT model). Its ``uncertain_as``
            decides how uncertain labels score.
        dataset: Items with ``image``, ``text`` and ``study_id`` (a ``CxrDataset``).
        num_samples: Reports sampled per study (>= 2).
        temperature / top_p: Sampling of the candidates.
        max_studies: At most this many studies (``None``: all).
        seed: Seeds the sampling, one seed per batch drawn from it.
        weights: Per-observation weights of the score
            (:func:`~.metrics.clinical_f1_per_report`); ``None``: all 1.
        reference_prompt: Sample (and score the log-probabilities) with the label prompt
            set to the reference report's labels (``label_states``) instead of the
            classifier's predictions: the pairs then teach the decoder to say what its
            prompt says, not to second-guess the classifier.
        corpus_gain: Score each candidate by its first-order gain in corpus micro + macro
            F1 (:func:`candidate_scores`) instead of its own F1; ``weights`` must be None.
        rejected: ``worst_sample`` (the worst-scoring sample) or ``beam_search`` (the SFT
            model's own beam-search report, what it writes at test, whenever the best
            sample beats it: the pairs then correct the decoder's actual mistakes, not the
            hallucinations of high-temperature samples that beam search never writes).

    Returns:
        One dict per pair: ``image``, ``study_id``, ``reference``, ``chosen``, ``rejected``,
        their scores and ``ref_chosen``/``ref_rejected`` (summed log-probabilities).
    """
    if corpus_gain and weights is not None:
        raise ValueError("corpus_gain scores by corpus F1 gains; weights must be None")
    if rejected not in REJECTED:
        raise ValueError(f"rejected={rejected!r} must be one of {REJECTED}")
    was_training = module.model.training
    module.model.eval()
    n = len(dataset) if max_studies is None else min(len(dataset), max_studies)
    batch_size = max(1, 256 // num_samples)
    gen = torch.Generator().manual_seed(seed)
    sampled: list[dict[str, Any]] = []
    for start in tqdm(range(0, n, batch_size), desc="sampling preference pairs"):
        batch = collate([dataset[i] for i in range(start, min(n, start + batch_size))])
        images = batch["image"].to(module.device)
        states = batch["label_states"].to(module.device) if reference_prompt else None
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        with disable_adapters(module.model):
            samples = module.generate_reports(
                images,
                do_sample=True,
                temperature=temperature,
                top_p=top_p,
                num_return_sequences=num_samples,
                states=states,
            )
            beams = None  # with rejected=beam_search, each study's last candidate
            if rejected == "beam_search":
                beams = module.generate_reports(images, states=states)
        for i, ref in enumerate(batch["text"]):
            candidates = samples[i * num_samples : (i + 1) * num_samples]
            sampled.append(
                {
                    "image": batch["image"][i],
                    "label_states": batch["label_states"][i] if reference_prompt else None,
                    "study_id": batch["study_id"][i],
                    "reference": ref,
                    "candidates": [*candidates, beams[i]] if beams else candidates,
                }
            )
    scores = candidate_scores(
        [s["reference"] for s in sampled],
        [s["candidates"] for s in sampled],
        module.uncertain_as,
        weights,
        corpus_gain,
    )
    against_last = rejected == "beam_search"
    pairs = [
        pair
        for study, score in zip(sampled, scores, strict=True)
        if (pair := best_and_worst(study, score, against_last))
    ]
    add_reference_logprobs(module, pairs)
    module.model.train(was_training)
    rank_zero_info(f"preference pairs: {len(pairs)} of {n} studies")
    return pairs


def candidate_scores(
    references: Sequence[str],
    candidates: Sequence[Sequence[str]],
    uncertain_as: int = 0,
    weights: Sequence[float] | None = None,
    corpus_gain: bool = False,
) -> list[list[float]]:
    """Each study's candidates scored against its reference.

    By default, each candidate's own clinical F1 (:func:`~.metrics.clinical_f1_per_report`,
    with ``weights``). With ``corpus_gain``, what the candidate would add to corpus micro +
    macro F1 (:func:`~.metrics.f1_gains`, summed over the observations it names: hits gain,
    false alarms cost) at the operating point of all the candidates together, the SFT
    model's own sampled predictions: the pairs then rank reports by the scores the model is
    judged on, rather than punishing one false alarm on a normal study as hard as missing
    everything.
    """
    if not corpus_gain:
        return [
            [clinical_f1_per_report(ref, c, uncertain_as, weights) for c in cands]
            for ref, cands in zip(references, candidates, strict=True)
        ]
    counts = [len(cands) for cands in candidates]
    true = np.repeat(label_matrix(references, uncertain_as), counts, axis=0).astype(bool)
    pred = label_matrix([c for cands in candidates for c in cands], uncertain_as).astype(bool)
    hit, false_alarm = f1_gains(true, pred)
    flat = (np.where(true, hit, -false_alarm) * pred).sum(1)
    return [part.tolist() for part in np.split(flat, np.cumsum(counts)[:-1])]


def best_and_worst(
    study: dict[str, Any], scores: Sequence[float], against_last: bool = False
) -> dict[str, Any] | None:
    """The (chosen, rejected) pair of one study's candidates: best and worst by ``scores``;
    with ``against_last``, the best of the others against the last candidate (the beam-search
    report). ``None`` when the chosen would not score above the rejected."""
    cands = study["candidates"]
    if against_last:
        best, worst = int(np.argmax(scores[:-1])), len(cands) - 1
    else:
        best, worst = int(np.argmax(scores)), int(np.argmin(scores))
    if scores[best] <= scores[worst]:
        return None
    return {
        "image": study["image"],
        "label_states": study["label_states"],
        "study_id": study["study_id"],
        "reference": study["reference"],
        "normal": label_report(study["reference"])["No Finding"] == POSITIVE,
        "chosen": cands[best],
        "rejected": cands[worst],
        "chosen_score": float(scores[best]),
        "rejected_score": float(scores[worst]),
    }


def balance_normal_abnormal(pairs: list[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """At most as many pairs of normal studies as of abnormal ones (a seeded subset, order
    kept). About 70% of the studies are normal; this keeps their pairs from outnumbering the
    abnormal studies' (on the seed-0 training split they were 606 of 1,170 already, and
    balancing did not stop DPO naming less: docs/medical_cxr.md)."""
    abnormal = [i for i, p in enumerate(pairs) if not p["normal"]]
    normal = [i for i, p in enumerate(pairs) if p["normal"]]
    if not abnormal or len(normal) <= len(abnormal):
        return list(pairs)
    rng = np.random.default_rng(seed)
    kept = set(abnormal) | set(rng.choice(normal, size=len(abnormal), replace=False).tolist())
    return [p for i, p in enumerate(pairs) if i in kept]


def add_reference_logprobs(module: ReportGenModule, pairs: list[dict[str, Any]]) -> None:
    """Set ``ref_chosen``/``ref_rejected`` of each pair: the reports' summed log-probabilities
    under the frozen SFT model (``module``'s network with adapters disabled)."""
    for start in range(0, len(pairs), 64):
        chunk = pairs[start : start + 64]
        images = torch.stack([p["image"] for p in chunk]).to(module.device)
        states = pair_states(chunk, module.device)
        with disable_adapters(module.model):
            ref_c = sequence_logprobs(module, images, [p["chosen"] for p in chunk], states)
            ref_r = sequence_logprobs(module, images, [p["rejected"] for p in chunk], states)
        for p, c, r in zip(chunk, ref_c.tolist(), ref_r.tolist(), strict=True):
            p["ref_chosen"], p["ref_rejected"] = torch.tensor(c), torch.tensor(r)


def pair_states(pairs: Sequence[dict[str, Any]], device: torch.device) -> torch.Tensor | None:
    """The pairs' reference label prompts stacked (``None`` when mined without them)."""
    if pairs[0].get("label_states") is None:
        return None
    return torch.stack([p["label_states"] for p in pairs]).to(device)


def sequence_logprobs(
    module: ReportGenModule,
    images: torch.Tensor,
    texts: list[str],
    states: torch.Tensor | None = None,
) -> torch.Tensor:
    """Summed log-probability of each report given its image (and label prompt ``states``,
    ``None``: the classifier's) under ``module``'s network."""
    ids, mask = module.encode(texts)
    return module.model.sequence_logprobs(images, ids, mask, states)


def write_pairs(path: Path, pairs: list[dict[str, Any]]) -> Path:
    """Write the pairs' text fields (:data:`PAIR_FIELDS`) as JSON lines, atomically."""
    lines = [json.dumps({k: p[k] for k in PAIR_FIELDS}) for p in pairs]
    return atomic_write_text(path, "\n".join(lines) + "\n")
