"""Real-format loaders on small on-disk copies of their layouts, and the error policy:
a corrupt image, a report without findings and a missing CSV column."""

from __future__ import annotations

import gzip
import importlib.util
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from apps.medical_cxr.labeler import CHEXPERT_LABELS
from apps.medical_cxr.sources import load_chexpert, load_iu_xray, load_mimic_cxr, read_csv_checked

from .layouts import png as _png


def test_iu_xray_skip_policy_logs_and_keeps_good_studies(iu_layout, caplog):
    reports, images = iu_layout
    with caplog.at_level(logging.WARNING, logger="apps.medical_cxr.sources"):
        studies = load_iu_xray(str(reports), str(images), on_error="skip")
    assert [s.study_id for s in studies] == ["CXR1"]
    assert len(studies[0].image_paths) == 2
    assert studies[0].labels["Pleural Effusion"] == 0 and studies[0].labels["No Finding"] == 1
    assert "skipped 3 studies" in caplog.text and "no findings section" in caplog.text


def test_iu_xray_raise_policy_names_the_problem(iu_layout):
    reports, images = iu_layout
    with pytest.raises(ValueError, match=r"CXR2.*no findings section"):
        load_iu_xray(str(reports), str(images), on_error="raise")
    (reports / "2.xml").unlink()
    with pytest.raises(ValueError, match=r"CXR3_1_IM-0001-1001\.png.*not a decodable image"):
        load_iu_xray(str(reports), str(images), on_error="raise")
    with pytest.raises(ValueError, match=r"on_error"):
        load_iu_xray(str(reports), str(images), on_error="ignore")


def _mimic(root: Path, drop_column: str | None = None) -> None:
    split = pd.DataFrame(
        {
            "dicom_id": ["d1", "d2", "d3"],
            "study_id": [50000001, 50000001, 50000002],
            "subject_id": [10000032, 10000032, 10000033],
            "split": ["train", "train", "test"],
        }
    )
    labels = pd.DataFrame(
        {
            "subject_id": [10000032, 10000033],
            "study_id": [50000001, 50000002],
            **{name: [np.nan, np.nan] for name in CHEXPERT_LABELS},
        }
    )
    labels.loc[0, "Cardiomegaly"] = 1.0
    labels.loc[1, "Pleural Effusion"] = -1.0
    if drop_column:
        labels = labels.drop(columns=[drop_column])
    split.to_csv(root / "mimic-cxr-2.0.0-split.csv.gz", index=False)
    labels.to_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", index=False)
    for subject, study, dicoms, text in (
        (10000032, 50000001, ["d1", "d2"], "FINDINGS: Enlarged heart.\n IMPRESSION: Cardiomegaly."),
        (10000033, 50000002, ["d3"], "IMPRESSION: Possible effusion."),
    ):
        folder = root / "files" / f"p{str(subject)[:2]}" / f"p{subject}"
        for d in dicoms:
            _png(folder / f"s{study}" / f"{d}.jpg")
        (folder / f"s{study}.txt").write_text(text)


def test_mimic_layout(tmp_path):
    _mimic(tmp_path)
    studies = load_mimic_cxr(str(tmp_path), sections=["impression"])
    assert [(s.study_id, s.patient_id, s.split) for s in studies] == [
        ("s50000001", "p10000032", "train"),
        ("s50000002", "p10000033", "test"),
    ]
    assert studies[0].labels["Cardiomegaly"] == 1 and studies[1].labels["Pleural Effusion"] == -1
    assert studies[0].labels["Edema"] is None and len(studies[0].image_paths) == 2
    # Findings are required by default: the second study has none.
    with pytest.raises(ValueError, match=r"s50000002.*no findings section"):
        load_mimic_cxr(str(tmp_path), on_error="raise")
    assert [s.study_id for s in load_mimic_cxr(str(tmp_path), on_error="skip")] == ["s50000001"]


def test_missing_csv_column_is_a_clear_error(tmp_path):
    _mimic(tmp_path, drop_column="Edema")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['Edema'\]"):
        load_mimic_cxr(str(tmp_path), on_error="skip")


def _chexpert_rows(n: int) -> pd.DataFrame:
    """The first rows of the real CheXpert train CSV shipped in torchxrayvision."""
    spec = importlib.util.find_spec("torchxrayvision")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "chexpert_train.csv.gz"
    with gzip.open(path, "rt") as f:
        return pd.read_csv(f, nrows=n)


def test_chexpert_csv_real_header(tmp_path):
    frame = _chexpert_rows(6)
    csv = tmp_path / "CheXpert-v1.0-small" / "train.csv"
    csv.parent.mkdir()
    frame.to_csv(csv, index=False)
    for p in frame["Path"]:
        _png(tmp_path / p)
    studies = load_chexpert(str(csv))
    frontal = frame[frame["Frontal/Lateral"] == "Frontal"]
    assert sum(len(s.image_paths) for s in studies) == len(frontal)
    first = frontal.iloc[0]
    assert studies[0].patient_id == Path(first["Path"]).parts[2]
    for name in CHEXPERT_LABELS:
        value = first[name]
        assert studies[0].labels[name] == (None if pd.isna(value) else int(value))
    frame.drop(columns=["Pneumothorax"]).to_csv(csv, index=False)
    with pytest.raises(ValueError, match=r"Pneumothorax"):
        load_chexpert(str(csv))


def test_read_csv_checked_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist"):
        read_csv_checked(tmp_path / "x.csv", ["a"], "test")
