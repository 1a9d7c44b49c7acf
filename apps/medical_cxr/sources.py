"""Where studies come from: the embedded default and the real on-disk layouts.

Every loader returns a list of :class:`Study` (one report / one set of labels per study, the
patient it belongs to, and either image files or nothing, for phantoms) and applies one
error policy, ``on_error``: ``"raise"`` stops with a message that names the file and the
fix, ``"skip"`` leaves the study out and logs one warning line per study. Configuration
errors (a CSV without a needed column, a missing folder) always raise.

Layouts:

* **embedded** (default): the 3,955 real IU X-ray reports shipped inside the installed
  ``torchxrayvision`` package (``torchxrayvision/data/NLMCXR_reports.tgz``, read at run time,
  never copied), each paired with a synthetic phantom (see :mod:`.phantom`).
* **IU X-ray / OpenI**: ``ecgen-radiology/*.xml`` (or the ``.tgz``) + a folder of PNGs named
  by the reports' ``parentImage`` ids (``CXR1_1_IM-0001-3001.png``).
* **MIMIC-CXR-JPG**: ``mimic-cxr-2.0.0-split.csv[.gz]`` (dicom_id, study_id, subject_id,
  split), ``mimic-cxr-2.0.0-chexpert.csv[.gz]`` (subject_id, study_id + 14 labels), images
  ``files/p10/p10000032/s50414267/<dicom_id>.jpg`` and reports
  ``files/p10/p10000032/s50414267.txt`` (from MIMIC-CXR).
* **CheXpert**: ``train.csv``/``valid.csv`` with ``Path`` + the 14 label columns (1, 0, -1,
  blank), images under the folder that holds ``CheXpert-v1.0*/``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .images import ImageLoadError, check_image
from .labeler import CHEXPERT_LABELS, label_report
from .reports import ParsedReport, check_sections, iter_iu_reports, parse_mimic_report

log = logging.getLogger(__name__)

ON_ERROR = ("raise", "skip")


@dataclass
class Study:
    """One imaging study: its report text (may be empty), labels, patient and images."""

    study_id: str
    patient_id: str
    text: str
    labels: dict[str, int | None]
    image_paths: list[str] = field(default_factory=list)
    split: str | None = None


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"data.on_error={on_error!r} must be one of {ON_ERROR}.")


_SKIPPED: list[str] = []


def handle(on_error: str, message: str, err: Exception | None = None) -> None:
    """Apply the error policy: raise ``ValueError(message)`` or record a skip.

    Skips are logged one per line at DEBUG level and summarised by :func:`log_skips`.
    """
    if on_error == "raise":
        raise ValueError(message) from err
    log.debug("skipped: %s", message)
    _SKIPPED.append(message)


def log_skips(source: str) -> list[str]:
    """Log one WARNING summarising the skips since the last call; return their messages."""
    skipped = list(_SKIPPED)
    _SKIPPED.clear()
    if skipped:
        shown = "\n  ".join(skipped[:3])
        log.warning(
            "%s: skipped %d studies (data.on_error=skip), e.g.\n  %s%s",
            source,
            len(skipped),
            shown,
            "\n  ..." if len(skipped) > 3 else "",
        )
    return skipped


def embedded_reports_path() -> Path:
    """``NLMCXR_reports.tgz`` inside the installed torchxrayvision package."""
    import importlib.util

    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded data needs the torchxrayvision package (it ships the IU X-ray "
            "reports): pip install torchxrayvision, or use data.dataset=iu_xray with files."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "NLMCXR_reports.tgz"
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is missing from the installed torchxrayvision; reinstall it."
        )
    return path


def _report_study(report: ParsedReport, sections: Sequence[str], on_error: str) -> Study | None:
    problem = check_sections(report, sections)
    if problem:
        handle(on_error, problem)
        return None
    text = report.text(sections)
    return Study(report.study_id, report.study_id, text, label_report(text))


def load_embedded(
    sections: Sequence[str] = ("findings",), on_error: str = "skip", reports: str | None = None
) -> list[Study]:
    """The real IU X-ray reports (labels from their text); images are rendered later.

    IU X-ray has one study per patient, so the patient id is the report id.
    """
    check_on_error(on_error)
    path = Path(reports) if reports else embedded_reports_path()
    studies = []
    for report in iter_iu_reports(path):
        study = _report_study(report, sections, on_error)
        if study is not None:
            studies.append(study)
    log_skips(f"embedded IU X-ray reports {path.name}")
    return studies


def load_iu_xray(
    reports: str,
    images: str,
    sections: Sequence[str] = ("findings",),
    on_error: str = "raise",
    check_images: bool = True,
    suffix: str = ".png",
) -> list[Study]:
    """IU X-ray / OpenI on disk: report XMLs (folder or .tgz) + PNGs named by image id."""
    check_on_error(on_error)
    image_dir = Path(images)
    if not image_dir.is_dir():
        raise FileNotFoundError(
            f"IU X-ray image folder {str(image_dir)!r} does not exist; set data.images."
        )
    studies = []
    for report in iter_iu_reports(reports):
        study = _report_study(report, sections, on_error)
        if study is None:
            continue
        if not report.image_ids:
            handle(on_error, f"report {report.study_id!r} ({report.source}) lists no images")
            continue
        study.image_paths = [str(image_dir / f"{i}{suffix}") for i in report.image_ids]
        if _images_ok(study, on_error, check_images):
            studies.append(study)
    log_skips(f"IU X-ray {reports}")
    return studies


def _images_ok(study: Study, on_error: str, check: bool) -> bool:
    """Keep the study's readable images; False (after the policy) when none is left."""
    if not check:
        return True
    good = []
    for path in study.image_paths:
        try:
            check_image(path)
            good.append(path)
        except ImageLoadError as err:
            handle(on_error, f"study {study.study_id!r}: {err}", err)
    study.image_paths = good
    return bool(good)


