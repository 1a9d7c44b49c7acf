"""The benchmarks run end to end on tiny sizes and write their tables (no timing asserted)."""

from __future__ import annotations

import csv
import os

import pytest
import torch

from bench import cross_entropy, lora_generation, lora_step, multi_adapter


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


def _multi_adapter_rows(tmp_path, *args: str) -> list[dict]:
    """Run bench.multi_adapter at a tiny size (one round, no warm-up); its CSV rows."""
    out = tmp_path / "ma.csv"
    multi_adapter.main([*args, "--repeats", "1", "--warmup", "0", "--csv", str(out)])
    return _rows(out)


@pytest.mark.slow
def test_multi_adapter_bench(tmp_path) -> None:
    plot = tmp_path / "ma.png"
    rows = _multi_adapter_rows(
        tmp_path, "--adapters", "4", "--batch", "4", "--seq", "1", "2", "--plot", str(plot)
    )
    expected = [multi_adapter.BASE, multi_adapter.OURS, multi_adapter.FLOOR,
                multi_adapter.LAYER_FLOOR, multi_adapter.UPDATE, multi_adapter.PEFT]  # fmt: skip
    assert [r["path"] for r in rows] == expected * 2
    assert [r["seq_len"] for r in rows] == ["1"] * 6 + ["2"] * 6
    # Each path's spread against the base, round by round (one round: a single ratio).
    for row in rows:
        if row["path"] == multi_adapter.BASE:
            assert row["per_round_iqr"] == ""
        else:
            low, high = map(float, row["per_round_iqr"].split("-"))
            assert low == high == pytest.approx(float(row["vs_base"]), abs=6e-4)  # 3 decimals
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_multi_adapter_bench_with_one_adapter_for_the_batch(tmp_path) -> None:
    rows = _multi_adapter_rows(
        tmp_path, "--adapters", "3", "--batch", "2", "--seq", "1", "--ids", "one"
    )
    paths = [r["path"] for r in rows]
    assert paths == [multi_adapter.BASE, multi_adapter.OURS, multi_adapter.OURS_ONE,
                     multi_adapter.UPDATE, multi_adapter.PEFT, multi_adapter.PEFT_ONE]  # fmt: skip


@pytest.mark.slow
def test_multi_adapter_bench_times_generation(tmp_path) -> None:
    rows = _multi_adapter_rows(
        tmp_path, "--adapters", "3", "--batch", "3", "--seq", "2", "--generate", "2"
    )
    assert [r["path"] for r in rows] == [multi_adapter.BASE, multi_adapter.OURS, multi_adapter.PEFT]
    assert all(float(r["generate_ms"]) > 0 for r in rows)
    with pytest.raises(SystemExit):
        multi_adapter.main(["--generate", "0"])


@pytest.mark.slow
def test_multi_adapter_generation_keeps_its_own_default_csv(tmp_path, monkeypatch) -> None:
    """A --generate run does not overwrite the forward sweep's table."""
    monkeypatch.chdir(tmp_path)
    multi_adapter.main(
        ["--adapters", "2", "--batch", "2", "--seq", "2", "--generate", "1", "--repeats", "1",
         "--warmup", "0", "--skip-peft"]
    )  # fmt: skip
    assert [p.name for p in (tmp_path / "bench" / "results").iterdir()] == [
        "multi_adapter_generate.csv"
    ]


def test_generation_paths_decode_exactly_the_asked_tokens() -> None:
    """Every path produces the same number of new tokens, so their times compare."""
    bank = multi_adapter.build_ours(2)
    base = multi_adapter.reference_llama().eval()
    prompts = torch.randint(1, 8000, (2, 3), generator=torch.Generator().manual_seed(0))
    paths = multi_adapter.generation_paths(prompts, 4, base, bank, torch.tensor([0, 1]), None, None)
    assert list(paths) == [multi_adapter.BASE, multi_adapter.OURS]
    with torch.no_grad():
        for run in paths.values():
            assert run().shape == (2, 3 + 4)


def test_read_floor_reads_every_stack_once() -> None:
    """The floor row must cover all adapter factors of the bank, each exactly once."""
    bank = multi_adapter.build_ours(3)
    stacks = multi_adapter.stack_tensors(bank)
    assert len(stacks) == 2 * len(bank.stack_layers) == 2 * 4 * 7
    assert len({t.data_ptr() for t in stacks}) == len(stacks)
    trainable = sum(p.numel() for p in bank.parameters() if p.requires_grad)
    assert sum(t.numel() for t in stacks) == trainable
    touched = []
    floor = multi_adapter.make_read_floor(lambda input_ids: None, torch.zeros(1), stacks)
    original = torch.Tensor.sum
    try:
        torch.Tensor.sum = lambda self, *a, **k: touched.append(self.data_ptr())
        floor()
    finally:
        torch.Tensor.sum = original
    assert sorted(touched) == sorted(t.data_ptr() for t in stacks)


