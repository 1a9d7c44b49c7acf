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
    assert "3 problems skipped" in caplog.text and "no findings section" in caplog.text


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


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


def test_non_utf8_mimic_report_names_file_and_line_and_honours_skip(tmp_path, caplog):
    _mimic(tmp_path)
    report = tmp_path / "files" / "p10" / "p10000032" / "s50000001.txt"
    report.write_bytes(b"FINDINGS: Enlarged heart.\n IMPRESSION: Cardiom\xe9galie.")
    with pytest.raises(ValueError, match=r"s50000001\.txt: line 2, column 21") as err:
        load_mimic_cxr(str(tmp_path), sections=["impression"], on_error="raise")
    assert "re-save the file as UTF-8" in _one_line(err) and "data.on_error=skip" in str(err.value)
    with caplog.at_level(logging.WARNING, logger="apps.medical_cxr.sources"):
        studies = load_mimic_cxr(str(tmp_path), sections=["impression"], on_error="skip")
    assert [s.study_id for s in studies] == ["s50000002"]
    assert "1 problem skipped" in caplog.text and "s50000001.txt: line 2" in caplog.text


def _chexpert_csv(tmp_path: Path, edema: list[str], sex: list[str] | None = None) -> Path:
    """A CheXpert-style CSV of one frontal image per study, ``edema`` cells as written."""
    csv = tmp_path / "CheXpert-v1.0-small" / "train.csv"
    header = ["Path", "Sex", "Frontal/Lateral", *CHEXPERT_LABELS]
    lines = [",".join(header)]
    for i, cell in enumerate(edema):
        path = f"CheXpert-v1.0-small/train/patient{i:05d}/study1/view1_frontal.jpg"
        _png(tmp_path / path)
        labels = [cell if name == "Edema" else "" for name in CHEXPERT_LABELS]
        lines.append(",".join([path, (sex or ["Female"] * len(edema))[i], "Frontal", *labels]))
    csv.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    return csv


def test_non_utf8_csv_row_names_file_and_line_and_honours_skip(tmp_path, caplog):
    csv = _chexpert_csv(tmp_path, ["1.0", "0.0", "-1.0"], sex=["Female", "Féminin", "Male"])
    with pytest.raises(ValueError, match=r"train\.csv: line 3, column \d+: byte 0xe9") as err:
        load_chexpert(str(csv), on_error="raise")
    assert "re-save the file as UTF-8" in _one_line(err)
    with caplog.at_level(logging.WARNING, logger="apps.medical_cxr.sources"):
        studies = load_chexpert(str(csv), on_error="skip")
    assert [(s.patient_id, s.labels["Edema"]) for s in studies] == [
        ("patient00000", 1),
        ("patient00002", -1),
    ]
    assert "1 problem skipped" in caplog.text and "train.csv: line 3" in caplog.text


def test_chexpert_label_cell_names_file_row_column_and_valid_values(tmp_path, caplog):
    csv = _chexpert_csv(tmp_path, ["1.0", "yes", "-1.0", " 0 "])
    with pytest.raises(ValueError, match=r"train\.csv.* line 3.*'Edema'.*'yes'") as err:
        load_chexpert(str(csv), on_error="raise")
    message = _one_line(err)
    assert "1, 0, -1 or blank" in message and "data.on_error=skip" in message
    with caplog.at_level(logging.WARNING, logger="apps.medical_cxr.sources"):
        studies = load_chexpert(str(csv), on_error="skip")
    # The column holds text now, yet its valid cells still read as numbers.
    assert [(s.patient_id, s.labels["Edema"]) for s in studies] == [
        ("patient00000", 1),
        ("patient00002", -1),
        ("patient00003", 0),
    ]
    assert studies[0].labels["Cardiomegaly"] is None
    assert "1 problem skipped" in caplog.text


def test_mimic_label_cell_is_named_and_skippable(tmp_path):
    _mimic(tmp_path)
    labels = tmp_path / "mimic-cxr-2.0.0-chexpert.csv.gz"
    frame = pd.read_csv(labels)
    frame["Edema"] = frame["Edema"].astype(object)
    frame.loc[1, "Edema"] = "maybe"
    frame.to_csv(labels, index=False)
    with pytest.raises(ValueError, match=r"chexpert\.csv\.gz.* line 3.*'Edema'.*'maybe'") as err:
        load_mimic_cxr(str(tmp_path), sections=["impression"], on_error="raise")
    _one_line(err)
    studies = load_mimic_cxr(str(tmp_path), sections=["impression"], on_error="skip")
    assert [s.study_id for s in studies] == ["s50000001"]


def test_skip_summary_belongs_to_its_own_load(tmp_path, caplog):
    from .layouts import make_iu_layout

    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    reports, images = make_iu_layout(tmp_path / "first")
    # The first load skips a report that is not UTF-8 besides the layout's three problems.
    bad = (reports / "1.xml").read_text().replace("CXR1", "CXR9").replace("normal", "n\xe9rmal")
    (reports / "9.xml").write_bytes(bad.encode("latin-1"))
    with caplog.at_level(logging.WARNING, logger="apps.medical_cxr.sources"):
        load_iu_xray(str(reports), str(images), on_error="skip")
    assert "4 problems skipped" in caplog.text
    clean, clean_images = make_iu_layout(tmp_path / "second")
    (clean / "2.xml").unlink()
    (clean / "3.xml").unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="apps.medical_cxr.sources"):
        studies = load_iu_xray(str(clean), str(clean_images), on_error="skip")
    assert [s.study_id for s in studies] == ["CXR1"]
    assert "skipped" not in caplog.text


def test_iu_xray_report_that_is_not_xml_or_utf8_is_skipped_or_named(iu_layout, caplog):
    reports, images = iu_layout
    (reports / "9.xml").write_bytes(b"<eCitation><uId id='CXR9'/>caf\xe9</eCitation>")
    (reports / "2.xml").rename(reports / "99.xml")  # after 9.xml: its error comes second
    with pytest.raises(ValueError, match=r"9\.xml: not a well-formed.*line 1.*on_error=skip"):
        load_iu_xray(str(reports), str(images), on_error="raise", check_images=False)
    with caplog.at_level(logging.WARNING, logger="apps.medical_cxr.sources"):
        studies = load_iu_xray(str(reports), str(images), on_error="skip")
    assert [s.study_id for s in studies] == ["CXR1"]
    assert "4 problems skipped" in caplog.text
