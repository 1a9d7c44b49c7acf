"""The embedded experiment in a tiny configuration (the full one is not a unit test)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from core.continual.experiment import (
    METHODS,
    ExperimentConfig,
    load_mnist,
    main,
    make_tasks,
    run_experiment,
    run_one,
)

TINY = ExperimentConfig(
    seeds=(0,),
    permuted_tasks=2,
    split_tasks=2,
    epochs=1,
    train_per_task=128,
    test_per_task=64,
    ewc_samples=32,
    replay_capacity=32,
    replay_batch=16,
    hidden=32,
)


@pytest.fixture(scope="module")
def mnist():
    return load_mnist()


def test_mnist_is_real_and_split_once(mnist) -> None:
    x_tr, y_tr, x_te, y_te = mnist
    assert torch.bincount(y_tr).tolist() == [400] * 10
    assert x_tr.shape == (4000, 784) and x_te.shape == (1000, 784)
    assert torch.bincount(y_te).tolist() == [100] * 10
    assert float(x_tr.min()) >= 0.0 and float(x_tr.max()) <= 1.0


def test_tasks_permute_pixels_or_split_classes(mnist) -> None:
    permuted = make_tasks("permuted", 0, TINY, mnist)
    (_, (x0, y0), _), (_, (x1, y1), _) = permuted
    assert torch.equal(y0, y1) and not torch.equal(x0, x1)
    torch.testing.assert_close(x0.sort(-1).values, x1.sort(-1).values)  # same pixels, moved
    split = make_tasks("split", 0, TINY, mnist)
    assert [name for name, _, _ in split] == ["digits01", "digits23"]
    assert set(split[1][1][1].tolist()) == {2, 3}


def test_tiny_experiment_runs_every_method_and_checks_penalties(tmp_path, mnist) -> None:
    result = run_experiment(TINY, out=tmp_path, verbose=False, data=mnist)
    runs = result["runs"]
    assert {(r["scenario"], r["method"]) for r in runs} == {
        (s, m) for s in ("permuted", "split") for m in METHODS
    }
    for run in runs:
        assert len(run["R"]) == len(run["tasks"]) == 2
        for name, value in run["penalty_per_task"][0].items():
            assert value == 0.0, (run["method"], name)
        if run["method"] not in ("naive", "joint", "hft"):
            assert all(v > 0 for v in run["penalty_per_task"][1].values()), run["method"]
    table = (tmp_path / "table.md").read_text()
    assert "| permuted | ewc |" in table and "NO" not in table
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"]["seeds"] == [0]
    assert (tmp_path / "R_split_replay.png").exists()


def test_experiment_is_deterministic_for_a_seed(mnist) -> None:
    config = replace(TINY, scenarios=("split",), seeds=(1,), hidden=16)
    tasks = make_tasks("split", 1, config, mnist)
    a = run_one("split", "ewc", 1, config, tasks)
    b = run_one("split", "ewc", 1, config, tasks)
    assert a["R"] == b["R"] and a["penalty_per_task"] == b["penalty_per_task"]


def test_bad_config_and_cli_choices() -> None:
    with pytest.raises(ValueError, match="unknown experiment method"):
        ExperimentConfig(methods=("sgd",))
    with pytest.raises(ValueError, match="split_tasks=6"):
        ExperimentConfig(split_tasks=6)
    with pytest.raises(SystemExit):
        main(["--methods", "magic"])
