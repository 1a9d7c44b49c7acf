"""Where studies come from: the embedded default and the real on-disk layouts.

Every loader returns a list of :class:`Study` (one report / one set of labels per study, the
patient it belongs to, and either image files or nothing, for phantoms) and applies one
error policy, ``on_error``, to bad records: a corrupt image, a report without the needed
section or not in UTF-8, a CSV line not in UTF-8, a label cell that is not 1, 0, -1 or
blank. ``"raise"`` stops with a one-line ``ValueError`` that names the file, line and column
and the fix; ``"skip"`` leaves the study (or CSV row) out and counts it, and each load logs
one summary of its own skips (an :class:`ErrorPolicy` per load, so a load stopped by an
exception leaves nothing for the next one to report). Configuration errors (a CSV without a
needed column or with a header that is not UTF-8, a missing folder) always raise.

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

from core.textio import NotUtf8Error, read_utf8

from .images import ImageLoadError, check_image
from .label_csv import LINE, label_problems, labels_from_row, read_csv_checked
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
    """Reject an ``on_error`` value that is not one of :data:`ON_ERROR`."""
    if on_error not in ON_ERROR:
        raise ValueError(f"data.on_error={on_error!r} must be one of {ON_ERROR}.")


#: How to go on past a bad record, added to a raised message that does not say it already.
SKIP_HINT = "or set data.on_error=skip to leave such studies or rows out (they are counted)"


class ErrorPolicy:
    """One load's ``on_error`` policy and the problems it skipped.

    Each load makes its own, so its summary counts its own skips only.
    """

    def __init__(self, on_error: str) -> None:
        check_on_error(on_error)
        self.on_error = on_error
        self.skipped: list[str] = []

    def handle(self, message: str, err: Exception | None = None) -> None:
        """Raise ``ValueError(message)`` (plus :data:`SKIP_HINT`) or record a skip.

        Skips are logged one per line at DEBUG level and summarised by :meth:`summarise`.
        """
        if self.on_error == "raise":
            hint = "" if "data.on_error" in message else f"; {SKIP_HINT}"
            raise ValueError(f"{message.rstrip('.')}{hint}.") from err
        log.debug("skipped: %s", message)
        self.skipped.append(message)

    def handle_error(self, err: Exception) -> None:
        """:meth:`handle` for an exception whose message already names the input."""
        self.handle(str(err), err)

    def summarise(self, source: str) -> list[str]:
        """Log one WARNING summarising this load's skips (none: nothing); return them."""
        if self.skipped:
            n = len(self.skipped)
            log.warning(
                "%s: %d problem%s skipped (data.on_error=skip; the studies or rows they concern "
                "are left out), e.g.\n  %s%s",
                source,
                n,
                "" if n == 1 else "s",
                "\n  ".join(self.skipped[:3]),
                "\n  ..." if n > 3 else "",
            )
        return list(self.skipped)


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


def _report_study(
    report: ParsedReport, sections: Sequence[str], policy: ErrorPolicy
) -> Study | None:
    problem = check_sections(report, sections)
    if problem:
        policy.handle(problem)
        return None
    text = report.text(sections)
    return Study(report.study_id, report.study_id, text, label_report(text))


def load_embedded(
    sections: Sequence[str] = ("findings",), on_error: str = "skip", reports: str | None = None
) -> list[Study]:
    """The real IU X-ray reports (labels from their text); images are rendered later.

    IU X-ray has one study per patient, so the patient id is the report id.
    """
    policy = ErrorPolicy(on_error)
    path = Path(reports) if reports else embedded_reports_path()
    studies = []
    for report in iter_iu_reports(path, on_bad_file=policy.handle_error):
        study = _report_study(report, sections, policy)
        if study is not None:
            studies.append(study)
    policy.summarise(f"embedded IU X-ray reports {path.name}")
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
    policy = ErrorPolicy(on_error)
    image_dir = Path(images)
    if not image_dir.is_dir():
        raise FileNotFoundError(
            f"IU X-ray image folder {str(image_dir)!r} does not exist; set data.images."
        )
    studies = []
    for report in iter_iu_reports(reports, on_bad_file=policy.handle_error):
        study = _report_study(report, sections, policy)
        if study is None:
            continue
        if not report.image_ids:
            policy.handle(f"report {report.study_id!r} ({report.source}) lists no images")
            continue
        study.image_paths = [str(image_dir / f"{i}{suffix}") for i in report.image_ids]
        if _images_ok(study, policy, check_images):
            studies.append(study)
    policy.summarise(f"IU X-ray {reports}")
    return studies


