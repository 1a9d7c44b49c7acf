"""The robotics benchmark: pooling and tables on hand-made records, the command line of each
arm, resuming, and one real (tiny) invocation of the execution study."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from apps.robotics import benchmark
from apps.robotics.benchmark import (
    STUDIES,
    Arm,
    beats_line,
    check_extra,
    fit_args,
    parse_args,
    pooled,
    retest_args,
    retest_checkpoint,
    select,
    study_table,
)
from apps.robotics.intervals import SuccessSummary, wilson_interval
from core.cache import CACHE_ENV
from tests.threads import one_thread  # noqa: F401  (autouse fixture)

CONFIGS = Path(benchmark.__file__).parent / "configs"
TINY = CONFIGS / "tiny.yaml"


def entry(successes: int, trials: int = 100, steps: float = 60.0) -> dict:
    """A stored success entry, as ``read_run`` writes one."""
    summary = SuccessSummary(successes, trials, steps, 40.0 if successes else None)
    return {
        "successes": successes,
        "trials": trials,
        "rate": summary.rate,
        "low": summary.low,
        "high": summary.high,
        "mean_steps": steps,
        "mean_success_steps": summary.mean_success_steps,
    }


def record(study: str, arm: str, seed: int, trained: int, demos: int = 200) -> dict:
    return {
        "study": study,
        "arm": arm,
        "run": arm,
        "seed": seed,
        "demos": demos,
        "success": {
            "trained": entry(trained),
            "paraphrase": entry(trained // 2),
            "blank": entry(5),
        },
        "baselines": {"expert": entry(100), "random": entry(2)},
        "metrics": {},
        "run_dir": f"runs/{arm}/seed{seed}/version_0",
    }


# --------------------------------------------------------------------------- pooling, tables
def test_pooled_interval_is_the_wilson_interval_of_the_summed_counts():
    entries = [entry(30, steps=50.0), entry(45, steps=60.0), entry(40, 50, steps=70.0)]
    summary = pooled(entries)
    assert (summary.successes, summary.trials) == (115, 250)
    assert summary.interval == wilson_interval(115, 250)
    assert summary.mean_steps == pytest.approx((50 * 100 + 60 * 100 + 70 * 50) / 250)
    assert summary.mean_success_steps == pytest.approx(40.0)
    assert pooled([]) is None


def test_study_table_pools_over_seeds_and_shows_mean_std():
    records = [record("heads", "l1_chunk", s, t) for s, t in enumerate((60, 70, 80))]
    records += [record("heads", "tokens", 0, 10)]
    table = study_table(records, "heads", ["l1_chunk", "tokens", "diffusion"]).splitlines()
    assert table[0].startswith("| arm | demos | seeds | trained (pooled, 95% CI) |")
    assert len(table) == 4  # header, rule, two arms that ran (diffusion did not)
    low, high = wilson_interval(210, 300)
    std = np.std([0.6, 0.7, 0.8], ddof=1)
    assert table[2].startswith(
        f"| l1_chunk | 200 | 0,1,2 | 0.70 [{low:.2f}, {high:.2f}] (210/300) | "
        f"0.35 [{wilson_interval(105, 300)[0]:.2f}, "
    )
    assert f"| 0.70 ± {std:.2f} | 0.35 ± 0.05 | 0.05 ± 0.00 |" in table[2]
    assert table[3].startswith("| tokens | 200 | 0 | 0.10 [") and "0.10 ± 0.00" in table[3]


def test_beats_line_says_whether_the_intervals_separate():
    records = [record("data", "pretrained@20", s, 60, 20) for s in range(3)]
    records += [record("data", "random@20", s, 20, 20) for s in range(3)]
    records += [record("data", "pretrained@80", s, 50, 80) for s in range(3)]
    records += [record("data", "random@80", s, 45, 80) for s in range(3)]
    assert beats_line(records, 20).startswith(
        "- pretrained beats random at 20 demos: intervals separated yes"
    )
    assert "intervals separated no" in beats_line(records, 80)
    assert beats_line(records, 5) is None


# --------------------------------------------------------------------------- arms, arguments
def test_studies_share_the_default_run():
    assert list(STUDIES) == ["data", "heads", "execution", "adapters"]
    runs = {(study, arm.name): arm.run for study, arms in STUDIES.items() for arm in arms}
    assert runs["heads", "l1_chunk"] == runs["execution", "ensemble"] == "default"
    assert runs["adapters", "top"] == "default"
    assert runs["execution", "open_loop"] == "default+open_loop"
    assert runs["data", "pretrained@20"] == "default@20"
    assert runs["data", "random@80"] == "random_towers@80"
    for arms in STUDIES.values():
        for arm in arms:
            assert arm.recipe is None or (CONFIGS / arm.recipe).is_file()
    with pytest.raises(ValueError, match="re-test arm"):
        Arm("x", "tokens.yaml", execution="open_loop")
    with pytest.raises(FileNotFoundError, match="no recipe"):
        Arm("x", "nope.yaml")


def test_fit_args_per_arm(tmp_path):
    extra = ["--config", str(TINY), "--trainer.max_steps", "600"]
    random20 = next(a for a in STUDIES["data"] if a.name == "random@20")
    assert fit_args(random20, 2, tmp_path, extra) == [
        "--config", str(CONFIGS / "random_towers.yaml"), *extra, "--data.episodes", "20",
        "--seed_everything", "2", "--data.seed", "2", "--trainer.default_root_dir", str(tmp_path),
    ]  # fmt: skip
    assert fit_args(Arm("l1_chunk"), 0, tmp_path) == [
        "--seed_everything", "0", "--data.seed", "0", "--trainer.default_root_dir", str(tmp_path),
    ]  # fmt: skip
    dora = next(a for a in STUDIES["adapters"] if a.name == "dora")
    assert fit_args(dora, 1, tmp_path)[:2] == ["--config", str(CONFIGS / "dora.yaml")]
    with pytest.raises(ValueError, match="re-tests"):
        fit_args(Arm("open_loop", execution="open_loop"), 0, tmp_path)


def test_retest_args(tmp_path):
    base, ckpt = tmp_path / "default" / "version_0", tmp_path / "open_loop.ckpt"
    assert retest_args(Arm("open_loop", execution="open_loop"), base, ckpt, tmp_path) == [
        "test", "--config", str(base / "config.yaml"), "--model.execution", "open_loop",
        "--ckpt_path", str(ckpt), "--trainer.default_root_dir", str(tmp_path),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="trains its own run"):
        retest_args(Arm("tokens", "tokens.yaml"), base, ckpt, tmp_path)


def test_retest_checkpoint_changes_only_the_execution(tmp_path):
    source = tmp_path / "last.ckpt"
    weights = {"w": torch.arange(4.0)}
    torch.save({"state_dict": weights, "hyper_parameters": {"execution": "ensemble"}}, source)
    copy = retest_checkpoint(source, "receding", tmp_path / "out" / "receding.ckpt")
    ckpt = torch.load(copy, weights_only=False)
    assert ckpt["hyper_parameters"] == {"execution": "receding"}
    assert torch.equal(ckpt["state_dict"]["w"], weights["w"])
    assert torch.load(source, weights_only=False)["hyper_parameters"]["execution"] == "ensemble"
    with pytest.raises(FileNotFoundError, match="no last checkpoint"):
        retest_checkpoint(tmp_path / "missing.ckpt", "receding", tmp_path / "x.ckpt")


def test_arguments_and_selection():
    args, extra = parse_args(["--seeds", "0", "--steps", "600", "--config", "tiny.yaml"])
    assert args.seeds == [0] and args.studies == list(STUDIES)
    assert extra == ["--config", "tiny.yaml", "--trainer.max_steps", "600"]
    with pytest.raises(ValueError, match="--seeds / --out"):
        check_extra(["--data.seed", "3"])
    with pytest.raises(ValueError, match="subcommand"):
        check_extra(["fit"])
    picked = select(["execution", "heads"], [20, 80], ["open_loop", "tokens"])
    assert {s: [a.name for a in arms] for s, arms in picked.items()} == {
        "execution": ["ensemble", "open_loop"],  # the re-test brings the default run
        "heads": ["tokens"],
    }
    assert [a.name for a in select(["data"], [10], None)["data"]] == ["pretrained@10", "random@10"]
    with pytest.raises(ValueError, match="unknown"):
        select(["heads"], [20], ["open_loop"])


# --------------------------------------------------------------------------- resume
class FakeRuns:
    """Stand-ins for ``fit_run`` / ``retest_run`` that count their calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def result(self, name: str, root: Path, demos: int | None, trained: int) -> dict:
        self.calls.append(name)
        return {
            "success": {c: entry(trained) for c in ("trained", "paraphrase", "blank")},
            "baselines": {"expert": entry(100)},
            "metrics": {"success/trained": trained / 100},
            "run_dir": str(root / "version_0"),
            "demos": demos or 200,
        }

    def fit(self, arm: Arm, seed: int, root: Path, extra) -> dict:
        trained = 60 if arm.name.startswith("pretrained") else 50
        return self.result(f"fit {arm.run} {seed}", root, arm.demos, trained)

    def retest(self, arm: Arm, base: dict, root: Path) -> dict:
        assert base["run_dir"].endswith("default/seed0/version_0")
        return self.result(f"retest {arm.run}", root, base["demos"], 40)


