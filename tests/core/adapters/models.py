"""Tiny models every adapter method must work on, each built deterministically from a seed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn


@dataclass
class ModelCase:
    """A tiny model family: how to build it, feed it, and which layers each method adapts."""

    name: str
    build: Callable[[], nn.Module]
    make_input: Callable[[], Tensor]
    linear_targets: list[str]
    conv_targets: list[str] = field(default_factory=list)

    def run(self, model: nn.Module, x: Tensor) -> Tensor:
        out = model(x)
        return out.logits if hasattr(out, "logits") else out


def _seeded(builder: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        torch.manual_seed(0)
        return builder().eval()

    return build


def _mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 5)
    )


def tiny_llama(width: int = 32, **fields: Any) -> nn.Module:
    """A two-layer Llama of hidden size ``width``: ``width // 8`` attention heads sharing
    ``width // 16`` key/value heads, MLP and vocabulary of ``2 * width``; ``fields`` set other
    ``LlamaConfig`` values. Weights come from torch's global generator: seed it first.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=2,
        num_attention_heads=width // 8,
        num_key_value_heads=width // 16,
        vocab_size=2 * width,
        **fields,
    )
    return LlamaForCausalLM(config)


def _llama() -> nn.Module:
    return tiny_llama(32, max_position_embeddings=32)


def _gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    sizes = dict(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=32)
    return GPT2LMHeadModel(GPT2Config(**sizes, bos_token_id=0, eos_token_id=0))


def _vit() -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=16, patch_size=8, in_chans=3, num_classes=5, embed_dim=32, depth=2, num_heads=4
    )


def _tokens() -> Tensor:
    return torch.randint(0, 64, (3, 7), generator=torch.Generator().manual_seed(1))


MODEL_CASES = {
    "mlp": ModelCase(
        "mlp",
        _seeded(_mlp),
        lambda: torch.randn(6, 12, generator=torch.Generator().manual_seed(1)),
        ["0", "2"],
    ),
    "llama": ModelCase("llama", _seeded(_llama), _tokens, ["q_proj", "v_proj", "down_proj"]),
    "gpt2": ModelCase("gpt2", _seeded(_gpt2), _tokens, ["c_attn", "mlp.c_fc"]),
    "vit": ModelCase(
        "vit",
        _seeded(_vit),
        lambda: torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)),
        ["qkv", "fc1"],
        conv_targets=["patch_embed.proj"],
    ),
}
