"""Report metrics against pycocoevalcap, brute-force formulas, scikit-learn, torchmetrics."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.metrics import precision_recall_fscore_support
from torchmetrics.classification import MultilabelAUROC

from apps.medical_cxr.labeler import CHEXPERT_LABELS, label_report, label_vector
from apps.medical_cxr.metrics import (
    CE_KEYS,
    THRESHOLD_GRID,
    best_f1_thresholds,
    clinical_efficacy,
    clinical_f1_per_report,
    dice_score,
    f1_gains,
    java_available,
    macro_auroc,
    nlg_metrics,
    precision_recall_f1,
    prepare_text,
)

REFS = [
    "The heart is normal in size. No pleural effusion or pneumothorax.",
    "Mild cardiomegaly. Small left pleural effusion.",
    "Lungs are clear. No acute cardiopulmonary process.",
    "Right lower lobe pneumonia. No pneumothorax.",
]
HYPS = [
    "Heart size is normal. No pleural effusion.",
    "Cardiomegaly with small bilateral pleural effusions.",
    "The lungs are clear. No acute disease.",
    "No focal consolidation. No pneumothorax or effusion.",
]


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def brute_force_bleu(refs: list[str], hyps: list[str], n_max: int) -> float:
    """Corpus BLEU (clipped n-gram precision, one reference, corpus brevity penalty)."""
    log_p = 0.0
    hyp_len = ref_len = 0
    for n in range(1, n_max + 1):
        matches = total = 0
        for ref, hyp in zip(refs, hyps, strict=True):
            r, h = prepare_text(ref).split(), prepare_text(hyp).split()
            h_counts, r_counts = _ngrams(h, n), _ngrams(r, n)
            matches += sum(min(c, r_counts[g]) for g, c in h_counts.items())
            total += max(len(h) - n + 1, 0)
        log_p += math.log(matches / total)
    for ref, hyp in zip(refs, hyps, strict=True):
        hyp_len += len(prepare_text(hyp).split())
        ref_len += len(prepare_text(ref).split())
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return brevity * math.exp(log_p / n_max)


def _lcs(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = (
                table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
            )
    return table[-1][-1]


def brute_force_rouge_l(refs: list[str], hyps: list[str], beta: float = 1.2) -> float:
    """Mean sentence ROUGE-L F-measure (LCS based, beta 1.2 as in coco-caption)."""
    scores = []
    for ref, hyp in zip(refs, hyps, strict=True):
        r, h = prepare_text(ref).split(), prepare_text(hyp).split()
        lcs = _lcs(r, h)
        precision, recall = lcs / len(h), lcs / len(r)
        scores.append((1 + beta**2) * precision * recall / (recall + beta**2 * precision))
    return float(np.mean(scores))


def brute_force_cider_d(refs: list[str], hyps: list[str], sigma: float = 6.0) -> float:
    """CIDEr-D as coco-caption computes it: tf-idf cosine per n, clipped, length-penalised."""
    ref_tokens = [prepare_text(r).split() for r in refs]
    hyp_tokens = [prepare_text(h).split() for h in hyps]
    doc_freq = Counter(g for toks in ref_tokens for n in range(1, 5) for g in set(_ngrams(toks, n)))
    log_n_docs = math.log(len(refs))

    def vectors(tokens: list[str]) -> tuple[list[dict], list[float], int]:
        vecs = []
        for n in range(1, 5):
            counts = _ngrams(tokens, n)
            vecs.append(
                {g: c * (log_n_docs - math.log(max(1.0, doc_freq[g]))) for g, c in counts.items()}
            )
        norms = [math.sqrt(sum(v * v for v in vec.values())) for vec in vecs]
        return vecs, norms, sum(_ngrams(tokens, 2).values())

    scores = []
    for r, h in zip(ref_tokens, hyp_tokens, strict=True):
        hv, hn, hl = vectors(h)
        rv, rn, rl = vectors(r)
        per_n = []
        for n in range(4):
            value = sum(min(w, rv[n].get(g, 0.0)) * rv[n].get(g, 0.0) for g, w in hv[n].items())
            if hn[n] and rn[n]:
                value /= hn[n] * rn[n]
            per_n.append(value * math.exp(-((hl - rl) ** 2) / (2 * sigma**2)))
        scores.append(10.0 * float(np.mean(per_n)))
    return float(np.mean(scores))


def test_prepare_text_splits_punctuation() -> None:
    assert prepare_text("No  pleural effusion. Heart: normal-sized!") == (
        "no pleural effusion . heart : normal-sized !"
    )


def test_nlg_metrics_match_brute_force_formulas() -> None:
    scores = nlg_metrics(REFS, HYPS, meteor=False)
    for n in range(1, 5):
        assert scores[f"BLEU-{n}"] == pytest.approx(brute_force_bleu(REFS, HYPS, n), abs=1e-6)
    assert scores["ROUGE-L"] == pytest.approx(brute_force_rouge_l(REFS, HYPS), abs=1e-9)
    assert scores["CIDEr"] == pytest.approx(brute_force_cider_d(REFS, HYPS), abs=1e-9)
    assert "METEOR" not in scores


def test_identical_reports_score_perfectly() -> None:
    scores = nlg_metrics(REFS, REFS, meteor=False)
    for key in ("BLEU-1", "BLEU-4", "ROUGE-L"):
        assert scores[key] == pytest.approx(1.0, abs=1e-6)
    assert scores["CIDEr"] > 1.0  # CIDEr is not bounded by 1


def test_empty_hypothesis_scores_zero_without_crashing() -> None:
    scores = nlg_metrics(REFS[:2], ["", ""], meteor=False)
    assert scores["BLEU-1"] < 1e-9 and scores["ROUGE-L"] == 0.0


@pytest.mark.skipif(not java_available(), reason="METEOR needs Java")
def test_meteor_runs_pycocoevalcap_on_the_prepared_texts(monkeypatch: pytest.MonkeyPatch) -> None:
    """One JVM: record what the real METEOR scorer saw and returned through nlg_metrics."""
    from pycocoevalcap.meteor import meteor as meteor_module

    seen = {}

    class RecordingMeteor(meteor_module.Meteor):
        def compute_score(self, gts, res):
            seen["gts"], seen["res"] = gts, res
            seen["score"], seen["per_report"] = super().compute_score(gts, res)
            return seen["score"], seen["per_report"]

    monkeypatch.setattr(meteor_module, "Meteor", RecordingMeteor)
    refs, hyps = [*REFS, REFS[0]], [*HYPS, REFS[0]]  # the last pair is identical
    scores = nlg_metrics(refs, hyps)
    assert seen["gts"] == {i: [prepare_text(r)] for i, r in enumerate(refs)}
    assert seen["res"] == {i: [prepare_text(h)] for i, h in enumerate(hyps)}
    assert scores["METEOR"] == pytest.approx(seen["score"], abs=1e-12)
    per_report = [float(x) for x in seen["per_report"]]
    assert per_report[-1] > 0.95  # an identical report scores (almost) 1
    assert all(0.0 <= x < per_report[-1] for x in per_report[:-1])


def test_meteor_is_skipped_with_a_warning_without_java(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("apps.medical_cxr.metrics.shutil.which", lambda name: None)
    with pytest.warns(UserWarning, match="METEOR skipped"):
        scores = nlg_metrics(REFS, HYPS)
    assert "METEOR" not in scores


def test_nlg_metrics_reject_unpaired_inputs() -> None:
    with pytest.raises(ValueError, match="pair up"):
        nlg_metrics(REFS, HYPS[:2])
    with pytest.raises(ValueError, match="empty"):
        nlg_metrics([], [])
    with pytest.raises(TypeError, match=r"hypotheses\[1\]"):
        nlg_metrics(REFS[:2], ["a", None])  # type: ignore[list-item]


def test_precision_recall_f1_matches_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    true = rng.random((40, 14)) < 0.3
    pred = rng.random((40, 14)) < 0.3
    true[:, 3] = False  # a label never present: macro counts it as zero
    ours = precision_recall_f1(true, pred)
    for average in ("micro", "macro"):
        p, r, f, _ = precision_recall_fscore_support(true, pred, average=average, zero_division=0)
        assert ours[f"ce_precision_{average}"] == pytest.approx(p)
        assert ours[f"ce_recall_{average}"] == pytest.approx(r)
        assert ours[f"ce_f1_{average}"] == pytest.approx(f)


def test_clinical_efficacy_by_hand() -> None:
    # Reference labels: Cardiomegaly + Effusion; hypothesis: Cardiomegaly + Edema.
    scores = clinical_efficacy(["Cardiomegaly. Pleural effusion."], ["Cardiomegaly. Edema."])
    assert set(scores) == set(CE_KEYS)
    assert scores["ce_precision_micro"] == pytest.approx(1 / 2)
    assert scores["ce_recall_micro"] == pytest.approx(1 / 2)
    assert scores["ce_f1_micro"] == pytest.approx(1 / 2)
    # Macro over 14 labels: only Cardiomegaly scores (P = R = F1 = 1).
    assert scores["ce_f1_macro"] == pytest.approx(1 / 14)


def test_clinical_efficacy_uncertain_mapping() -> None:
    refs, hyps = ["Pneumonia."], ["Possible pneumonia."]
    assert clinical_efficacy(refs, hyps)["ce_recall_micro"] == 0.0
    assert clinical_efficacy(refs, hyps, uncertain_as=1)["ce_recall_micro"] == 1.0


def test_clinical_f1_per_report() -> None:
    assert clinical_f1_per_report("Cardiomegaly. Effusion.", "Cardiomegaly.") == pytest.approx(
        2 * 1 / 3
    )
    assert clinical_f1_per_report("No effusion.", "Lungs are clear.") == 1.0  # both normal
    assert clinical_f1_per_report("Cardiomegaly.", "No acute process.") == 0.0
    vector = label_vector(label_report("Cardiomegaly."))
    assert vector[CHEXPERT_LABELS.index("Cardiomegaly")] == 1
    # Weighted: effusion counts 3 times, cardiomegaly once: 2 * 1 / (1 + 3 + 1)
    weights = np.ones(len(CHEXPERT_LABELS))
    weights[CHEXPERT_LABELS.index("Pleural Effusion")] = 3.0
    ref, hyp = "Cardiomegaly. Effusion.", "Cardiomegaly."
    assert clinical_f1_per_report(ref, hyp, weights=weights) == pytest.approx(2 / 5)
    ones = np.ones(len(CHEXPERT_LABELS))
    assert clinical_f1_per_report(ref, hyp, weights=ones) == clinical_f1_per_report(ref, hyp)
    with pytest.raises(ValueError, match="one value per observation"):
        clinical_f1_per_report(ref, hyp, weights=[1.0])


def test_macro_auroc_matches_torchmetrics_and_counts_excluded() -> None:
    rng = np.random.default_rng(1)
    probs = rng.random((60, 5))
    targets = (rng.random((60, 5)) < 0.4).astype(int)
    targets[:, 0] = (probs[:, 0] + 0.3 * rng.random(60) > 0.6).astype(int)
    reference = MultilabelAUROC(num_labels=5, average="macro", thresholds=None)
    expected = float(reference(torch.tensor(probs), torch.tensor(targets)))
    value, excluded = macro_auroc(probs, torch.tensor(targets))
    assert value == pytest.approx(expected, abs=1e-6) and excluded == 0
    targets[:, 2] = 0  # no positives: this class cannot be scored
    value, excluded = macro_auroc(probs, targets)
    kept = [0, 1, 3, 4]
    reference = MultilabelAUROC(num_labels=4, average="macro", thresholds=None)
    expected = float(reference(torch.tensor(probs[:, kept]), torch.tensor(targets[:, kept])))
    assert value == pytest.approx(expected, abs=1e-6) and excluded == 1


def test_macro_auroc_bad_inputs() -> None:
    with pytest.raises(ValueError, match="samples, classes"):
        macro_auroc(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="0/1"):
        macro_auroc(np.zeros((2, 1)), np.array([[-1], [1]]))
    value, excluded = macro_auroc(np.zeros((3, 2)), np.zeros((3, 2)))
    assert math.isnan(value) and excluded == 2


def test_dice_matches_closed_form() -> None:
    rng = np.random.default_rng(2)
    pred = rng.random((3, 16, 16)) > 0.5
    true = rng.random((3, 16, 16)) > 0.4
    expected = np.mean(
        [2 * (p & t).sum() / (p.sum() + t.sum()) for p, t in zip(pred, true, strict=True)]
    )
    assert dice_score(pred, true) == pytest.approx(expected, abs=1e-6)
    assert dice_score(true, true) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="differ"):
        dice_score(pred, true[:2])


def test_best_f1_thresholds_match_a_scikit_learn_search() -> None:
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    targets = rng.random((200, 5)) < [0.5, 0.1, 0.02, 0.0, 0.3]
    probs = np.clip(targets * 0.3 + rng.random((200, 5)) * 0.7, 0, 1)
    got = best_f1_thresholds(probs, torch.as_tensor(targets))
    for j in range(5):
        if not targets[:, j].any():
            assert got[j] == 0.5  # nothing to maximise: the default
            continue
        scores = [f1_score(targets[:, j], probs[:, j] > t, zero_division=0) for t in THRESHOLD_GRID]
        best = max(scores)
        assert got[j] == max(
            t for t, s in zip(THRESHOLD_GRID, scores, strict=True) if np.isclose(s, best)
        )
    with pytest.raises(ValueError, match="equal 2-D shapes"):
        best_f1_thresholds(probs[:, :2], targets)


def test_f1_gains_are_the_change_in_micro_plus_macro_f1_of_one_more_report() -> None:
    rng = np.random.default_rng(0)
    true = rng.random((20_000, 4)) < [0.5, 0.1, 0.02, 0.0]  # the last: never positive
    pred = np.where(rng.random(true.shape) < 0.8, true, rng.random(true.shape) < 0.05)
    pred[:, 3] = False

    def total(p: np.ndarray) -> float:
        scores = precision_recall_f1(true, p)
        return scores["ce_f1_micro"] + scores["ce_f1_macro"]

    hit, false_alarm = f1_gains(true, pred)
    for k in range(4):
        missed = np.flatnonzero(true[:, k] & ~pred[:, k])[:1]  # none for the last
        wrong = np.flatnonzero(~true[:, k] & ~pred[:, k])[:1]
        for rows, expected in ((missed, hit[k]), (wrong, -false_alarm[k])):
            for row in rows:
                changed = pred.copy()
                changed[row, k] = True
                assert total(changed) - total(pred) == pytest.approx(expected, rel=0.02)
    assert hit[2] / false_alarm[2] > hit[0] / false_alarm[0]  # a rare finding pays sooner
    assert false_alarm[3] > 0  # never positive: a false alarm still costs micro F1
    with pytest.raises(ValueError, match="equal 2-D shapes"):
        f1_gains(true, pred[:, :2])
