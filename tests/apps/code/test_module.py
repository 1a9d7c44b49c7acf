"""CodeModule end to end on a tiny base: fit + test through the CLI, recipes, options, fused
loss, the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from apps.code.data import CodeDataModule
from apps.code.module import CodeModule
from apps.code.packing import Encoded, additive_mask, collate_packed, packed_attention_mask
from apps.code.records import Record, write_jsonl
from apps.code.train import main
from core.training.lm_loss import causal_lm_loss

from .conftest import TINY_CONFIG


def _jsonl(tmp_path):
    recs = [Record("a", f"def f{i}(x):\n", f"    return x + {i}\n") for i in range(12)]
    recs += [Record("b", messages=({"role": "user", "content": f"add {i}"},
                                   {"role": "assistant", "content": f"x + {i}"}))
             for i in range(6)]  # fmt: skip
    write_jsonl(tmp_path / "train.jsonl", recs)
    write_jsonl(tmp_path / "val.jsonl", recs[:3] + recs[-3:])
    return tmp_path / "train.jsonl"


def _run(args, tiny_base, tmp_path):
    """``fit`` on tiny.yaml with the session's tiny base as ``model.pretrained``."""
    folder, _ = tiny_base
    return main(["fit", "--config", str(TINY_CONFIG), "--model.pretrained", str(folder),
                 "--trainer.default_root_dir", str(tmp_path / "runs"), *args])  # fmt: skip


@pytest.fixture()
def session_cache(tiny_base, tiny_cache, monkeypatch):
    """Runs find tiny.yaml's base in the session's cache (pre-trained once by ``tiny_base``)."""
    monkeypatch.setenv("SPECIALIST_FINETUNERS_CACHE", str(tiny_cache))
    return tiny_cache


@pytest.mark.slow
def test_fit_then_test_writes_the_run_directory(session_cache, tmp_path):
    """The no-argument flow (fit, then test) on the embedded tasks, scaled down by tiny.yaml."""
    cli = main(["--config", str(TINY_CONFIG), "--trainer.default_root_dir",
                str(tmp_path / "runs"), "--model.evaluation.doctest_problems", "2",
                "--model.evaluation.doctest_max_new_tokens", "8"])  # fmt: skip
    assert cli.model.base_folder.startswith(str(session_cache))  # the cached tiny base
    run = tmp_path / "runs" / "version_0"
    for name in (
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "metrics.json",
        "eval.json",
        "report.md",
        "checkpoints/last.ckpt",
        "adapter.gguf",  # the LoRA adapter for llama.cpp
    ):
        assert (run / name).is_file(), name  # fmt: skip
    results = json.loads((run / "eval.json").read_text())
    assert set(results) >= {"task_loss", "fim", "humaneval"}
    assert results["humaneval"]["tuned"]["problems"] == 2
    assert results["doctests"]["tuned"]["problems"] == 2  # held-out doctests, in the sandbox
    assert set(results["doctests"]) == {"tuned", "base"}
    assert 0.0 <= results["humaneval"]["tuned"]["pass@1"] <= 1.0
    statuses = results["humaneval"]["tuned"]["statuses"]
    assert sum(statuses.values()) == 4  # 2 problems x 2 samples, each run in the sandbox
    ran = (statuses.get("passed", 0) + statuses.get("failed", 0)) / 4
    assert results["humaneval"]["tuned"]["runs_to_tests"] == ran
    metrics = json.loads((run / "metrics.json").read_text())["test"]
    assert "test/humaneval_pass@1" in metrics and "test/base_humaneval_pass@1" in metrics
    for task, row in results["task_loss"].items():
        assert row["tuned"] > 0 and row["base"] > 0, task
    # Test stage is the base only outside the adapter: the two differ after training.
    assert any(abs(r["tuned"] - r["base"]) > 0 for r in results["task_loss"].values())
    report = (run / "report.md").read_text()
    assert report.startswith("# Code app: evaluation\n")
    assert "| task | base | fine-tuned | change |" in report
    assert "## Metrics" in report and "| test/humaneval_pass@1 |" in report
    assert metrics["test/loss"] == pytest.approx(
        sum(r["tuned"] for r in results["task_loss"].values()) / len(results["task_loss"])
    )
    # The checkpoint keeps the tokenizer; the test subcommand on it gives the same losses.
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["tokenizer"]["roles"]["eos_token"] == "<|endoftext|>"
    last = str(run / "checkpoints" / "last.ckpt")
    main(["test", "--config", str(TINY_CONFIG), "--trainer.default_root_dir",
          str(tmp_path / "runs"), "--ckpt_path", last])  # fmt: skip
    again = json.loads((tmp_path / "runs" / "version_1" / "eval.json").read_text())
    for task, row in results["task_loss"].items():
        assert again["task_loss"][task]["tuned"] == pytest.approx(row["tuned"], rel=1e-5)
    assert "Loaded from" in (tmp_path / "runs" / "version_1" / "report.md").read_text()