def test_resume_skips_finished_runs(tmp_path, monkeypatch, capsys):
    fake = FakeRuns()
    monkeypatch.setattr(benchmark, "fit_run", fake.fit)
    monkeypatch.setattr(benchmark, "retest_run", fake.retest)
    out = tmp_path / "bench"
    argv = ["--studies", "execution", "heads", "data", "--demos", "20", "--seeds", "0",
            "--out", str(out)]  # fmt: skip
    benchmark.run(argv)
    # the default run is fitted once and serves execution/ensemble and heads/l1_chunk
    assert fake.calls == [
        "fit default 0", "retest default+receding", "retest default+open_loop",
        "fit tokens 0", "fit diffusion 0", "fit default@20 0", "fit random_towers@20 0",
    ]  # fmt: skip
    records = json.loads((out / "results.json").read_text())
    assert [(r["study"], r["arm"]) for r in records][:4] == [
        ("execution", "ensemble"), ("execution", "receding"), ("execution", "open_loop"),
        ("heads", "l1_chunk"),
    ]  # fmt: skip
    assert records[0]["run_dir"] == records[3]["run_dir"]
    summary = (out / "summary.md").read_text()
    assert "- pretrained beats random at 20 demos: intervals separated no" in summary
    assert (out / "success_vs_demos.png").is_file()
    assert "[benchmark] 4/8 heads/l1_chunk seed 0: reuses run default" in capsys.readouterr().out

    fake.calls.clear()
    benchmark.run([*argv, "--resume"])
    assert fake.calls == []
    # drop two records: only those runs run again (the default's results are kept)
    kept = [r for r in records if r["arm"] not in ("open_loop", "tokens")]
    (out / "results.json").write_text(json.dumps(kept))
    benchmark.run([*argv, "--resume"])
    assert fake.calls == ["retest default+open_loop", "fit tokens 0"]
    assert len(json.loads((out / "results.json").read_text())) == len(records)
    # resuming a subset keeps the other studies' records in results.json
    benchmark.run(["--studies", "heads", "--seeds", "0", "--out", str(out), "--resume"])
    assert len(json.loads((out / "results.json").read_text())) == len(records)
    assert "## Action heads" in (out / "summary.md").read_text()
    assert "## Chunk execution" not in (out / "summary.md").read_text()