def _images_ok(study: Study, policy: ErrorPolicy, check: bool) -> bool:
    """Keep the study's readable images; False (after the policy) when none is left."""
    if not check:
        return True
    good = []
    for path in study.image_paths:
        try:
            check_image(path)
            good.append(path)
        except ImageLoadError as err:
            policy.handle(f"study {study.study_id!r}: {err}", err)
    study.image_paths = good
    return bool(good)


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
    policy = ErrorPolicy(on_error)
    base = Path(root)
    split = read_csv_checked(
        _find(base, ["mimic-cxr-2.0.0-split.csv.gz", "mimic-cxr-2.0.0-split.csv"], "split CSV"),
        ["dicom_id", "study_id", "subject_id", "split"],
        "MIMIC-CXR split",
        policy.handle,
    )
    label_csv = _find(
        base, ["mimic-cxr-2.0.0-chexpert.csv.gz", "mimic-cxr-2.0.0-chexpert.csv"], "label CSV"
    )
    labels = read_csv_checked(
        label_csv,
        ["subject_id", "study_id", *CHEXPERT_LABELS],
        "MIMIC-CXR CheXpert label",
        policy.handle,
    )
    bad_labels = {
        labels.at[i, "study_id"]: message
        for i, message in label_problems(labels, "MIMIC-CXR CheXpert label", label_csv).items()
    }
    labels = labels.set_index("study_id")
    if views:
        meta = read_csv_checked(
            _find(
                base, ["mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-metadata.csv"], "meta"
            ),
            ["dicom_id", "ViewPosition"],
            "MIMIC-CXR metadata",
            policy.handle,
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
            policy.handle(f"study s{study_id}: report {str(report_file)!r} does not exist")
            continue
        try:
            text = read_utf8(report_file)
        except NotUtf8Error as err:
            policy.handle(f"study s{study_id}: report {err}", err)
            continue
        report = parse_mimic_report(text, f"s{study_id}", str(report_file))
        problem = check_sections(report, sections)
        if problem:
            policy.handle(problem)
            continue
        if study_id not in labels.index:
            policy.handle(f"study s{study_id} has no row in the CheXpert label CSV")
            continue
        if study_id in bad_labels:
            policy.handle(f"study s{study_id}: {bad_labels[study_id]}")
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
        if _images_ok(study, policy, check_images):
            studies.append(study)
    policy.summarise(f"MIMIC-CXR {root}")
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
    policy = ErrorPolicy(on_error)
    frame = read_csv_checked(csv, ["Path", *CHEXPERT_LABELS], "CheXpert label", policy.handle)
    bad_labels = label_problems(frame, "CheXpert label", csv)
    if frontal_only and "Frontal/Lateral" in frame.columns:
        frame = frame[frame["Frontal/Lateral"] == "Frontal"]
    root = Path(image_root) if image_root else Path(csv).resolve().parent.parent
    studies: dict[str, Study] = {}
    for index, row in frame.iterrows():
        if index in bad_labels:
            policy.handle(bad_labels[index])
            continue
        parts = Path(str(row["Path"])).parts
        patient = next((p for p in parts if p.startswith("patient")), None)
        study_part = next((p for p in parts if p.startswith("study")), None)
        if patient is None or study_part is None:
            policy.handle(
                f"CheXpert label CSV {csv}: line {row[LINE]}: Path {row['Path']!r} has no "
                "patientN/studyM parts"
            )
            continue
        key = f"{patient}/{study_part}"
        if key not in studies:
            studies[key] = Study(key, patient, "", labels_from_row(row))
        studies[key].image_paths.append(str(root / str(row["Path"])))
    out = []
    for study in studies.values():
        if _images_ok(study, policy, check_images):
            out.append(study)
    policy.summarise(f"CheXpert {csv}")
    return out
