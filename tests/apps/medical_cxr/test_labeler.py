"""The CheXpert-style labeler: hand-written sentences, API contract and real IU X-ray reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apps.medical_cxr.labeler import (
    CHEXPERT_LABELS,
    NEGATIVE,
    POSITIVE,
    UNCERTAIN,
    label_report,
    label_vector,
    split_sentences,
)
from apps.medical_cxr.reports import iter_iu_reports
from apps.medical_cxr.sources import embedded_reports_path

HAND_LABELS = Path(__file__).parent / "data" / "iu_hand_labels.json"

# (sentence, {observation: expected value}); unlisted observations are not checked.
CASES = [
    ("No pleural effusion.", {"Pleural Effusion": NEGATIVE, "No Finding": POSITIVE}),
    ("Small left pleural effusion.", {"Pleural Effusion": POSITIVE, "No Finding": NEGATIVE}),
    ("Cannot exclude pneumonia.", {"Pneumonia": UNCERTAIN, "No Finding": NEGATIVE}),
    ("Pneumonia cannot be entirely excluded.", {"Pneumonia": UNCERTAIN}),
    ("Findings may represent atelectasis.", {"Atelectasis": UNCERTAIN}),
    ("Possible early infiltrate.", {"Lung Opacity": UNCERTAIN}),
    ("No acute cardiopulmonary process.", {"No Finding": POSITIVE, "Pneumonia": None}),
    (
        "There is no focal consolidation, pleural effusion, or pneumothorax.",
        {"Consolidation": NEGATIVE, "Pleural Effusion": NEGATIVE, "Pneumothorax": NEGATIVE},
    ),
    (
        "No pneumothorax, possible small left effusion.",
        {"Pneumothorax": NEGATIVE, "Pleural Effusion": UNCERTAIN},
    ),
    (
        "Effusion and pneumothorax are not seen.",
        {"Pleural Effusion": NEGATIVE, "Pneumothorax": NEGATIVE},
    ),
    ("The previously seen pneumothorax has resolved.", {"Pneumothorax": NEGATIVE}),
    (
        "No focal consolidation, suspicious pulmonary opacity, or pneumothorax.",
        {"Lung Opacity": NEGATIVE, "Pneumothorax": NEGATIVE},
    ),
    ("No pleural line to suggest pneumothorax.", {"Pneumothorax": NEGATIVE}),
    ("No suspicious pulmonary nodule or mass.", {"Lung Lesion": NEGATIVE}),
    ("The heart is normal in size.", {"Cardiomegaly": NEGATIVE}),
    ("Heart size is upper limits of normal.", {"Cardiomegaly": UNCERTAIN}),
    ("Borderline cardiomegaly.", {"Cardiomegaly": UNCERTAIN}),
    ("Mild cardiomegaly.", {"Cardiomegaly": POSITIVE, "No Finding": NEGATIVE}),
    ("The cardiac silhouette is enlarged.", {"Cardiomegaly": POSITIVE}),
    ("The mediastinum is unremarkable.", {"Enlarged Cardiomediastinum": NEGATIVE}),
    ("Widened mediastinum.", {"Enlarged Cardiomediastinum": POSITIVE}),
    ("Interstitial pulmonary edema.", {"Edema": POSITIVE}),
    ("Central vascular congestion.", {"Edema": POSITIVE}),
    ("Right lower lobe pneumonia.", {"Pneumonia": POSITIVE}),
    ("Bibasilar atelectasis.", {"Atelectasis": POSITIVE}),
    ("Healed right rib fracture.", {"Fracture": POSITIVE}),
    ("No acute displaced fracture.", {"Fracture": NEGATIVE}),
    ("Blunting of the left costophrenic angle.", {"Pleural Effusion": POSITIVE}),
    ("Small pericardial effusion.", {"Pleural Effusion": None}),
    ("Bilateral apical pleural thickening.", {"Pleural Other": POSITIVE}),
    # Devices: present, but they do not make a study abnormal ("No Finding" stays positive).
    (
        "Right IJ central venous catheter tip in the SVC. Pacemaker leads in place.",
        {"Support Devices": POSITIVE, "No Finding": POSITIVE},
    ),
    ("Endotracheal tube 4 cm above the carina.", {"Support Devices": POSITIVE}),
    ("Median sternotomy wires.", {"Support Devices": POSITIVE}),
    ("Interval removal of the chest tube.", {"Support Devices": NEGATIVE}),
    # Clause boundaries stop a negation: "but" starts a new clause.
    (
        "No pneumothorax but there is a small effusion.",
        {"Pneumothorax": NEGATIVE, "Pleural Effusion": POSITIVE},
    ),
    # Aggregation over sentences: positive beats uncertain beats negative.
    ("No effusion on the right. Small effusion on the left.", {"Pleural Effusion": POSITIVE}),
    ("No consolidation. Possible consolidation at the left base.", {"Consolidation": UNCERTAIN}),
    # IU X-ray's anonymisation token does not break the negation.
    ("There are no XXXX of a pleural effusion.", {"Pleural Effusion": NEGATIVE}),
]


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[c[0][:40] for c in CASES])
def test_hand_written_sentences(text: str, expected: dict[str, int | None]) -> None:
    labels = label_report(text)
    assert {name: labels[name] for name in expected} == expected


def test_output_has_every_observation_and_valid_values() -> None:
    labels = label_report("Cardiomegaly with possible small effusion. No pneumothorax.")
    assert tuple(labels) == CHEXPERT_LABELS
    assert all(value in (None, -1, 0, 1) for value in labels.values())


def test_empty_report_mentions_nothing() -> None:
    assert label_report("   ") == dict.fromkeys(CHEXPERT_LABELS)


def test_non_string_input_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="report text as a str"):
        label_report(None)  # type: ignore[arg-type]


def test_split_sentences_keeps_question_marks_and_splits_lines() -> None:
    assert split_sentences("Heart normal. ?Pneumonia at the base\nNo effusion.") == [
        "Heart normal.",
        "?Pneumonia at the base",
        "No effusion.",
    ]


def test_label_vector_maps_uncertain_and_missing() -> None:
    labels = label_report("Possible pneumonia. Cardiomegaly. No effusion.")
    index = {name: i for i, name in enumerate(CHEXPERT_LABELS)}
    as_negative = label_vector(labels)
    as_positive = label_vector(labels, uncertain_as=1)
    assert as_negative[index["Pneumonia"]] == 0 and as_positive[index["Pneumonia"]] == 1
    assert as_negative[index["Cardiomegaly"]] == 1
    assert as_negative[index["Pleural Effusion"]] == 0
    assert label_vector(labels, missing_as=1)[index["Fracture"]] == 1
    with pytest.raises(ValueError, match="uncertain_as"):
        label_vector(labels, uncertain_as=-1)
    with pytest.raises(KeyError, match="unknown observation"):
        label_vector({"Pneumonitis": 1})


def _iu_reports(names: set[str]) -> dict[str, str]:
    """FINDINGS + IMPRESSION of the named IU X-ray reports, read from torchxrayvision."""
    pytest.importorskip("torchxrayvision")
    reports = {}
    for report in iter_iu_reports(embedded_reports_path()):
        name = Path(report.source).name
        if name in names:
            sections = report.sections
            reports[name] = f"{sections.get('findings', '')} {sections.get('impression', '')}"
    return reports


@pytest.mark.parametrize(("sample", "minimum"), [("development", 0.98), ("held_out", 0.96)])
def test_agreement_with_hand_labels_on_real_reports(sample: str, minimum: float) -> None:
    """Cell agreement (report x observation, 4-valued) with hand labels, see docs."""
    hand = json.loads(HAND_LABELS.read_text())[sample]
    reports = _iu_reports(set(hand))
    assert set(reports) == set(hand)
    cells = agree = 0
    for name, expected in hand.items():
        labels = label_report(reports[name])
        for observation in CHEXPERT_LABELS:
            cells += 1
            agree += labels[observation] == expected.get(observation)
    assert agree / cells >= minimum, f"{sample}: {agree}/{cells}"
