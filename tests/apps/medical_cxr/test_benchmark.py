"""The BenchX summary and the factuality comparison tables (their run loops are exercised
by test_module's command-line runs)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from apps.medical_cxr.benchmark import mean_std, parse_args, run, summary_table, write_summary
from apps.medical_cxr.factuality import comparison_table, per_label_f1, seed_summary_table


def test_mean_std_is_the_sample_std():
    mean, std = mean_std([0.7, 0.8, 0.9])
    assert mean == pytest.approx(0.8)
    assert std == pytest.approx(np.std([0.7, 0.8, 0.9], ddof=1))
    assert mean_std([0.5]) == (0.5, 0.0)
    assert all(math.isnan(v) for v in mean_std([float("nan")]))


def test_summary_table_rows_per_fraction():
    records = [
        {"fraction": f, "seed": s, "train_studies": n, "auroc": a, "auroc_excluded": e}
        for f, n, e, aurocs in ((0.01, 24, 3, (0.6, 0.7, 0.8)), (1.0, 2398, 0, (0.9, 0.9, 0.9)))
        for s, a in zip((0, 1, 2), aurocs, strict=True)
    ]
    table = summary_table(records).splitlines()
    assert table[2] == "| 0.01 | 24 | 0,1,2 | 0.7000 ± 0.1000 | 3 |"
    assert table[3] == "| 1 | 2398 | 0,1,2 | 0.9000 ± 0.0000 | 0 |"


def test_benchmark_arguments():
    args, extra = parse_args(["--seeds", "0", "--model.init_args.encoder", "densenet121"])
    assert args.seeds == [0] and extra == ["--model.init_args.encoder", "densenet121"]
    with pytest.raises(ValueError, match="one value per fraction"):
        run(["--fractions", "0.1", "--epochs", "3", "4"])


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


def test_write_summary_ends_with_the_command(tmp_path, capsys):
    path = write_summary(tmp_path / "s.md", ["# t", "", "body"], "apps.x", ["--seeds", "0"])
    assert path.read_text() == "# t\n\nbody\nCommand: python -m apps.x --seeds 0\n"
    assert "summary:" in capsys.readouterr().out


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
