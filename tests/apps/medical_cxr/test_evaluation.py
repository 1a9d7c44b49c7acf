"""Evaluation outputs: the files of a test, the per-observation table against scikit-learn,
and the text and figures of report.md (what ReportWriter writes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import precision_recall_fscore_support

from apps.medical_cxr.evaluation import (
    SYNTHETIC_NOTE,
    Evaluation,
    IntroReport,
    evaluation_report,
    per_label_table,
    write_eval_files,
)
from apps.medical_cxr.labeler import CHEXPERT_LABELS, label_report, label_vector
from core.training import read_manifest
from core.training.report import TestReport

REFS = [
    "mild cardiomegaly . small left pleural effusion . no pneumothorax is seen .",
    "no acute cardiopulmonary abnormality .",
    "right lower lobe opacity , may represent atelectasis or pneumonia .",
]
HYPS = [
    "mild cardiomegaly . no pleural effusion .",
    "no acute cardiopulmonary abnormality .",
    "no acute cardiopulmonary abnormality .",
]
METRICS = {"BLEU-1": 0.5, "CIDEr": 1.25, "ce_f1_micro": 0.75}


def records(with_images: bool = True) -> list[dict]:
    rows = []
    for i, (ref, hyp) in enumerate(zip(REFS, HYPS, strict=True)):
        row = {"study_id": f"S{i}", "reference": ref, "hypothesis": hyp}
        if with_images:
            row["image"] = np.full((8, 8), i / 4, dtype=np.float32)
        rows.append(row)
    return rows


def test_per_label_table_against_scikit_learn():
    rows = per_label_table(REFS, HYPS, uncertain_as=1)
    true = np.array([label_vector(label_report(t), uncertain_as=1) for t in REFS])
    pred = np.array([label_vector(label_report(t), uncertain_as=1) for t in HYPS])
    p, r, f, _ = precision_recall_fscore_support(true, pred, average=None, zero_division=0)
    assert [row["observation"] for row in rows] == list(CHEXPERT_LABELS)
    for j, row in enumerate(rows):
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((p[j], r[j], f[j]))
        assert row["ref_positives"] == true[:, j].sum() and row["hyp_positives"] == pred[:, j].sum()


def test_eval_files(tmp_path):
    ev = Evaluation(tmp_path, "test", 3, records(), METRICS, uncertain_as=0)
    out = write_eval_files(ev)
    assert out == tmp_path / "eval" / "test_seed3"
    assert (out / "refs.txt").read_text().splitlines() == REFS
    assert (out / "hyps.txt").read_text().splitlines() == HYPS
    assert (out / "ids.txt").read_text() == "S0\nS1\nS2\n"
    saved = json.loads((out / "metrics.json").read_text())
    expected = {"split": "test", "seed": 3, "n": 3, "distinct_reports": 2, "uncertain_as": 0}
    assert saved == {**expected, **METRICS}
    lines = (out / "per_label.csv").read_text().splitlines()
    assert lines[0] == "observation,ref_positives,hyp_positives,precision,recall,f1"
    assert len(lines) == 15 and ev.per_label == per_label_table(REFS, HYPS, 0)
    assert lines[3].startswith("Cardiomegaly,1,1,1.0,1.0,1.0")
    (entry,) = read_manifest(tmp_path)
    assert entry["artifact"] == "evaluation" and entry["path"] == str(out)


def test_report_text_and_figures(tmp_path):
    ev = Evaluation(tmp_path, "test", 0, records(), METRICS)
    report = evaluation_report(ev, num_examples=2, source="embedded")
    assert isinstance(report, TestReport)
    text = report.markdown()
    head = "# Chest X-ray report generation: test split, seed 0\n\n"
    assert text.startswith(
        head + SYNTHETIC_NOTE + "\n\n3 studies, 2 distinct generated reports; uncertain "
        "labels count as 0.\n\n"
    )
    assert list(report.sections) == [
        "Metrics", "Per observation", "Plots", "Generated reports beside their references"
    ]  # fmt: skip
    assert report.sections["Metrics"].splitlines()[2:] == [
        "| BLEU-1 | 0.5000 |", "| CIDEr | 1.2500 |", "| ce_f1_micro | 0.7500 |"
    ]  # fmt: skip
    # No metrics.csv in the folder: no curves; the figures are placed in "Plots".
    assert list(report.figures) == ["per_label_test", "examples_test"]
    assert report.sections["Plots"] == (
        "![per_label](per_label_test.png)\n![examples](examples_test.png)"
    )
    assert "## Figures" not in text
    # Examples: one study per finding first (S0 cardiomegaly, S2 opacity); then the files.
    examples = report.sections["Generated reports beside their references"]
    assert examples.index("**#1 S0**") < examples.index("**#2 S2**") and "S1" not in examples
    assert examples.endswith("Files: `eval/test_seed0/` (refs.txt, hyps.txt, metrics.json).")
    assert "- generated: no acute cardiopulmonary abnormality ." in examples
    real = evaluation_report(
        Evaluation(tmp_path, "val", 1, records(False), METRICS), 6, "mimic_cxr"
    )
    assert SYNTHETIC_NOTE not in real.markdown() and list(real.figures) == ["per_label_val"]


def test_intro_report_puts_the_intro_under_the_title():
    plain = TestReport("T", sections={"A": "a"})
    assert IntroReport("T", sections={"A": "a"}).markdown() == plain.markdown()
    assert IntroReport("T", sections={"A": "a"}, intro="hello").markdown() == (
        "# T\n\nhello\n\n## A\n\na\n"
    )


def test_examples_show_one_abnormal_study_per_finding_first():
    from apps.medical_cxr.evaluation import example_order

    refs = [
        "the lungs are clear .",
        "mild cardiomegaly .",
        "the lungs are clear .",
        "moderate cardiomegaly .",
        "small right pleural effusion .",
        "a pacemaker is present .",
    ]
    # Cardiomegaly (1), Pleural Effusion (4), Support Devices (5), then No Finding (0)
    assert example_order(refs)[:4] == [1, 4, 5, 0]
    assert sorted(example_order(refs)) == list(range(6))
