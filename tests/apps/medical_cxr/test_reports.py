"""Report parsing: IU X-ray XML sections, MIMIC-CXR free text, normalisation."""

from __future__ import annotations

import pytest

from apps.medical_cxr.reports import (
    ReportFormatError,
    check_sections,
    iter_iu_reports,
    normalise_report,
    parse_iu_xml,
    parse_mimic_report,
)
from apps.medical_cxr.sources import embedded_reports_path

from .layouts import IU_XML


def test_parse_iu_xml_sections_and_images():
    report = parse_iu_xml(IU_XML, "7.xml")
    assert report.study_id == "CXR7"
    assert report.sections["findings"] == "Heart size is normal. No pleural effusion."
    assert report.image_ids == ["CXR7_1_IM-0001-1001", "CXR7_1_IM-0001-2001"]
    assert report.text() == "heart size is normal . no pleural effusion ."
    assert report.text(["findings", "impression"]).endswith("no acute cardiopulmonary process .")
    assert check_sections(report, ["findings"]) is None


def test_missing_findings_is_reported_by_name():
    xml = IU_XML.replace(
        'Label="FINDINGS">Heart size is normal. No pleural effusion.', 'Label="FINDINGS">'
    )
    report = parse_iu_xml(xml, "7.xml")
    message = check_sections(report, ["findings"])
    assert message is not None and "CXR7" in message and "no findings section" in message
    with pytest.raises(ReportFormatError, match=r"well-formed"):
        parse_iu_xml("<eCitation><uId", "broken.xml")


def test_embedded_archive_holds_the_3955_real_reports():
    reports = list(iter_iu_reports(embedded_reports_path()))
    assert len(reports) == 3955
    assert len({r.study_id for r in reports}) == 3955
    first = next(r for r in reports if r.study_id == "CXR1")
    assert "cardiac silhouette and mediastinum size are within normal limits" in first.text()


def test_mimic_sections():
    text = (
        "FINAL REPORT\n EXAMINATION: CHEST (PA AND LAT)\n INDICATION: Fever.\n"
        " COMPARISON: None.\n FINDINGS: Small left effusion.\n Heart is mildly enlarged.\n"
        " IMPRESSION: Left effusion."
    )
    report = parse_mimic_report(text, "s1")
    assert report.sections["findings"] == "Small left effusion. Heart is mildly enlarged."
    assert report.sections["impression"] == "Left effusion."
    assert report.sections["indication"] == "Fever."


def test_normalise():
    assert (
        normalise_report("No  pneumothorax.Heart: normal!!") == "no pneumothorax . heart : normal"
    )
