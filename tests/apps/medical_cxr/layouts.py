"""On-disk copies of real data layouts for the tests (IU X-ray XML + PNGs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

IU_XML = """<?xml version="1.0" encoding="utf-8"?>
<eCitation><uId id="CXR7"/><MedlineCitation><Article><Abstract>
<AbstractText Label="COMPARISON">None.</AbstractText>
<AbstractText Label="INDICATION">Cough</AbstractText>
<AbstractText Label="FINDINGS">Heart size is normal. No pleural effusion.</AbstractText>
<AbstractText Label="IMPRESSION">No acute cardiopulmonary process.</AbstractText>
</Abstract></Article></MedlineCitation>
<parentImage id="CXR7_1_IM-0001-1001"><url>x</url></parentImage>
<parentImage id="CXR7_1_IM-0001-2001"><url>y</url></parentImage>
</eCitation>"""


def png(path: Path, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((32, 32), value, dtype=np.uint8)).save(path)


def make_iu_layout(tmp_path: Path) -> tuple[Path, Path]:
    """Three IU X-ray studies: one good, one without findings, one with corrupt images."""
    reports, images = tmp_path / "ecgen-radiology", tmp_path / "images"
    reports.mkdir()
    for n in (1, 2, 3):
        xml = IU_XML.replace("CXR7", f"CXR{n}")
        if n == 2:  # a report with no findings section
            findings = "Heart size is normal. No pleural effusion."
            xml = xml.replace(f'<AbstractText Label="FINDINGS">{findings}</AbstractText>', "")
        (reports / f"{n}.xml").write_text(xml)
        png(images / f"CXR{n}_1_IM-0001-1001.png")
        png(images / f"CXR{n}_1_IM-0001-2001.png")
    (images / "CXR3_1_IM-0001-1001.png").write_bytes(b"not an image")  # corrupt
    (images / "CXR3_1_IM-0001-2001.png").write_bytes(b"not an image either")
    return reports, images
