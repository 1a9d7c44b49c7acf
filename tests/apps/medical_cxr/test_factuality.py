"""The factuality comparison: both stages per seed through the command line, resume, and its
tables (per seed, mean ± sample std over seeds, per-observation F1 over the seeds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from apps.medical_cxr import factuality
from apps.medical_cxr.factuality import comparison_table, per_label_f1, seed_summary_table

from .tiny import TINY_CONFIG, TRAINER


@pytest.mark.slow
def test_factuality_comparison_runs_both_stages_and_resumes(fast_embedded, tmp_path, monkeypatch):
    tiny = ["--data.max_studies", "16", "--data.image_size", "32", "--data.batch_size", "8",
            "--trainer.max_epochs", "1", *TRAINER]  # fmt: skip
    pref = ["--model.init_args.sample_temperature", "1.5", "--model.init_args.max_new_tokens",
            "12", "--model.init_args.meteor", "false", *tiny]  # fmt: skip
    argv = ["--seeds", "3", "--out", str(tmp_path / "out"),
            "--sft-args", f"--config {TINY_CONFIG} " + " ".join(tiny),
            "--pref-args", " ".join(pref)]  # fmt: skip
    path = factuality.run(argv)
    (record,) = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert record["seed"] == 3 and record["pairs"] > 0
    for stage in ("sft", "preference"):
        assert 0.0 <= record[stage]["ce_f1_micro"] <= 1.0
    text = path.read_text()
    assert "| ce_f1_micro |" in text and "| 3 | ce_f1_micro |" in text
    assert "comparison.png" in text and path.with_suffix(".png").stat().st_size > 1000
    assert Path(record["preference_run"]).is_relative_to(tmp_path / "out" / "pref_seed3")
    # --resume keeps the finished seed instead of training it again.
    calls = []

    def fake_run_seed(seed, *args):
        calls.append(seed)
        return {**record, "seed": seed}

    monkeypatch.setattr(factuality, "run_seed", fake_run_seed)
    factuality.run([*argv, "--resume"])
    assert calls == []
    # A resumed run with other seeds trains only those and keeps the earlier ones on file.
    factuality.run([*argv[2:], "--seeds", "4", "--resume"])
    saved = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert calls == [4] and [r["seed"] for r in saved] == [3, 4]
    monkeypatch.undo()
    # --sft-from: the preference stage only, from the first comparison's SFT checkpoint.
    fitted = []
    monkeypatch.setattr(factuality, "fit_sft", lambda *a: fitted.append(a))
    argv_b = ["--seeds", "3", "--out", str(tmp_path / "b"), "--sft-from", str(tmp_path / "out"),
              "--pref-args", " ".join(pref)]  # fmt: skip
    factuality.run(argv_b)
    (again,) = json.loads((tmp_path / "b" / "comparison.json").read_text())
    assert fitted == [] and again["sft"] == record["sft"] and again["sft_run"] == record["sft_run"]
    assert Path(again["preference_run"]).is_relative_to(tmp_path / "b" / "pref_seed3")
    with pytest.raises(FileNotFoundError, match=r"holds no finished SFT run of seed 5"):
        factuality.run([*argv_b[:1], "5", *argv_b[2:]])


def test_comparison_table():
    records = [{"seed": 0, "sft": {"ce_f1_micro": 0.5}, "preference": {"ce_f1_micro": 0.6}}]
    assert (
        comparison_table(records).splitlines()[2]
        == "| 0 | ce_f1_micro | 0.5000 | 0.6000 | +0.1000 |"
    )


def test_factuality_summary_over_seeds():
    records = [
        {"seed": s, "sft": {"ce_f1_micro": a}, "preference": {"ce_f1_micro": b}}
        for s, a, b in ((0, 0.5, 0.6), (1, 0.6, 0.5), (2, 0.4, 0.7))
    ]
    row = seed_summary_table(records).splitlines()[2]
    change = np.std([0.1, -0.1, 0.3], ddof=1)
    expected = f"| ce_f1_micro | 0.5000 ± 0.1000 | 0.6000 ± 0.1000 | 0.1000 ± {change:.4f} | 2/3 |"
    assert row == expected


def test_per_label_f1_averages_the_seeds_and_skips_missing_runs(tmp_path):
    records = []
    for seed, f1s in ((0, (0.2, 0.6)), (1, (0.4, 0.8)), (2, None)):
        runs = {}
        for stage in ("sft", "pref"):
            run_dir = tmp_path / f"{stage}{seed}"
            runs[stage] = str(run_dir)
            if f1s is None:
                continue
            out = run_dir / "eval" / f"test_seed{seed}"
            out.mkdir(parents=True)
            f1 = f1s[stage == "pref"]
            (out / "per_label.csv").write_text(f"observation,f1\nCardiomegaly,{f1}\nEdema,0\n")
        records.append({"seed": seed, "sft_run": runs["sft"], "preference_run": runs["pref"]})
    means = per_label_f1(records)
    assert means["sft"] == pytest.approx({"Cardiomegaly": 0.3, "Edema": 0.0})
    assert means["preference"] == pytest.approx({"Cardiomegaly": 0.7, "Edema": 0.0})
