"""The speech module end to end on the tiny recipe: routing, assembly, forgetting, report."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from apps.speech_asr.evaluation import Decoded, flat_metrics
from apps.speech_asr.module import SpeechAdapterModule
from core.adapters import read_adapter

from .conftest import tiny_fit_test

TAIL = ["lt", "lv", "sl", "is"]
HEAD = ["es", "de"]


def _test_metrics(run_dir) -> dict[str, float]:
    return json.loads((run_dir / "metrics.json").read_text())["test"]


def test_test_scores_every_language_for_every_variant(adapter_run) -> None:
    _, run_dir = adapter_run
    metrics = _test_metrics(run_dir)
    for lang in TAIL + HEAD:
        for prefix in ("", "foundation/", "assembled/"):
            assert f"test/{prefix}cer/{lang}" in metrics, (prefix, lang)
            assert f"test/{prefix}wer/{lang}" in metrics, (prefix, lang)
    for key in ("cer_tail", "cer_head", "cer_reduction_tail", "forgetting_head"):
        assert math.isfinite(metrics[f"test/{key}"]), key
    assert metrics["test/streaming_equals_full"] == 1.0
    assert metrics["test/latency_ms"] == 215.0


def test_adapters_leave_the_head_languages_exactly_as_the_foundation(adapter_run) -> None:
    """Head-language samples route to no adapter: zero forgetting by construction."""
    _, run_dir = adapter_run
    metrics = _test_metrics(run_dir)
    for lang in HEAD:
        assert metrics[f"test/cer/{lang}"] == metrics[f"test/foundation/cer/{lang}"]
    assert metrics["test/forgetting_head"] == 0.0


def test_full_finetuning_measures_forgetting_against_the_pretrained_weights(full_run) -> None:
    cli, run_dir = full_run
    metrics = _test_metrics(run_dir)
    module = cli.model
    assert module.adapter_bank is None
    assert metrics["test/parameters/trainable"] == metrics["test/parameters/foundation"]
    # The foundation baseline is a fresh copy of the pre-trained weights, not the tuned model.
    assert any(
        not torch.equal(p.detach(), module.foundation_state[n])
        for n, p in module.model.named_parameters()
    )
    expected = metrics["test/cer_head"] - metrics["test/foundation/cer_head"]
    assert metrics["test/forgetting_head"] == pytest.approx(expected, abs=1e-6)
    assert metrics["test/cer_head"] != metrics["test/foundation/cer_head"]  # lr 0.05 moved it


def test_adapter_ids_route_tail_languages_to_their_adapter_and_head_to_none(adapter_run) -> None:
    module = adapter_run[0].model
    ids = module.adapter_ids(["is", "es", "lt", "de", "sl"]).tolist()
    bank = module.adapter_bank
    assert ids == [bank.index("is"), -1, bank.index("lt"), -1, bank.index("sl")]
    assert sorted(bank.names) == sorted(TAIL)


def test_best_step_assembly_swaps_in_each_best_adapter_and_restores_the_last(
    adapter_run,
) -> None:
    module = adapter_run[0].model
    assert set(module.best_adapters) == set(TAIL)
    history = module.dev_history
    assert [h["step"] for h in history] == [2, 4, 6]
    for lang, best in module.best_adapters.items():  # each one's own minimum, first reached
        cers = [h["cer"][lang] for h in history]
        assert best["cer"] == min(cers)
        assert best["step"] == history[cers.index(min(cers))]["step"]
    last = {lang: module.adapter_tensors(lang) for lang in TAIL}
    with torch.no_grad():  # make every adapter differ from its snapshot
        for lang in TAIL:
            for view in module.adapter_views(lang).values():
                view.add_(1.0)
    moved = {lang: module.adapter_tensors(lang) for lang in TAIL}
    with module.assembled() as steps:
        assert steps == {lang: b["step"] for lang, b in module.best_adapters.items()}
        for lang in TAIL:
            for key, value in module.adapter_tensors(lang).items():
                assert torch.equal(value, module.best_adapters[lang]["tensors"][key])
    for lang in TAIL:
        for key, value in module.adapter_tensors(lang).items():
            assert torch.equal(value, moved[lang][key])
    with torch.no_grad():
        for lang in TAIL:
            for key, view in module.adapter_views(lang).items():
                view.copy_(last[lang][key])


def test_run_exports_the_last_and_the_assembled_bank_in_peft_layout(adapter_run) -> None:
    cli, run_dir = adapter_run
    module = cli.model
    assembly = json.loads((run_dir / "adapter_assembled" / "assembly.json").read_text())
    assert {lang: a["step"] for lang, a in assembly.items()} == {
        lang: b["step"] for lang, b in module.best_adapters.items()
    }
    for lang in TAIL:
        config, tensors = read_adapter(run_dir / "adapter_assembled" / lang)
        assert config.method == "bottleneck"
        best = module.best_adapters[lang]["tensors"]
        by_shape = sorted(tuple(t.shape) for t in tensors.values())
        assert by_shape == sorted(tuple(t.shape) for t in best.values())
        last = load_file(run_dir / "adapter" / lang / "adapter_model.safetensors")
        assert set(last) == set(tensors)


def test_best_adapters_and_dev_history_survive_the_checkpoint(adapter_run) -> None:
    cli, run_dir = adapter_run
    module = cli.model
    loaded = SpeechAdapterModule.load_from_checkpoint(
        run_dir / "checkpoints" / "last.ckpt", weights_only=False
    )
    assert loaded.dev_history == module.dev_history
    for lang, best in module.best_adapters.items():
        got = loaded.best_adapters[lang]
        assert got["step"] == best["step"] and got["cer"] == best["cer"]
        for key, value in best["tensors"].items():
            assert torch.equal(got["tensors"][key], value)


def test_report_has_the_language_table_examples_and_the_dev_curve(adapter_run) -> None:
    _, run_dir = adapter_run
    report = (run_dir / "report.md").read_text()
    assert report.startswith("# Streaming tail-language ASR")
    for heading in ("## Summary", "## Per language", "## Example transcripts", "## Metrics"):
        assert heading in report
    for lang in TAIL + HEAD:
        assert f"| {lang} | {'tail' if lang in TAIL else 'head'} |" in report
    assert "![dev_cer](dev_cer.png)" in report and (run_dir / "dev_cer.png").is_file()


def test_shared_routing_trains_one_adapter_for_every_tail_language(tmp_path) -> None:
    cli = tiny_fit_test(tmp_path, recipe="shared_adapter.yaml")
    module = cli.model
    assert module.adapter_bank.names == ["shared"]
    ids = module.adapter_ids(["lt", "es", "is"]).tolist()
    assert ids == [0, -1, 0]
    assert (tmp_path / "version_0" / "adapter" / "shared" / "adapter_config.json").is_file()


def test_flat_metrics_match_a_hand_computation() -> None:
    def decoded(hyps: list[str]) -> Decoded:
        return Decoded(
            languages=["lt", "lt", "es"],
            references=["abcd", "ab", "abcde"],
            hypotheses=hyps,
            ids=["1", "2", "3"],
        )

    result = flat_metrics(
        {"foundation": decoded(["xxxx", "ab", "abcde"]), "last": decoded(["abcx", "ab", "abxxx"])},
        tail=["lt"],
        head=["es"],
    )
    # lt: 4 edits / 6 characters before, 1 / 6 after; es: 0 / 5 before, 3 / 5 after.
    assert result["foundation/cer/lt"] == pytest.approx(4 / 6)
    assert result["cer/lt"] == pytest.approx(1 / 6)
    assert result["cer_reduction/lt"] == pytest.approx((4 / 6 - 1 / 6) / (4 / 6))
    assert result["cer_head"] == pytest.approx(3 / 5)
    # R = [[1 - 0, 1 - 4/6], [1 - 3/5, 1 - 1/6]]: forgetting of task 0 = 1 - 2/5.
    assert result["forgetting_head"] == pytest.approx(3 / 5)
    assert result["backward_transfer"] == pytest.approx(-3 / 5)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--data.languages", "[lt, xx]"], "known"),
        (["--data.head_languages", "[lt]"], "share"),
        (["--data.train_utterances", "{lt: 4}"], "no count"),
        (["--model.adapter_routing", "per_task"], "per_language"),
        (["--data.source", "jsonl"], "data.root"),
        (["--model.pretrained", "/nonexistent/foundation.pt"], "does not exist"),
    ],
)
def test_bad_options_are_clear_errors(tmp_path, option, message) -> None:
    from apps.speech_asr.train import main

    from .conftest import TINY

    with pytest.raises((ValueError, FileNotFoundError), match=message):
        main(["--config", str(TINY), "--trainer.default_root_dir", str(tmp_path), *option],
             run=False)  # fmt: skip


def test_a_file_that_is_not_a_foundation_is_refused(tmp_path) -> None:
    from apps.speech_asr.foundation import load_foundation

    path = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="not a speech foundation"):
        load_foundation(path)


def test_the_schedule_spans_the_run_whether_set_by_steps_or_epochs(tmp_path) -> None:
    """Warm-up, then a cosine over every step of the run: by max_steps or by max_epochs."""
    for options in (["--trainer.max_steps", "8"],
                    ["--trainer.max_steps", "-1", "--trainer.max_epochs", "2",
                     "--trainer.limit_train_batches", "4"]):  # fmt: skip
        cli = tiny_fit_test(tmp_path / options[1], "--model.warmup_steps", "2", *options)
        scheduler = cli.trainer.lr_scheduler_configs[0].scheduler
        base = scheduler.base_lrs[0]
        assert cli.trainer.global_step == 8
        assert scheduler.get_last_lr()[0] == pytest.approx(0.1 * base, rel=0.05)
