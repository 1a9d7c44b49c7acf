"""The speech benchmark's tables (apps/speech_asr/benchmark.py), on hand-made run records.

The acceptance lines follow the issue's rule (relative reduction >= 25 %, gap to full
fine-tuning <= 0.04, on means over seeds); a resumed benchmark keeps every run in
``results.json`` and writes its summary without training anything.
"""

from __future__ import annotations

import json

import pytest

from apps.speech_asr import benchmark

LANGS = ["lt", "is"]


def record(recipe: str, seed: int, metrics: dict[str, float]) -> dict:
    return {
        "recipe": recipe,
        "seed": seed,
        "languages": LANGS,
        "head_languages": ["es"],
        "metrics": {"parameters/trainable": 100, "cer_head": 0.2, **metrics},
        "run_dir": f"/runs/{recipe}/{seed}",
    }


def records() -> list[dict]:
    out = []
    for seed, shift in ((0, 0.01), (1, -0.01)):
        out.append(
            record(
                "adapters",
                seed,
                {
                    "foundation/cer/lt": 0.40,
                    "foundation/cer/is": 0.60,
                    "cer/lt": 0.28 + shift,  # mean 0.28: 30 % reduction, gap 0.03 -> PASS
                    "cer/is": 0.50 + shift,  # mean 0.50: 16.7 % reduction -> FAIL
                    "cer_tail": 0.39 + shift,
                    "assembled/cer_tail": 0.38,
                },
            )
        )
        out.append(record("full_finetune", seed, {"cer/lt": 0.25, "cer/is": 0.45}))
    return out


def test_acceptance_applies_the_issue_rule_to_the_means_over_seeds():
    lines = benchmark.acceptance(records(), LANGS)
    assert lines[0].startswith("- lt: CER 0.400 -> 0.280 (30.0% reduction")
    assert "gap +0.030" in lines[0] and lines[0].endswith("PASS")
    assert lines[1].startswith("- is: CER 0.600 -> 0.500 (16.7% reduction")
    assert lines[1].endswith("FAIL")


def test_tables_show_mean_and_std_and_the_assembly_difference():
    table = benchmark.cer_table(records(), LANGS)
    adapters_row = next(
        r for r in table.splitlines() if r.startswith("| per-language adapters (last")
    )
    assert "0.280 ± 0.014" in adapters_row  # std over seeds (ddof 1) of 0.29 and 0.27
    assembly = benchmark.assembly_table(records())
    assert "| 0 | 0.4000 | 0.3800 | -0.0200 |" in assembly
    assert "| full_finetune |" in benchmark.head_table(records())


def test_resume_keeps_every_run_in_results_json(tmp_path, monkeypatch):
    done = records()
    (tmp_path / "results.json").write_text(json.dumps(done))

    def no_training(*args, **kwargs):
        raise AssertionError("a resumed benchmark with every run done must not train")

    monkeypatch.setattr(benchmark, "run_one", no_training)
    summary = benchmark.run(
        ["--out", str(tmp_path), "--resume", "--seeds", "0", "1", "--recipes", "adapters",
         "full_finetune"]
    )  # fmt: skip

    def key(r):
        return (r["recipe"], r["seed"])

    kept = json.loads((tmp_path / "results.json").read_text())
    assert sorted(kept, key=key) == sorted(done, key=key)
    text = summary.read_text()
    assert "## Acceptance (issue #21)" in text and "(cer_per_language.png)" in text
    assert (tmp_path / "cer_per_language.png").stat().st_size > 0


def test_resume_with_a_missing_run_trains_only_that_one(tmp_path, monkeypatch):
    done = [r for r in records() if (r["recipe"], r["seed"]) != ("adapters", 0)]
    (tmp_path / "results.json").write_text(json.dumps(done))
    trained = []

    def fake_run(recipe, seed, out, extra):
        trained.append((recipe, seed))
        return next(r for r in records() if (r["recipe"], r["seed"]) == (recipe, seed))

    monkeypatch.setattr(benchmark, "run_one", fake_run)
    benchmark.run(["--out", str(tmp_path), "--resume", "--seeds", "0", "1",
                   "--recipes", "adapters", "full_finetune"])  # fmt: skip
    assert trained == [("adapters", 0)]
    assert len(json.loads((tmp_path / "results.json").read_text())) == 4


@pytest.mark.parametrize("recipe", list(benchmark.RECIPES))
def test_every_recipe_file_exists(recipe):
    config = benchmark.RECIPES[recipe]
    assert config is None or (benchmark.CONFIG_DIR / config).is_file()