def test_update_alone_matches_the_bank_delta() -> None:
    """The updates-alone row runs the serving kernel: out must equal the reference update."""
    from fused_kernels.multi_lora import multi_lora_reference

    bank = multi_adapter.build_ours(3)
    ids = torch.tensor([2, 0, 1])
    run = multi_adapter.UpdateAlone(bank, ids, rows=6)
    with torch.inference_mode():
        run()
    assert len(run.layers) == len(bank.stack_layers)
    x, out, unit = run.layers[-1]
    rows = ids.repeat_interleave(2)
    expected = multi_lora_reference(x, rows, unit.lora_A, unit.lora_B, unit.scalings)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


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


@pytest.mark.parametrize("prime", [False, True])
def test_interleaved_samples_times_each_path_in_turn(prime, monkeypatch) -> None:
    """Paths take turns; with ``prime`` each timed call directly follows an untimed call of
    the same path, so no path is timed on another path's cache."""
    from bench import common

    calls = []  # each call of a path takes one tick of a fake clock
    monkeypatch.setattr(common.time, "perf_counter", lambda: float(len(calls)))

    def path(name):
        return lambda: calls.append(name)

    samples = common.interleaved_samples(
        {"a": path("a"), "b": path("b")}, repeats=3, warmup=1, prime=prime
    )
    round_calls = ["a", "a", "b", "b"] if prime else ["a", "b"]
    assert calls == ["a", "b", *round_calls * 3]
    assert samples == {"a": [1.0] * 3, "b": [1.0] * 3}  # each timed span holds one call


def test_gpu_sweep_code_runs_under_the_interpreter(monkeypatch) -> None:
    """The sweep has never had a GPU here: run its row builders on CPU with tiny shapes so
    a broken sweep shows up before a GPU session spends time on it."""
    import os

    from bench import gpu_kernels
    from fused_kernels.dispatch import triton_interpreting

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


def _full_width_products(step) -> int:
    """How many matrix products one step runs that do not involve a LoRA rank dimension."""
    from torch.utils._python_dispatch import TorchDispatchMode

    products = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default}

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in products:
                left, right = args[-2], args[-1]
                if lora_step.RANK not in (*left.shape, *right.shape):
                    Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        step()
    return Count.n


@pytest.mark.slow
def test_lora_step_floor_runs_the_base_products_of_a_lora_step() -> None:
    """The floor must pay for the same frozen-weight products as our LoRA step: forward,
    input gradients where LoRA needs them (not into the first attention's inputs) and the
    loss; only the thin adapter products differ."""
    ours = lora_step.make_step(lora_step.build("ours"), "ours", batch=1, seq=8)
    floor = lora_step.make_floor_step(batch=1, seq=8)
    layers, linears = 4, 7
    expected = layers * linears * 2 - 3  # forward + dx, minus layer 0's q/k/v dx
    counts = _full_width_products(floor), _full_width_products(ours)
    assert counts[0] == counts[1]
    assert counts[0] >= expected


def test_layer_read_floor_reads_each_layers_stacks_after_its_gemm() -> None:
    """The layer-by-layer floor reads the same bytes as the one-pass floor, each layer's A and
    B once, right after that layer's base GEMM, and in the model's layer order."""
    bank = multi_adapter.build_ours(2)
    names = {t.data_ptr(): name for name, u in bank.stack_layers.items()
             for t in (u.lora_A, u.lora_B)}  # fmt: skip
    events = []
    original_sum, original_linear = torch.Tensor.sum, torch.nn.functional.linear

    def linear(x, weight, bias=None):
        events.append(("gemm", tuple(weight.shape)))
        return original_linear(x, weight, bias)

    model = multi_adapter.model_reading_stacks(bank)
    tokens = torch.zeros(1, 2, dtype=torch.long)
    try:
        torch.Tensor.sum = lambda self, *a, **k: events.append(("read", names.get(self.data_ptr())))
        torch.nn.functional.linear = linear
        with torch.no_grad():
            model(input_ids=tokens)
    finally:
        torch.Tensor.sum, torch.nn.functional.linear = original_sum, original_linear
    reads = [name for kind, name in events if kind == "read"]
    assert reads == [n for n in bank.stack_layers for _ in range(2)]  # A then B, layer order
    for i, (kind, _) in enumerate(events):
        if kind == "read" and events[i - 1][0] != "read":
            assert events[i - 1][0] == "gemm"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_gpu_session_script_refuses_without_cuda(tmp_path) -> None:
    """The one-call GPU runbook parses, and without CUDA says so and measures nothing."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[2] / "bench" / "gpu_session.sh"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    env = {"PATH": os.environ["PATH"], "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert done.returncode == 3
    assert "no CUDA device" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_speech_streaming_bench(tmp_path, capsys) -> None:
    from bench import speech_streaming

    out = tmp_path / "rtf.csv"
    rows = speech_streaming.main(
        ["--seconds", "0.5", "--streams", "3", "--repeats", "1", "--csv", str(out)]
    )
    assert [r["streams"] for r in rows] == [1, 3]
    assert all(r["rtf_per_stream"] > 0 for r in rows)
    assert rows[0]["look_ahead_ms"] == 40 and rows[0]["algorithmic_latency_ms"] == 215
    assert [r["streams"] for r in _rows(out)] == ["1", "3"]
    assert "| 3 |" in capsys.readouterr().out


def test_lora_generation_bench(tmp_path, capsys) -> None:
    """Ours and PEFT decode the same tokens with the same nonzero adapter; the plain model's
    tokens differ, so the adapter is really applied."""
    out = tmp_path / "gen.csv"
    lora_generation.main(
        ["--batch", "2", "--prompt", "4", "--new-tokens", "3", "--repeats", "1", "--warmup", "0",
         "--csv", str(out)]
    )  # fmt: skip
    rows = {r["path"]: r for r in _rows(out)}
    assert list(rows) == [lora_generation.OURS, lora_generation.PEFT, lora_generation.PLAIN]
    ours, peft_row, plain = rows.values()
    assert ours["same_tokens_as_peft"] == "True"
    assert ours["new_tokens_matching_peft"] == "6"  # batch 2 x 3 new tokens
    assert plain["same_tokens_as_peft"] == "False"
    assert all(float(r["tokens_per_s"]) > 0 for r in rows.values())
    assert float(peft_row["speed_vs_peft"]) == 1.0 and peft_row["per_round_iqr"] == ""
    low, high = map(float, ours["per_round_iqr"].split("-"))  # one round: a single ratio
    assert low == high == pytest.approx(float(ours["speed_vs_peft"]), abs=6e-4)
    assert "| ours |" in capsys.readouterr().out


def test_lora_generation_copies_our_adapter_into_peft() -> None:
    """Every adapted layer of PEFT's model holds our A and B, and B is not zero."""
    from core.adapters import adapter_layers

    ours = lora_generation.build_ours("reference")
    peft_model = lora_generation.build_peft("reference", ours)
    inner = peft_model.base_model.model
    layers = list(adapter_layers(ours))
    assert len(layers) == 4 * 7
    for name, layer in layers:
        unit, target = layer.adapters["default"], inner.get_submodule(name)
        assert torch.equal(target.lora_A["default"].weight, unit.lora_A.weight)
        assert torch.equal(target.lora_B["default"].weight, unit.lora_B.weight)
        assert unit.lora_B.weight.abs().sum() > 0


