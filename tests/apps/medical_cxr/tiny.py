"""Tiny settings shared by the chest X-ray tests: the app's tiny recipe and its network."""

from __future__ import annotations

from pathlib import Path

from apps.medical_cxr.train import DEFAULT_CONFIG

CONFIGS = DEFAULT_CONFIG.parent
TINY_CONFIG = CONFIGS / "tiny.yaml"
#: The network of configs/tiny.yaml, as keyword arguments of ReportGenModule.
TINY_ARCH = {
    "encoder": "efficientnet_lite0",
    "label_loss_weight": 1.0,
    "label_prompt": True,
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
#: Quiet trainer options.
TRAINER = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def tiny_data(root: Path) -> list[str]:
    """Options for 16 studies per split at 32 pixels, the run under ``root/runs``."""
    return [
        "--data.max_studies", "16", "--data.image_size", "32", "--data.batch_size", "8",
        "--trainer.default_root_dir", str(root / "runs"),
    ]  # fmt: skip