def read_csv_checked(path: str | Path, required: Sequence[str], what: str) -> pd.DataFrame:
    """Read a CSV (plain or .gz) and check it has ``required`` columns, naming any gap."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} CSV {str(path)!r} does not exist.")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{what} CSV {str(path)!r} cannot be parsed ({err}).") from err
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{what} CSV {str(path)!r} lacks column(s) {missing} (it has {list(frame.columns)}); "
            f"use the official file or add the column(s)."
        )
    return frame


def labels_from_row(row: pd.Series) -> dict[str, int | None]:
    """CheXpert-style label cells (1.0, 0.0, -1.0, blank) as ``label_report``-style values."""
    out: dict[str, int | None] = {}
    for name in CHEXPERT_LABELS:
        value = row[name]
        out[name] = None if pd.isna(value) else int(value)
        if out[name] not in (None, 1, 0, -1):
            raise ValueError(f"label {name!r} has value {value!r}; expected 1, 0, -1 or blank.")
    return out


def _find(root: Path, names: Sequence[str], what: str) -> Path:
    for name in names:
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"no {what} under {str(root)!r} (looked for {list(names)}).")


def load_mimic_cxr(
    root: str,
    sections: Sequence[str] = ("findings",),
    on_error: str = "raise",
    check_images: bool = True,
    reports_root: str | None = None,
    views: Sequence[str] | None = None,
) -> list[Study]:
    """MIMIC-CXR-JPG: split + CheXpert CSVs, JPEGs, report texts (see the module doc).

    Args:
        root: The MIMIC-CXR-JPG folder (holding ``files/`` and the CSVs).
        reports_root: Folder holding ``files/p*/p*/s*.txt`` (default: ``root``).
        views: Keep only these ``ViewPosition`` values (needs the metadata CSV).
    """
    check_on_error(on_error)
    base = Path(root)
    split = read_csv_checked(
        _find(base, ["mimic-cxr-2.0.0-split.csv.gz", "mimic-cxr-2.0.0-split.csv"], "split CSV"),
        ["dicom_id", "study_id", "subject_id", "split"],
        "MIMIC-CXR split",
    )
    labels = read_csv_checked(
        _find(
            base, ["mimic-cxr-2.0.0-chexpert.csv.gz", "mimic-cxr-2.0.0-chexpert.csv"], "label CSV"
        ),
        ["subject_id", "study_id", *CHEXPERT_LABELS],
        "MIMIC-CXR CheXpert label",
    ).set_index("study_id")
    if views:
        meta = read_csv_checked(
            _find(
                base, ["mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-metadata.csv"], "meta"
            ),
            ["dicom_id", "ViewPosition"],
            "MIMIC-CXR metadata",
        )
        keep = set(meta.loc[meta["ViewPosition"].isin(list(views)), "dicom_id"])
        split = split[split["dicom_id"].isin(keep)]
    text_root = Path(reports_root) if reports_root else base
    split_name = {"train": "train", "validate": "val", "val": "val", "test": "test"}
    studies = []
    for study_id, rows in split.groupby("study_id", sort=True):
        subject = int(rows["subject_id"].iloc[0])
        folder = Path("files") / f"p{str(subject)[:2]}" / f"p{subject}"
        report_file = text_root / folder / f"s{study_id}.txt"
        if not report_file.is_file():
            handle(on_error, f"study s{study_id}: report {str(report_file)!r} does not exist")
            continue
        report = parse_mimic_report(report_file.read_text(), f"s{study_id}", str(report_file))
        problem = check_sections(report, sections)
        if problem:
            handle(on_error, problem)
            continue
        if study_id not in labels.index:
            handle(on_error, f"study s{study_id} has no row in the CheXpert label CSV")
            continue
        study = Study(
            study_id=f"s{study_id}",
            patient_id=f"p{subject}",
            text=report.text(sections),
            labels=labels_from_row(labels.loc[study_id]),
            image_paths=[
                str(base / folder / f"s{study_id}" / f"{d}.jpg") for d in rows["dicom_id"]
            ],
            split=split_name.get(str(rows["split"].iloc[0]), str(rows["split"].iloc[0])),
        )
        if _images_ok(study, on_error, check_images):
            studies.append(study)
    log_skips(f"MIMIC-CXR {root}")
    return studies


def load_chexpert(
    csv: str,
    image_root: str | None = None,
    on_error: str = "raise",
    check_images: bool = True,
    frontal_only: bool = True,
) -> list[Study]:
    """A CheXpert-style label CSV (``Path`` + 14 label columns); no report text.

    ``image_root`` is the folder that the ``Path`` column is relative to (default: the
    CSV's grandparent, where ``CheXpert-v1.0-small/train.csv`` lives). The patient is the
    ``patientNNNNN`` part of the path; the study is ``patientNNNNN/studyM``.
    """
    check_on_error(on_error)
    frame = read_csv_checked(csv, ["Path", *CHEXPERT_LABELS], "CheXpert label")
    if frontal_only and "Frontal/Lateral" in frame.columns:
        frame = frame[frame["Frontal/Lateral"] == "Frontal"]
    root = Path(image_root) if image_root else Path(csv).resolve().parent.parent
    studies: dict[str, Study] = {}
    for _, row in frame.iterrows():
        parts = Path(str(row["Path"])).parts
        patient = next((p for p in parts if p.startswith("patient")), None)
        study_part = next((p for p in parts if p.startswith("study")), None)
        if patient is None or study_part is None:
            handle(on_error, f"CheXpert Path {row['Path']!r} has no patientN/studyM parts")
            continue
        key = f"{patient}/{study_part}"
        if key not in studies:
            studies[key] = Study(key, patient, "", labels_from_row(row))
        studies[key].image_paths.append(str(root / str(row["Path"])))
    out = []
    for study in studies.values():
        if _images_ok(study, on_error, check_images):
            out.append(study)
    log_skips(f"CheXpert {csv}")
    return out