def test_smollm2_shape() -> None:
    """--model smollm2 builds SmolLM2-135M's architecture: its config numbers, 134.5M
    parameters with tied embeddings, and the same LoRA size in ours and PEFT's (built on the
    meta device: no memory, no step)."""
    from bench.common import build_model, smollm2_config

    config = smollm2_config()
    assert (config.vocab_size, config.hidden_size, config.intermediate_size) == (49152, 576, 1536)
    assert (config.num_hidden_layers, config.num_attention_heads) == (30, 9)
    assert (config.num_key_value_heads, config.head_dim) == (3, 64)
    assert config.rope_parameters["rope_theta"] == 100000.0
    assert config.rms_norm_eps == 1e-5
    assert config.max_position_embeddings == 8192
    assert config.tie_word_embeddings
    with torch.device("meta"):
        model = build_model("smollm2")
        lora = {path: lora_step.build(path, "smollm2") for path in ("ours", "peft")}
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    attention = model.model.layers[0].self_attn
    assert (attention.k_proj.out_features, attention.o_proj.in_features) == (192, 576)
    # r=16 on q, k, v, o (576 -> 576, 192, 192, 576) and gate, up, down (576 <-> 1536), x30.
    per_layer = 16 * (2 * (576 + 576) + 2 * (576 + 192) + 3 * (576 + 1536))
    for model in lora.values():
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 30 * per_layer
    assert lora_step.SHAPES["smollm2"] == (4, 256)


def test_sibling_gemms_fused_products_equal_the_separate_ones(tmp_path) -> None:
    from bench import sibling_gemms

    separate, fused = sibling_gemms.group_paths(8, [6, 2, 2], hidden=5)
    (outs_a, grad_a), (outs_b, grad_b) = separate(), fused()
    for a, b in zip(outs_a, outs_b, strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(grad_a, grad_b)
    rows = sibling_gemms.main(["--rows", "16", "--repeats", "1", "--csv", str(tmp_path / "s.csv")])
    assert [r["group"] for r in rows] == ["q/k/v", "gate/up"]
    assert (tmp_path / "s.csv").exists()


def test_whisper_lora_step_bench(tmp_path) -> None:
    from bench import whisper_lora_step

    model = whisper_lora_step.build("ours", seconds=0.2)
    assert model.config.max_source_positions == 10 and model.config.d_model == 512
    trainable = {n.split(".")[-2] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"lora_A", "lora_B"}
    whisper_lora_step.main(
        ["--batch", "1", "--tokens", "2", "--seconds", "0.2", "--repeats", "1", "--warmup", "0",
         "--csv", str(tmp_path / "w.csv")]
    )  # fmt: skip
    rows = list(csv.DictReader((tmp_path / "w.csv").read_text().splitlines()))
    assert [r["path"] for r in rows] == ["ours", "peft", "no adapter (floor)"]
