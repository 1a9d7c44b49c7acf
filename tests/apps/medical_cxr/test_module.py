"""End to end through the command line on tiny settings: report generation (the no-argument
path: fit, then test, report.md), preference tuning from its checkpoint, classification."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from apps.medical_cxr import data as data_mod
from apps.medical_cxr.metrics import CE_KEYS
from apps.medical_cxr.module import PreferenceModule, ReportGenModule
from apps.medical_cxr.train import DEFAULT_CONFIG, main
from core.adapters import SsfConfig, adapter_names
from core.training import FineTuneModule, run_cli

CONFIGS = DEFAULT_CONFIG.parent
TINY_ARCH = {
    "image_size": 32,
    "vit_dim": 32,
    "vit_depth": 1,
    "vit_heads": 2,
    "patch_size": 16,
    "decoder_hidden": 32,
    "decoder_layers": 1,
    "decoder_heads": 2,
    "vocab_size": 200,
    "max_text_tokens": 24,
    "max_new_tokens": 12,
    "meteor": False,
}
TRAINER = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@pytest.fixture()
def fast_embedded(monkeypatch, embedded_studies):
    monkeypatch.setattr(data_mod, "load_embedded", lambda *a, **k: list(embedded_studies))


def tiny_data(root: Path) -> list[str]:
    return [
        "--data.max_studies", "16", "--data.image_size", "32", "--data.batch_size", "8",
        "--data.cache_dir", str(root / "cache"), "--trainer.default_root_dir", str(root / "runs"),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, embedded_studies):
    """The no-argument path (fit, then test) of run_cli on a tiny copy of default.yaml."""
    root = tmp_path_factory.mktemp("sft")
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config["model"]["init_args"].update(TINY_ARCH)
    config["data"].update(max_studies=16, image_size=32, batch_size=8, cache_dir=str(root / "c"))
    config["trainer"].update(
        max_epochs=2, default_root_dir=str(root / "runs"), enable_progress_bar=False
    )
    tiny = root / "default.yaml"
    tiny.write_text(yaml.safe_dump(config))
    patch = pytest.MonkeyPatch()
    patch.setattr(data_mod, "load_embedded", lambda *a, **k: list(embedded_studies))
    try:
        cli = run_cli(FineTuneModule, data_mod.CxrDataModule, tiny, args=[], app_name="t",
                      subclass_mode=True)  # fmt: skip
    finally:
        patch.undo()
    return cli, Path(cli.trainer.log_dir)


@pytest.mark.slow
def test_report_generation_fit_then_test_writes_the_run_directory(sft_run, capsys):
    cli, run_dir = sft_run
    assert isinstance(cli.model, ReportGenModule)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr", *CE_KEYS):
        assert 0.0 <= metrics["test"][f"test/{key}"] <= 1.0 or key == "CIDEr"
    out = run_dir / "eval" / "test_seed0"
    refs, hyps = (out / "refs.txt").read_text(), (out / "hyps.txt").read_text()
    assert len(refs.splitlines()) == len(hyps.splitlines()) == 16
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["ce_f1_micro"] == pytest.approx(metrics["test"]["test/ce_f1_micro"], abs=1e-6)
    report = (run_dir / "report.md").read_text()
    assert "synthetic" in report and "| ce_f1_micro |" in report and "- generated:" in report
    for png in ("curves.png", "per_label_test.png", "examples_test.png"):
        assert (run_dir / png).stat().st_size > 1000, png
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert "tokenizer_json" in ckpt  # the tokenizer trained at setup travels with the weights


@pytest.mark.slow
def test_preference_tuning_from_the_sft_checkpoint(sft_run, fast_embedded, tmp_path):
    _, run_dir = sft_run
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    cli = main(
        ["fit", "--config", str(CONFIGS / "preference.yaml"),
         "--model.init_args.sft_checkpoint", str(ckpt), "--model.init_args.num_samples", "4",
         "--model.init_args.sample_temperature", "1.5", "--model.init_args.max_new_tokens", "12",
         "--trainer.max_epochs", "1", *TRAINER, *tiny_data(tmp_path)]
    )  # fmt: skip
    model = cli.model
    assert isinstance(model, PreferenceModule) and model.pairs
    pair = model.pairs[0]
    assert pair["chosen_score"] > pair["rejected_score"]
    # The reference log-probabilities are the SFT network's (adapter disabled).
    sft = ReportGenModule.load_from_checkpoint(ckpt, weights_only=True)
    sft.eval()
    ids, mask = sft.encode([pair["chosen"]])
    expected = sft.model.sequence_logprobs(pair["image"][None], ids, mask)
    assert pair["ref_chosen"].item() == pytest.approx(expected.item(), abs=1e-3)
    log_dir = Path(cli.trainer.log_dir)
    assert (log_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert len((log_dir / "preference_pairs.jsonl").read_text().splitlines()) == len(model.pairs)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n in trainable)


@pytest.mark.slow
def test_classification_recipe_logs_auroc(fast_embedded, tmp_path):
    cli = main(
        ["fit", "--config", str(CONFIGS / "classification.yaml"), "--trainer.max_epochs", "1",
         "--model.init_args.image_size", "32", "--model.init_args.vit_dim", "32",
         "--model.init_args.vit_depth", "1", "--model.init_args.vit_heads", "2",
         *TRAINER, *tiny_data(tmp_path)]
    )  # fmt: skip
    cli.trainer.test(cli.model, datamodule=cli.datamodule)
    metrics = json.loads((Path(cli.trainer.log_dir) / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["test/auroc"] <= 1.0
    assert 0 <= metrics["test"]["test/auroc_excluded"] <= 14


def test_encoder_adapter_per_part(tmp_path):
    module = ReportGenModule(
        **{k: v for k, v in TINY_ARCH.items()},
        adapter={"class_path": "core.adapters.LoraConfig",
                 "init_args": {"r": 2, "target_modules": ["q_proj", "v_proj"]}},
        encoder_adapter=SsfConfig(target_modules=["qkv", "fc1"]),
    )  # fmt: skip
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    assert any("lora" in n and "decoder" in n for n in trainable)
    assert any("encoder" in n and "ssf" in n.lower() for n in trainable)
    assert all("lora" in n or "ssf" in n.lower() for n in trainable)
    assert adapter_names(module.model.encoder) == ["encoder"]


def test_preference_module_needs_a_checkpoint_and_an_adapter(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train the report generator first"):
        PreferenceModule(sft_checkpoint=str(tmp_path / "none.ckpt"))


@pytest.mark.slow
def test_factuality_comparison_runs_both_stages_and_resumes(fast_embedded, tmp_path, monkeypatch):
    from apps.medical_cxr import factuality

    arch = [f"--model.init_args.{k}={v}" for k, v in TINY_ARCH.items()]
    tiny = [
        "--data.max_studies",
        "16",
        "--data.image_size",
        "32",
        "--data.batch_size",
        "8",
        "--data.cache_dir",
        str(tmp_path / "cache"),
        "--trainer.max_epochs",
        "1",
        *TRAINER,
    ]
    pref = ["--model.init_args.sample_temperature", "1.5", "--model.init_args.max_new_tokens",
            "12", "--model.init_args.meteor", "false", *tiny]  # fmt: skip
    argv = ["--seeds", "3", "--out", str(tmp_path / "out"),
            "--sft-args", " ".join([*arch, *tiny]), "--pref-args", " ".join(pref)]  # fmt: skip
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
