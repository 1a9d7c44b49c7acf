"""Fixed train/val/test splits by patient, and nested label-fraction splits, as files.

A patient goes to a split by a hash of its id (not by its position in a list), so the
assignment never changes when studies are added, removed or re-ordered, and all studies of
a patient share one split. Label-fraction subsets of the training split (the BenchX
protocol: 1%, 10%, 100%) are nested: the patients of the 1% file are in the 10% file.

Split files are plain text, one study id per line: ``train.txt``, ``val.txt``, ``test.txt``
and ``train_1pct.txt``, ``train_10pct.txt``, ``train_100pct.txt``. The files of the embedded
IU X-ray data ship in ``apps/medical_cxr/splits/iu_xray/`` (regenerate them with
``python -m apps.medical_cxr.splits``; a test checks they match).
"""

from __future__ import annotations

import argparse
import hashlib
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from core.atomic import atomic_write_text
from core.textio import read_utf8

SPLITS = ("train", "val", "test")
FRACTIONS = (0.01, 0.1, 1.0)
SHIPPED_DIR = Path(__file__).parent / "splits"


def unit_hash(key: str, salt: str) -> float:
    """A uniform number in [0, 1) from ``salt:key`` (sha256; the same everywhere)."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_split(
    patient_id: str, val_fraction: float = 0.1, test_fraction: float = 0.2, salt: str = "split"
) -> str:
    """``"train"``, ``"val"`` or ``"test"`` for a patient (by hash)."""
    u = unit_hash(patient_id, salt)
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def patient_splits(
    pairs: Iterable[tuple[str, str]],
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    salt: str = "split",
) -> dict[str, list[str]]:
    """Split ``(study_id, patient_id)`` pairs by patient; each list sorted by study id."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must lie in [0, 1) "
            "and sum to less than 1."
        )
    out: dict[str, list[str]] = {name: [] for name in SPLITS}
    for study_id, patient_id in pairs:
        out[assign_split(patient_id, val_fraction, test_fraction, salt)].append(study_id)
    return {name: sorted(ids) for name, ids in out.items()}


def fraction_subset(
    study_ids: Sequence[str], fraction: float, patient_of: dict[str, str] | None = None
) -> list[str]:
    """The first ``ceil(fraction * n_patients)`` patients in hash order, all their studies.

    Nested by construction: a smaller fraction is a prefix of a larger one.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction {fraction} must lie in (0, 1].")
    patient_of = patient_of or {}
    patients = sorted({patient_of.get(s, s) for s in study_ids}, key=lambda p: unit_hash(p, "fr"))
    keep = set(patients[: max(1, math.ceil(fraction * len(patients)))])
    return sorted(s for s in study_ids if patient_of.get(s, s) in keep)


def fraction_name(fraction: float) -> str:
    """``0.01`` -> ``train_1pct``."""
    pct = fraction * 100
    label = f"{pct:g}"
    return f"train_{label}pct"


def write_split_files(
    out_dir: str | Path,
    pairs: Sequence[tuple[str, str]],
    fractions: Sequence[float] = FRACTIONS,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
) -> dict[str, list[str]]:
    """Write the split files for ``(study_id, patient_id)`` pairs; returns what was written."""
    splits = patient_splits(pairs, val_fraction, test_fraction)
    patient_of = dict(pairs)
    for fraction in fractions:
        splits[fraction_name(fraction)] = fraction_subset(splits["train"], fraction, patient_of)
    out = Path(out_dir)
    for name, ids in splits.items():
        atomic_write_text(out / f"{name}.txt", "".join(f"{i}\n" for i in ids))
    return splits


def read_split_file(split_dir: str | Path, name: str) -> list[str]:
    """Study ids listed in ``<split_dir>/<name>.txt`` (UTF-8; an error names a bad line)."""
    path = Path(split_dir) / f"{name}.txt"
    if not path.is_file():
        raise FileNotFoundError(
            f"split file {str(path)!r} does not exist; write the split files with "
            "python -m apps.medical_cxr.splits --out <dir>, or leave data.split_dir empty."
        )
    return [line.strip() for line in read_utf8(path).splitlines() if line.strip()]


def main(argv: Sequence[str] | None = None) -> None:
    """Regenerate the shipped split files of the embedded IU X-ray data (all 3,955 reports)."""
    from .reports import iter_iu_reports
    from .sources import embedded_reports_path

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", default=str(SHIPPED_DIR / "iu_xray"))
    args = parser.parse_args(argv)
    pairs = [(r.study_id, r.study_id) for r in iter_iu_reports(embedded_reports_path())]
    splits = write_split_files(args.out, pairs)
    for name, ids in splits.items():
        print(f"{name}: {len(ids)} studies")


if __name__ == "__main__":
    main()
