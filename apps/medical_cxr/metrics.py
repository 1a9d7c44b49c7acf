"""Report-generation and classification metrics for chest X-rays.

* :func:`nlg_metrics`: BLEU-1..4, METEOR, ROUGE-L and CIDEr from ``pycocoevalcap``, the
  implementation the report-generation literature (R2Gen and its successors) reports, on
  text prepared the same way (lower case, punctuation split off as its own token).
* :func:`clinical_efficacy`: CheXpert-label precision / recall / F1, micro and macro over
  the 14 observations, labels read from both texts by :func:`~.labeler.label_report`.
* :func:`clinical_f1_per_report`: the same F1 for one report pair, the judge that ranks
  sampled reports for preference tuning.
* :func:`f1_gains`: what one more hit or false alarm of each observation adds to corpus
  micro + macro F1 (first order), the other judge preference tuning may use.
* :func:`macro_auroc`: mean one-vs-rest AUROC over the classes that have both positives and
  negatives; the classes left out are counted, not silently averaged as NaN.
* :func:`dice_score`: MONAI's Dice for segmentation masks.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor

from .labeler import CHEXPERT_LABELS, label_report, label_vector

NLG_KEYS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
CE_KEYS = (
    "ce_precision_micro",
    "ce_recall_micro",
    "ce_f1_micro",
    "ce_precision_macro",
    "ce_recall_macro",
    "ce_f1_macro",
)

#: Stands in for an empty report (pycocoevalcap cannot score empty strings); it matches
#: nothing a real report contains, so an empty hypothesis earns no n-gram credit.
EMPTY = "<empty>"

_TOKEN = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*|[^\sa-z0-9]")


def prepare_text(text: str) -> str:
    """Lower-case, split punctuation into tokens and squeeze spaces (R2Gen's convention)."""
    return " ".join(_TOKEN.findall(text.lower()))


def _check_pairs(references: Sequence[str], hypotheses: Sequence[str]) -> None:
    if len(references) != len(hypotheses):
        raise ValueError(
            f"references ({len(references)}) and hypotheses ({len(hypotheses)}) must pair up "
            "one to one: pass one generated report per reference report"
        )
    if not references:
        raise ValueError("references is empty: metrics need at least one report pair")
    for name, texts in (("references", references), ("hypotheses", hypotheses)):
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TypeError(f"{name}[{bad[0]}] is {type(texts[bad[0]]).__name__}, not str")


def java_available() -> bool:
    """METEOR runs pycocoevalcap's Java jar; it is skipped where ``java`` is missing."""
    return shutil.which("java") is not None


def nlg_metrics(
    references: Sequence[str], hypotheses: Sequence[str], meteor: bool = True
) -> dict[str, float]:
    """Corpus-level BLEU-1..4, METEOR, ROUGE-L and CIDEr(-D) of ``hypotheses``.

    One reference per hypothesis. An empty hypothesis is scored as the token :data:`EMPTY`,
    which earns no credit. METEOR is left out,
    with a warning, when ``meteor`` is False or Java is missing.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    _check_pairs(references, hypotheses)
    gts = {i: [prepare_text(r) or EMPTY] for i, r in enumerate(references)}
    res = {i: [prepare_text(h) or EMPTY] for i, h in enumerate(hypotheses)}
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its internals
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores = {f"BLEU-{n}": float(bleu[n - 1]) for n in range(1, 5)}
    if meteor and java_available():
        scores["METEOR"] = _meteor(gts, res)
    elif meteor:
        warnings.warn(
            "METEOR skipped: it needs Java (pycocoevalcap runs meteor-1.5.jar); install a JRE "
            "(e.g. apt-get install default-jre-headless) to report it",
            stacklevel=2,
        )
    scores["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    return scores


def _meteor(gts: dict[int, list[str]], res: dict[int, list[str]]) -> float:
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()
    try:
        score, _ = scorer.compute_score(gts, res)
    finally:  # stop the JVM now, not whenever the scorer is garbage-collected
        process = scorer.meteor_p
        process.kill()
        process.wait()
        for pipe in (process.stdin, process.stdout, process.stderr):
            pipe.close()
    return float(score)


def label_matrix(texts: Sequence[str], uncertain_as: int) -> np.ndarray:
    return np.array([label_vector(label_report(t), uncertain_as=uncertain_as) for t in texts])


def _confusion(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per label, true positives, false positives and false negatives of binary (samples,
    labels) matrices, as floats."""
    true, pred = np.asarray(true, dtype=bool), np.asarray(pred, dtype=bool)
    if true.shape != pred.shape or true.ndim != 2:
        raise ValueError(f"true {true.shape} and pred {pred.shape} must be equal 2-D shapes")
    tp = (true & pred).sum(0).astype(float)
    fp = (~true & pred).sum(0).astype(float)
    fn = (true & ~pred).sum(0).astype(float)
    return tp, fp, fn


def precision_recall_f1(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Micro and macro precision / recall / F1 of binary (samples, labels) matrices.

    Macro averages the per-label scores over all labels; a label with no predicted (or no
    true) positives scores 0 precision (recall), as scikit-learn's ``zero_division=0``.
    """
    tp, fp, fn = _confusion(true, pred)
    per_p = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    per_r = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=(tp + fn) > 0)
    per_f = np.divide(
        2 * per_p * per_r, per_p + per_r, out=np.zeros_like(tp), where=(per_p + per_r) > 0
    )
    micro_p = tp.sum() / (tp.sum() + fp.sum()) if tp.sum() + fp.sum() else 0.0
    micro_r = tp.sum() / (tp.sum() + fn.sum()) if tp.sum() + fn.sum() else 0.0
    micro_f = 2 * micro_p * micro_r / (micro_p + micro_r) if micro_p + micro_r else 0.0
    return {
        "ce_precision_micro": float(micro_p),
        "ce_recall_micro": float(micro_r),
        "ce_f1_micro": float(micro_f),
        "ce_precision_macro": float(per_p.mean()),
        "ce_recall_macro": float(per_r.mean()),
        "ce_f1_macro": float(per_f.mean()),
    }


#: Candidate decision thresholds of :func:`best_f1_thresholds`.
THRESHOLD_GRID = tuple(round(0.05 * k, 2) for k in range(1, 20))


def best_f1_thresholds(
    probs: np.ndarray | Tensor,
    targets: np.ndarray | Tensor,
    grid: Sequence[float] = THRESHOLD_GRID,
    default: float = 0.5,
) -> np.ndarray:
    """Per label, the threshold of ``grid`` with the highest F1 of ``probs > t``.

    Ties go to the highest threshold (fewer false alarms); a label without a positive in
    ``targets`` keeps ``default`` (no F1 to maximise). Used on the validation split to turn a
    finding classifier's probabilities into the states of a label prompt.
    """
    p = _as_numpy(probs, "probs").astype(float)
    y = _as_numpy(targets, "targets").astype(bool)
    if p.shape != y.shape or p.ndim != 2:
        raise ValueError(f"probs {p.shape} and targets {y.shape} must be equal 2-D shapes")
    out = np.full(p.shape[1], default, dtype=float)
    for j in range(p.shape[1]):
        if not y[:, j].any():
            continue
        scores = [
            precision_recall_f1(y[:, j : j + 1], p[:, j : j + 1] > t)["ce_f1_macro"] for t in grid
        ]
        best = max(scores)
        out[j] = max(t for t, f in zip(grid, scores, strict=True) if f == best)
    return out


def clinical_efficacy(
    references: Sequence[str], hypotheses: Sequence[str], uncertain_as: int = 0
) -> dict[str, float]:
    """Clinical efficacy: CheXpert-label precision / recall / F1 of generated reports.

    Both texts are labeled with :func:`label_report`; uncertain counts as ``uncertain_as``
    (0, negative, by default) and unmentioned as negative; all 14 observations take part.
    """
    _check_pairs(references, hypotheses)
    true = label_matrix(references, uncertain_as)
    pred = label_matrix(hypotheses, uncertain_as)
    return precision_recall_f1(true, pred)


def clinical_f1_per_report(
    reference: str,
    hypothesis: str,
    uncertain_as: int = 0,
    weights: Sequence[float] | np.ndarray | None = None,
) -> float:
    """F1 between the positive CheXpert labels of one reference and one hypothesis.

    1.0 when neither report has a positive label (they agree there is nothing to find).
    ``weights`` (one per observation, :data:`CHEXPERT_LABELS` order) count each label's
    hits and misses that many times: ``2 sum(w tp) / (sum(w true) + sum(w pred))``, so a
    rare finding named right (or missed) moves the score more; ``None``: all 1.
    """
    true = np.array(label_vector(label_report(reference), uncertain_as=uncertain_as), bool)
    pred = np.array(label_vector(label_report(hypothesis), uncertain_as=uncertain_as), bool)
    w = np.ones(len(true)) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != true.shape:
        raise ValueError(
            f"weights must hold one value per observation ({len(true)}); got {w.shape}"
        )
    positives = float((w * true).sum() + (w * pred).sum())
    return 1.0 if positives == 0 else 2 * float((w * (true & pred)).sum()) / positives


def _f1_slopes(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """d F1 / d TP (a miss turned into a hit) and d F1 / d FP of ``F1 = 2 TP / (2 TP + FP +
    FN)`` with the positives ``TP + FN`` fixed; 0 where F1 has nothing to count."""
    denominator = 2 * tp + fp + fn
    safe = np.where(denominator > 0, denominator, 1.0) ** 2
    hit = np.where(denominator > 0, 2 * (tp + fn + fp) / safe, 0.0)
    false_alarm = np.where(denominator > 0, 2 * tp / safe, 0.0)
    return hit, false_alarm


def f1_gains(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per observation, what one more report naming it adds to corpus micro F1 + macro F1.

    At the operating point ``pred`` against ``true`` (binary (reports, observations)
    matrices, :func:`precision_recall_f1`'s F1s), the first-order change of micro F1 +
    macro F1 when one more report names observation ``k`` and is right (``hit[k] > 0``: a
    miss becomes a hit) or wrong (``false_alarm[k] >= 0``, a cost). Summed over the
    observations a report names, this ranks reports by their share of the corpus scores
    the issue's targets are stated in, where the per-report F1 of
    :func:`clinical_f1_per_report` punishes one false alarm on a normal study as hard as
    missing everything (as a DPO reward it did no better: docs/medical_cxr.md). Naming
    ``k`` pays when the chance it is right exceeds ``false_alarm[k] / (hit[k] +
    false_alarm[k])`` (half of ``k``'s F1, for macro alone).
    """
    tp, fp, fn = _confusion(true, pred)
    macro_hit, macro_false_alarm = _f1_slopes(tp, fp, fn)
    micro_hit, micro_false_alarm = _f1_slopes(tp.sum(), fp.sum(), fn.sum())
    labels = len(tp)
    return micro_hit + macro_hit / labels, micro_false_alarm + macro_false_alarm / labels


def macro_auroc(probs: np.ndarray | Tensor, targets: np.ndarray | Tensor) -> tuple[float, int]:
    """Mean one-vs-rest AUROC over classes with both labels present, and how many were not.

    ``probs`` and ``targets`` are (samples, classes); targets are 0/1. Returns ``(nan, C)``
    when no class can be scored.
    """
    probs = _as_numpy(probs, "probs").astype(float)
    targets = _as_numpy(targets, "targets")
    if probs.shape != targets.shape or probs.ndim != 2:
        raise ValueError(
            f"probs {probs.shape} and targets {targets.shape} must both be (samples, classes)"
        )
    if not np.isin(targets, (0, 1)).all():
        raise ValueError("targets must be 0/1; map uncertain labels first (label_vector)")
    aucs, excluded = [], 0
    for column in range(targets.shape[1]):
        if targets[:, column].min() == targets[:, column].max():
            excluded += 1
            continue
        aucs.append(roc_auc_score(targets[:, column], probs[:, column]))
    return (float(np.mean(aucs)) if aucs else float("nan")), excluded


def dice_score(pred_masks: np.ndarray | Tensor, true_masks: np.ndarray | Tensor) -> float:
    """Mean Dice over masks (MONAI ``DiceMetric``); inputs are binary (N, H, W) or (N, 1, H, W).

    A pair of empty masks scores 1 (nothing to find, nothing found).
    """
    from monai.metrics import DiceMetric

    pred = torch.as_tensor(_as_numpy(pred_masks, "pred_masks")).float()
    true = torch.as_tensor(_as_numpy(true_masks, "true_masks")).float()
    if pred.shape != true.shape:
        raise ValueError(
            f"pred_masks {tuple(pred.shape)} and true_masks {tuple(true.shape)} differ"
        )
    if pred.ndim == 3:
        pred, true = pred.unsqueeze(1), true.unsqueeze(1)
    if pred.ndim != 4:
        raise ValueError(f"masks must be (N, H, W) or (N, 1, H, W), got {tuple(pred.shape)}")
    metric = DiceMetric(include_background=True, reduction="mean", ignore_empty=False)
    metric((pred > 0.5).float(), (true > 0.5).float())
    return float(metric.aggregate())


def _as_numpy(array: np.ndarray | Tensor, name: str) -> np.ndarray:
    if isinstance(array, Tensor):
        return array.detach().cpu().numpy()
    if isinstance(array, np.ndarray):
        return array
    try:
        return np.asarray(array)
    except Exception as error:  # pragma: no cover - numpy's message is clear enough
        raise TypeError(f"{name} must be an array or tensor, got {type(array).__name__}") from error


__all__ = [
    "CE_KEYS",
    "CHEXPERT_LABELS",
    "NLG_KEYS",
    "THRESHOLD_GRID",
    "best_f1_thresholds",
    "clinical_efficacy",
    "clinical_f1_per_report",
    "dice_score",
    "f1_gains",
    "java_available",
    "label_matrix",
    "macro_auroc",
    "nlg_metrics",
    "precision_recall_f1",
    "prepare_text",
]
