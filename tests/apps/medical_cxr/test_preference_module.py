"""Preference tuning: from the SFT checkpoint (its shape, weights and tokenizer), pairs mined
at setup with the reference log-probabilities of the SFT network, only LoRA trained; the
options checked one by one, the data's image size checked against the checkpoint's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from apps.medical_cxr.preference_module import (
    ARCH_KEYS,
    PreferenceModule,
    report_scores,
    sft_architecture,
)
from apps.medical_cxr.report_module import ReportGenModule
from apps.medical_cxr.train import main
from core.adapters import LoraConfig

from .tiny import CONFIGS, TRAINER, tiny_data

LORA = LoraConfig(r=2, target_modules=["q_proj", "v_proj"])


def fit_preference(ckpt: Path, tmp_path: Path, *options: str):
    """One tiny epoch of ``preference.yaml`` from the SFT checkpoint ``ckpt``."""
    return main(
        ["fit", "--config", str(CONFIGS / "preference.yaml"),
         "--model.init_args.pretrained", str(ckpt), "--model.init_args.num_samples", "4",
         "--model.init_args.sample_temperature", "1.5", "--model.init_args.max_new_tokens", "12",
         "--trainer.max_epochs", "1", *options, *TRAINER, *tiny_data(tmp_path)]
    )  # fmt: skip


@pytest.mark.slow
def test_preference_tuning_from_the_sft_checkpoint(sft_run, fast_embedded, tmp_path):
    _, run_dir = sft_run
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    cli = fit_preference(ckpt, tmp_path, "--model.init_args.reward_weights", "balanced")
    model = cli.model
    assert isinstance(model, PreferenceModule) and model.pairs
    assert model.model.encoder.out_dim == 1280 and model.label_loss_weight == 0.0  # the SFT's
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
    # The recipe instantiates from the checkpoint without running; fitting checks that the
    # data has the checkpoint's image size (32) before it writes anything.
    root = ["--trainer.default_root_dir", str(tmp_path / "x")]
    recipe = [
        "--config",
        str(CONFIGS / "preference.yaml"),
        "--model.init_args.pretrained",
        str(ckpt),
    ]
    assert isinstance(main([*recipe, *root], run=False).model, PreferenceModule)
    with pytest.raises(ValueError, match=r"data\.image_size=128, .* set --data\.image_size 32"):
        main(["fit", *recipe, "--data.max_studies", "4", *root])
    assert not list((tmp_path / "x").glob("*/*.*"))


@pytest.mark.slow
def test_pairs_mined_with_the_reference_label_prompt(sft_run, fast_embedded, tmp_path):
    _, run_dir = sft_run
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    cli = fit_preference(ckpt, tmp_path, "--model.init_args.pair_prompt", "reference")
    pair = cli.model.pairs[0]
    assert pair["label_states"].shape == (14,)
    # The reference log-probabilities are the SFT network's under that prompt.
    sft = ReportGenModule.load_from_checkpoint(ckpt, weights_only=True).eval()
    ids, mask = sft.encode([pair["chosen"]])
    states = pair["label_states"][None]
    expected = sft.model.sequence_logprobs(pair["image"][None], ids, mask, states)
    assert pair["ref_chosen"].item() == pytest.approx(expected.item(), abs=1e-3)
    predicted = sft.model.sequence_logprobs(pair["image"][None], ids, mask)
    assert cli.model.global_step > 0 and torch.isfinite(predicted).all()


@pytest.mark.slow
def test_pairs_mined_on_the_validation_studies(sft_run, fast_embedded, tmp_path):
    _, run_dir = sft_run
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    cli = fit_preference(ckpt, tmp_path, "--model.init_args.pair_split", "val")
    sets = cli.datamodule.sets
    val_ids = {s.study_id for s in sets["val"].studies}
    assert cli.model.pairs and {p["study_id"] for p in cli.model.pairs} <= val_ids
    assert not val_ids & {s.study_id for s in sets["train"].studies}
    assert cli.model.global_step > 0


@pytest.mark.slow
def test_the_network_is_the_sft_model_whatever_shape_is_given(sft_run):
    _, run_dir = sft_run
    ckpt = str(run_dir / "checkpoints" / "last.ckpt")
    arch = sft_architecture(ckpt)
    assert set(arch) == set(ARCH_KEYS) and arch["encoder"] == "efficientnet_lite0"
    module = PreferenceModule(
        pretrained=ckpt, adapter=LORA, encoder="vit_tiny", label_prompt=False, decoder_layers=4
    )
    assert module.model.encoder.out_dim == 1280 and module.model.label_prompt  # EfficientNet
    assert module.model.decoder.config.num_hidden_layers == 1
    assert module.tokenizer is not None and module.vocab_size == 200


def test_sft_architecture_reads_the_names_older_checkpoints_used(tmp_path):
    hparams = {k: 1 for k in ARCH_KEYS if k != "decoder_pretrained"} | {"decoder_path": None}
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": hparams}, path)
    assert sft_architecture(str(path))["decoder_pretrained"] is None
    torch.save({"state_dict": {}, "hyper_parameters": {"hidden_size": 8}}, path)
    with pytest.raises(ValueError, match=r"not a report-generation checkpoint"):
        sft_architecture(str(path))


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"adapter": None}, r"needs model\.adapter"),
        ({"beta": 0.0}, r"model\.beta=0\.0 must be > 0"),
        ({"loss_type": "kto"}, r"model\.loss_type='kto' must be one of"),
        ({"label_smoothing": 0.5}, r"model\.label_smoothing"),
        ({"num_samples": 1}, r"model\.num_samples=1 must be >= 2"),
        ({"sample_temperature": 0.0}, r"model\.sample_temperature"),
        ({"sample_top_p": 1.5}, r"model\.sample_top_p"),
        ({"max_pair_studies": 0}, r"model\.max_pair_studies"),
        ({"sft_weight": -1.0}, r"model\.sft_weight"),
        ({"reward_weights": "rare"}, r"model\.reward_weights='rare' must be one of"),
        ({"pair_prompt": "truth"}, r"model\.pair_prompt='truth' must be one of"),
        ({"pair_balance": "even"}, r"model\.pair_balance='even' must be one of"),
        ({"pair_split": "test"}, r"model\.pair_split='test' must be one of"),
        ({"rejected": "greedy"}, r"model\.rejected='greedy' must be one of"),
    ],
)
def test_options_are_checked_before_the_checkpoint_is_read(tmp_path, option, message):
    with pytest.raises(ValueError, match=message):
        PreferenceModule(pretrained=str(tmp_path / "none.ckpt"), **{"adapter": LORA, **option})


def test_a_missing_checkpoint_says_to_train_the_sft_model_first(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train the model first"):
        PreferenceModule(pretrained=str(tmp_path / "none.ckpt"), adapter=LORA)


def test_length_normalized_scores_are_mean_token_log_probabilities():
    token_logp = -torch.rand(2, 5)
    mask = torch.tensor([[1.0, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    reference = torch.tensor([-6.0, -10.0])
    policy, ref = report_scores(token_logp, mask, reference, length_normalized=False)
    assert policy.tolist() == pytest.approx(
        [token_logp[0, :3].sum().item(), token_logp[1].sum().item()]
    )
    assert ref.tolist() == [-6.0, -10.0]
    policy, ref = report_scores(token_logp, mask, reference, length_normalized=True)
    assert policy.tolist() == pytest.approx(
        [token_logp[0, :3].mean().item(), token_logp[1].mean().item()]
    )
    assert ref.tolist() == pytest.approx([-2.0, -2.0])
