"""The benchmarks run end to end on tiny sizes and write their tables (no timing asserted)."""

from __future__ import annotations

import csv

import pytest

from bench import cross_entropy, lora_step, multi_adapter


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_cross_entropy_bench(tmp_path, capsys) -> None:
    out = tmp_path / "ce.csv"
    cross_entropy.main(
        ["--hidden", "16", "--vocab", "300", "--tokens", "64", "--repeats", "1", "--csv", str(out)]
    )
    rows = _rows(out)
    assert [r["path"] for r in rows] == ["fused", "unfused"]
    assert all(r["same_loss_and_grads"] == "True" for r in rows)
    assert "| fused |" in capsys.readouterr().out


@pytest.mark.slow
def test_multi_adapter_bench(tmp_path) -> None:
    out = tmp_path / "ma.csv"
    multi_adapter.main(
        ["--adapters", "4", "--batch", "4", "--seq", "1", "--repeats", "1", "--warmup", "0",
         "--csv", str(out)]
    )  # fmt: skip
    paths = [r["path"] for r in _rows(out)]
    assert paths == ["base (no adapters)", "ours (AdapterBank)", "PEFT (adapter_names)"]


@pytest.mark.slow
def test_lora_step_bench(tmp_path) -> None:
    out = tmp_path / "ls.csv"
    lora_step.main(
        ["--batch", "1", "--seq", "8", "--repeats", "1", "--warmup", "0", "--csv", str(out)]
    )
    assert [r["path"] for r in _rows(out)] == ["ours", "peft", "no adapter (floor)"]


def test_gpu_sweep_refuses_without_cuda() -> None:
    import torch

    from bench import gpu_kernels

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the sweep would run for real")
    with pytest.raises(SystemExit) as exit_info:
        gpu_kernels.main([])
    assert exit_info.value.code == 2


def test_round_ratio_quartiles_pairs_rounds() -> None:
    from bench.common import round_ratio_quartiles

    ours = [0.9, 1.8, 0.85, 2.0]  # the machine slowed down in rounds 2 and 4
    peer = [1.0, 2.0, 1.0, 2.0]
    low, high = round_ratio_quartiles(ours, peer)
    assert (low, high) == pytest.approx((0.8875, 0.925))
    assert round_ratio_quartiles([1.0], [2.0]) == (0.5, 0.5)


def test_gpu_sweep_code_runs_under_the_interpreter(monkeypatch) -> None:
    """The sweep has never had a GPU here: run its row builders on CPU with tiny shapes so
    a broken sweep shows up before a GPU session spends time on it."""
    import os

    from bench import gpu_kernels
    from kernels.dispatch import triton_interpreting

    if not triton_interpreting():
        pytest.skip("needs TRITON_INTERPRET=1 (tests/conftest.py sets it)")
    monkeypatch.delenv("FINETUNERS_KERNELS", raising=False)
    timed = lambda fn, repeats=1, warmup=0: gpu_kernels.median_seconds(fn, 1, 0) * 1e3  # noqa: E731
    monkeypatch.setattr(gpu_kernels, "_cuda_time", timed)
    rows = gpu_kernels.fused_lora_rows(32, 4, 16, dev="cpu")
    rows += gpu_kernels.multi_adapter_rows(32, 4, 3, 8, dev="cpu")
    rows += gpu_kernels.multi_adapter_train_rows(32, 4, 3, 8, dev="cpu")
    assert [r["op"].split(" (")[0] for r in rows] == [
        "fused LoRA fwd+bwd", "multi-adapter fwd", "multi-adapter fwd+bwd",
    ]  # fmt: skip
    assert all(r["ours_ms"] > 0 and r["peer_ms"] > 0 and r["speedup"] > 0 for r in rows)
    assert "FINETUNERS_KERNELS" not in os.environ  # the sweep restores the backend setting
