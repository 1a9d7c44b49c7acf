"""The BenchX summary table, its arguments and the summary file (the run loop is the
classification recipe, exercised by test_classification_module)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from apps.medical_cxr.benchmark import (
    mean_std,
    parse_args,
    run,
    summary_table,
    winner_table,
    write_summary,
)


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
    assert table[2] == "| - | 0.01 | 24 | 0,1,2 | 0.7000 ± 0.1000 | 3 |"
    assert table[3] == "| - | 1 | 2398 | 0,1,2 | 0.9000 ± 0.0000 | 0 |"
    assert winner_table(records) is None  # one initialisation only


def test_the_winner_table_compares_initialisations_seed_by_seed():
    aurocs = {
        ("scratch", 0.1): (0.70, 0.72, 0.74),
        ("imagenet", 0.1): (0.80, 0.70, 0.90),
        ("scratch", 1.0): (0.90, 0.91, 0.92),
        ("imagenet", 1.0): (0.95, 0.96, 0.97),
    }
    records = [
        {"init": i, "fraction": f, "seed": s, "train_studies": 9, "auroc": a, "auroc_excluded": 0}
        for (i, f), values in aurocs.items()
        for s, a in zip((0, 1, 2), values, strict=True)
    ]
    table = winner_table(records).splitlines()
    assert table[2] == "| 0.1 | +0.0800 | 2/3 | mixed |"
    assert table[3] == "| 1 | +0.0500 | 3/3 | ImageNet |"
    rows = summary_table(records).splitlines()
    assert rows[2].startswith("| imagenet | 0.1 |") and rows[4].startswith("| scratch | 0.1 |")


def test_benchmark_arguments():
    args, extra = parse_args(["--seeds", "0", "--model.init_args.encoder", "densenet121"])
    assert args.seeds == [0] and extra == ["--model.init_args.encoder", "densenet121"]
    assert args.inits == ["scratch", "imagenet"]
    with pytest.raises(ValueError, match="one value per fraction"):
        run(["--fractions", "0.1", "--epochs", "3", "4"])


def test_write_summary_ends_with_the_command(tmp_path, capsys):
    path = write_summary(tmp_path / "s.md", ["# t", "", "body"], "apps.x", ["--seeds", "0"])
    assert path.read_text() == "# t\n\nbody\nCommand: python -m apps.x --seeds 0\n"
    assert "summary:" in capsys.readouterr().out
