"""Report text: sections of IU X-ray (OpenI) XML files and MIMIC-CXR free-text reports.

A report becomes a :class:`ParsedReport` with its sections (findings, impression,
indication, comparison). The training target is built from the sections a recipe asks for
(``findings`` by default, as in most IU X-ray report-generation work) and normalised the way
the report-generation literature does (lower case, one space, sentences ending in " .").
"""

from __future__ import annotations

import re
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SECTIONS = ("findings", "impression", "indication", "comparison")


class ReportFormatError(ValueError):
    """A report file cannot be parsed, or lacks the sections a recipe needs."""


@dataclass
class ParsedReport:
    """One study's report: its id, its sections (lower-case names) and its image ids."""

    study_id: str
    sections: dict[str, str] = field(default_factory=dict)
    image_ids: list[str] = field(default_factory=list)
    source: str = ""

    def text(self, sections: Sequence[str] = ("findings",)) -> str:
        """The named sections joined in order (empty ones left out), normalised."""
        parts = [self.sections.get(name, "").strip() for name in sections]
        return normalise_report(" ".join(p for p in parts if p))


def normalise_report(text: str) -> str:
    """Lower case, single spaces, sentence-final periods split off (``"a b ."``)."""
    text = text.lower().replace("\n", " ")
    text = re.sub(r"[^a-z0-9.,;:/%\-\s]", " ", text)
    text = re.sub(r"\s*([.,;:])\s*", r" \1 ", text)
    text = re.sub(r"(?:\s*\.\s*){2,}", " . ", text)
    return re.sub(r"\s+", " ", text).strip()


def check_sections(report: ParsedReport, required: Sequence[str]) -> str | None:
    """``None`` when every ``required`` section has text, else a message naming the gap."""
    missing = [name for name in required if not report.sections.get(name, "").strip()]
    if not missing:
        return None
    return (
        f"report {report.study_id!r} ({report.source}) has no {', '.join(missing)} section; "
        "set data.sections to sections it has, or data.on_error=skip to leave it out"
    )


def parse_iu_xml(text: str | bytes, source: str = "<xml>") -> ParsedReport:
    """Parse one OpenI/IU X-ray report XML (``ecgen-radiology/<n>.xml``)."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as err:
        raise ReportFormatError(
            f"{source}: not a well-formed IU X-ray report XML ({err}); re-extract the file."
        ) from err
    uid = root.find("uId")
    if uid is None or not uid.get("id"):
        raise ReportFormatError(f"{source}: no <uId id=...> element; is this an OpenI report?")
    sections: dict[str, str] = {}
    for node in root.iter("AbstractText"):
        label = (node.get("Label") or "").strip().lower()
        if label in SECTIONS:
            sections[label] = " ".join((node.text or "").split())
    images = [img.get("id", "") for img in root.iter("parentImage") if img.get("id")]
    return ParsedReport(
        study_id=uid.get("id", ""), sections=sections, image_ids=images, source=source
    )


def iter_iu_reports(
    path: str | Path, on_bad_file: Callable[[ReportFormatError], None] | None = None
) -> Iterator[ParsedReport]:
    """Every report of an IU X-ray report archive (``.tgz``) or folder of ``*.xml``, by file name.

    Files are read in a fixed order (sorted by name), so the output is reproducible. A file
    that does not parse raises its :class:`ReportFormatError`, or, with ``on_bad_file``, is
    handed to it and skipped, so a caller's ``on_error: skip`` can go on past it.
    """

    def parsed(data: bytes, source: str) -> ParsedReport | None:
        try:
            return parse_iu_xml(data, source=source)
        except ReportFormatError as err:
            if on_bad_file is None:
                raise
            on_bad_file(err)
            return None

    path = Path(path)
    if path.is_dir():
        files = sorted(path.rglob("*.xml"))
        if not files:
            raise FileNotFoundError(
                f"no *.xml report files under {str(path)!r}; point data.reports at the "
                "unpacked ecgen-radiology folder or at NLMCXR_reports.tgz."
            )
        for f in files:
            if (report := parsed(f.read_bytes(), str(f))) is not None:
                yield report
        return
    if not path.is_file():
        raise FileNotFoundError(
            f"IU X-ray reports {str(path)!r} do not exist; give the NLMCXR_reports.tgz archive "
            "or the unpacked ecgen-radiology folder."
        )
    try:
        archive = tarfile.open(path)  # noqa: SIM115  (closed by the with-block below)
    except tarfile.TarError as err:
        raise ReportFormatError(f"{str(path)!r} is not a readable tar archive ({err}).") from err
    with archive:
        members = sorted(
            (m for m in archive.getmembers() if m.isfile() and m.name.endswith(".xml")),
            key=lambda m: m.name,
        )
        for member in members:
            handle = archive.extractfile(member)
            assert handle is not None
            if (report := parsed(handle.read(), f"{path.name}:{member.name}")) is not None:
                yield report


_MIMIC_HEADER = re.compile(r"^\s*([A-Z][A-Z /&]+):", re.M)


def parse_mimic_report(text: str, study_id: str, source: str = "") -> ParsedReport:
    """Split a MIMIC-CXR free-text report into sections at its ``UPPER CASE:`` headers."""
    sections: dict[str, str] = {}
    heads = list(_MIMIC_HEADER.finditer(text))
    for i, head in enumerate(heads):
        name = head.group(1).strip().lower()
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        body = " ".join(text[head.end() : end].split())
        if name in ("findings", "finding"):
            sections["findings"] = body
        elif name in ("impression", "conclusion"):
            sections["impression"] = body
        elif name in ("indication", "history", "clinical history"):
            sections["indication"] = body
        elif name in ("comparison", "comparisons"):
            sections["comparison"] = body
    return ParsedReport(study_id=study_id, sections=sections, source=source)