RECIPES = Path(TINY_CONFIG).parent


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["coba", "dora", "per_task_adapters"])
def test_recipes_run_under_tiny(recipe, session_cache, tmp_path):
    """Each recipe, with tiny.yaml laid over it, fits and tests and does what it names."""
    root = tmp_path / "runs"
    cli = main(["--config", str(RECIPES / f"{recipe}.yaml"), "--config", str(TINY_CONFIG),
                "--trainer.default_root_dir", str(root)])  # fmt: skip
    run = root / "version_0"
    fit = json.loads((run / "metrics.json").read_text())["fit"]
    assert fit["global_step"] == 1
    assert (run / "report.md").is_file() and (run / "eval.json").is_file()
    if recipe == "coba":
        assert cli.model.coba is not None and len(cli.model.coba.history) == 1
        assert fit["coba/weight_completion"] == 1.0  # still warming up
    elif recipe == "dora":
        config = json.loads((run / "adapter" / "adapter_config.json").read_text())
        assert config["use_dora"] is True and config["r"] == 16
    else:
        assert cli.model._bank is not None and cli.datamodule.pack_by_task
        for task in ("completion", "fim", "doc2body", "body2doc", "func2tests"):
            assert (run / "adapters" / task / "adapter_model.safetensors").is_file(), task


def test_jsonl_data_coba_and_unfused(tiny_base, tmp_path):
    path = _jsonl(tmp_path)
    val = path.with_name("val.jsonl")
    cli = _run(["--data.source", "jsonl", "--data.paths", f"[{path}]",
                "--data.val_paths", f"[{val}]",
                "--model.task_weighting", "coba",
                "--model.coba_warmup", "2", "--model.coba_window", "2",
                "--model.fused_loss", "false", "--trainer.max_epochs", "3",
                "--trainer.limit_train_batches", "1"], tiny_base, tmp_path)  # fmt: skip
    assert cli.datamodule.task_names == ["a", "b"]
    history = cli.model.coba.history
    assert len(history) == 3 and all(len(h) == 2 for h in history)  # one per validation run
    logged = cli.trainer.callback_metrics
    assert "coba/weight_a" in logged and "val/a_loss" in logged and "val/base_b_loss" in logged


def test_adapter_per_task_routes_rows(tiny_base, tmp_path):
    path = _jsonl(tmp_path)
    with pytest.raises(ValueError, match="pack_by_task"):
        _run(["--data.source", "jsonl", "--data.paths", f"[{path}]",
              "--model.adapter_per_task", "true", "--model.adapter_tasks", "[a, b]"],
             tiny_base, tmp_path)  # fmt: skip
    cli = _run(["--data.source", "jsonl", "--data.paths", f"[{path}]",
                "--model.adapter_per_task", "true",
                "--model.adapter_tasks", "[a, b]", "--data.pack_by_task", "true"], tiny_base,
               tmp_path)  # fmt: skip
    run = Path(cli.trainer.log_dir)
    assert run == tmp_path / "runs" / "version_0"  # the refused run left no directory behind
    assert (run / "adapters" / "a" / "adapter_model.safetensors").is_file()
    assert (run / "adapters" / "b" / "adapter_config.json").is_file()
    model = cli.model
    batch = next(iter(cli.datamodule.train_dataloader()))
    with torch.no_grad():
        routed = model.token_losses(batch)
        bank = model._bank
        ids = torch.full((batch["input_ids"].shape[0],), -1)
        with bank.route(ids):  # base only
            base = causal_lm_loss(model.model, batch["input_ids"], batch["labels"],
                                  attention_mask=additive_mask(packed_attention_mask(
                                      batch["segment_ids"]), torch.float32),
                                  position_ids=batch["position_ids"], reduction="none")  # fmt: skip
    assert not torch.allclose(routed, base)  # the task adapters changed the rows' losses


