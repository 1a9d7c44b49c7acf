"""Patient-level splits and nested label fractions; the shipped split files are current."""

from __future__ import annotations

from apps.medical_cxr.reports import iter_iu_reports
from apps.medical_cxr.sources import embedded_reports_path
from apps.medical_cxr.splits import (
    SHIPPED_DIR,
    fraction_subset,
    patient_splits,
    read_split_file,
    write_split_files,
)


def test_patients_never_cross_splits_and_order_does_not_matter():
    pairs = [(f"s{i}", f"p{i // 3}") for i in range(600)]  # 3 studies per patient
    splits = patient_splits(pairs)
    shuffled = patient_splits(list(reversed(pairs)))
    assert splits == shuffled
    patient = dict(pairs)
    seen = [{patient[s] for s in splits[name]} for name in ("train", "val", "test")]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    assert sum(len(v) for v in splits.values()) == 600
    assert 0.6 < len(splits["train"]) / 600 < 0.8  # 70/10/20 by patient hash


def test_fractions_are_nested_and_sized():
    ids = [f"s{i}" for i in range(1000)]
    one, ten, full = (fraction_subset(ids, f) for f in (0.01, 0.1, 1.0))
    assert len(one) == 10 and len(ten) == 100 and len(full) == 1000
    assert set(one) <= set(ten) <= set(full)


def test_shipped_iu_xray_split_files_match_a_regeneration(tmp_path):
    pairs = [(r.study_id, r.study_id) for r in iter_iu_reports(embedded_reports_path())]
    written = write_split_files(tmp_path, pairs)
    for name, ids in written.items():
        assert read_split_file(SHIPPED_DIR / "iu_xray", name) == ids, name
    assert len(written["train_1pct"]) == 28 and len(written["train_10pct"]) == 276
