"""The code benchmark end to end on the tiny configuration: variants, base row, table, plot."""

from __future__ import annotations

import json

import pytest

from apps.code.benchmark import run

from .conftest import TINY_CONFIG


@pytest.mark.slow
def test_benchmark_scores_the_base_once_and_every_variant(tiny_cache, monkeypatch, tmp_path):
    monkeypatch.setenv("SPECIALIST_FINETUNERS_CACHE", str(tiny_cache))
    out = tmp_path / "bench"
    summary = run(["--variants", "lora", "per_task", "--humaneval", "2", "--doctests", "2",
                   "--fim", "2", "--out", str(out), "--config", str(TINY_CONFIG),
                   "--data.pack_by_task", "true"])  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert [r["variant"] for r in results] == ["lora", "per_task"]
    assert set(results[0]["humaneval"]) == {"tuned", "base"}  # the base once, with the first
    assert set(results[1]["humaneval"]) == {"tuned"}
    for r in results:
        assert r["humaneval"]["tuned"]["problems"] == 2
        assert r["doctests"]["tuned"]["problems"] == 2
        assert r["trainable_parameters"] > 0
    text = summary.read_text()
    assert "| base (no fine-tuning) |" in text and "| per_task |" in text
    assert "Command: python -m apps.code.benchmark" in text
    assert (out / "summary.png").stat().st_size > 0
    # --resume keeps what is done: nothing is trained again.
    monkeypatch.setattr("apps.code.benchmark.run_variant", lambda *a, **k: pytest.fail("re-ran"))
    run(["--variants", "lora", "per_task", "--out", str(out), "--resume"])