def test_fused_equals_unfused_per_token(tiny_base):
    from apps.code.model import load_base

    folder, cfg = tiny_base
    model, _tok, _ = load_base(cfg, folder)
    g = torch.Generator().manual_seed(0)
    exs = [Encoded(torch.randint(1, 300, (n,), generator=g).tolist(),
                   [-100, *torch.randint(1, 300, (n - 1,), generator=g).tolist()], "t")
           for n in (9, 12, 5)]  # fmt: skip
    batch = collate_packed([exs[:2], exs[2:]], 0, ["t"], 24)
    mask = additive_mask(packed_attention_mask(batch["segment_ids"]), torch.float32)
    kw = {"attention_mask": mask, "position_ids": batch["position_ids"], "reduction": "none"}
    fused = causal_lm_loss(model, batch["input_ids"], batch["labels"], fused=True, **kw)
    plain = causal_lm_loss(model, batch["input_ids"], batch["labels"], fused=False, **kw)
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)
    assert fused.shape == (2, 23)
    mean = causal_lm_loss(model, batch["input_ids"], batch["labels"], fused=True,
                          attention_mask=mask, position_ids=batch["position_ids"])  # fmt: skip
    valid = batch["labels"][:, 1:] != -100
    torch.testing.assert_close(mean, plain[valid].mean(), atol=1e-5, rtol=1e-5)
    fused.sum().backward()


def test_bad_options(tiny_base):
    folder, _ = tiny_base
    with pytest.raises(ValueError, match="task_weighting"):
        CodeModule(pretrained=str(folder), task_weighting="nope")
    with pytest.raises(ValueError, match="adapter_per_task needs"):
        CodeModule(pretrained=str(folder), adapter_per_task=True)
    with pytest.raises(ValueError, match="seq_len"):
        CodeDataModule(seq_len=4)
    dm = CodeDataModule(source="jsonl", paths=["x.jsonl"])
    with pytest.raises(ValueError, match="no tokenizer"):
        dm.setup("fit")


def test_dora_with_the_plain_token_mean(tiny_base, tmp_path):
    path = _jsonl(tmp_path)
    cli = _run(["--data.source", "jsonl", "--data.paths", f"[{path}]",
                "--model.task_weighting", "token",
                "--model.adapter.init_args.use_dora", "true"], tiny_base, tmp_path)  # fmt: skip
    run = tmp_path / "runs" / "version_0"
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert config["use_dora"] is True
    assert "val/loss" in cli.trainer.callback_metrics


def test_corda_calibrates_on_packed_batches(tiny_base, tmp_path):
    """A data-dependent adapter init (LoRA CorDA) runs packed batches through the model."""
    cli = _run(["--model.adapter.init_args.init", "corda", "--model.calibration_batches", "1"],
               tiny_base, tmp_path)  # fmt: skip
    assert cli.model.needs_calibration and cli.model._injected  # injected in setup
    assert cli.trainer.global_step == 1
    assert (Path(cli.trainer.log_dir) / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("use_dora", [False, True])
def test_generation_with_the_adapter_merged_matches_unmerged(tiny_base, use_dora):
    """The test stage decodes with the adapter folded in (DoRA's per-step norms gone); the
    tokens are those of the unmerged model and the weights come back after."""
    from apps.code.evaluation import sample_completions
    from core.adapters import LoraConfig
    from core.adapters.api import adapter_layers

    folder, _ = tiny_base
    adapter = LoraConfig(r=4, alpha=8, use_dora=use_dora, target_modules=["q_proj", "v_proj"])
    module = CodeModule(pretrained=str(folder), adapter=adapter)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in module.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    prompts = ["def add(a, b):\n", "class Stack:\n    def push(self, x):\n"]
    plain = sample_completions(module.model, module.tokenizer, prompts, max_new_tokens=12,
                               progress=False)  # fmt: skip
    with module.merged_for_generation():
        assert all(layer.merged for _, layer in adapter_layers(module.model))
        merged = sample_completions(module.model, module.tokenizer, prompts, max_new_tokens=12,
                                    progress=False)  # fmt: skip
    assert merged == plain
    for name, param in module.model.named_parameters():
        assert torch.allclose(param, before[name], atol=1e-5), name