# --------------------------------------------------------------------------- end to end
def test_tiny_execution_study_end_to_end(tmp_path, monkeypatch):
    """One real invocation: the default run (fit + test) and one re-test of its checkpoint."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    out = tmp_path / "bench"
    summary = benchmark.run(
        ["--studies", "execution", "--arms", "open_loop", "--seeds", "0", "--out", str(out),
         "--config", str(TINY)]
    )  # fmt: skip
    records = json.loads((out / "results.json").read_text())
    assert [(r["arm"], r["seed"]) for r in records] == [("ensemble", 0), ("open_loop", 0)]
    ensemble, open_loop = records
    assert ensemble["demos"] == open_loop["demos"] == 4  # tiny.yaml's
    assert Path(ensemble["run_dir"]) == out / "runs" / "default" / "seed0" / "version_0"
    assert open_loop["retest_of"] == ensemble["run_dir"]
    assert "open_loop" in open_loop["executor"] and "ensemble" in ensemble["executor"]
    for r in records:
        assert set(r["success"]) == {"trained", "paraphrase", "blank"}
        assert r["success"]["trained"]["trials"] == 2
        assert Path(r["run_dir"], "evaluation.json").is_file()
    text = summary.read_text()
    assert "| ensemble | 4 | 0 |" in text and "| open_loop | 4 | 0 |" in text
    assert "Command: python -m apps.robotics.benchmark --studies execution" in text
