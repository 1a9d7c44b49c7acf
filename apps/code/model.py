"""Causal LMs for the code app: any local ``transformers`` model, or the embedded base.

The embedded base is a small Llama-style decoder (RMSNorm, rotary positions, SwiGLU,
tied embeddings) with a byte-level BPE trained on the training part of the standard
library (FIM sentinels and chat tags added), pre-trained on the same code once and
cached: :func:`ensure_base` trains it the first time and returns the cached folder after
that. The folder is a normal ``save_pretrained`` directory (model + tokenizer), so
``AutoModelForCausalLM.from_pretrained(folder)`` loads it anywhere.

The base is a :func:`core.cache.cached_dir` entry ``code/base-<hash>``, keyed by
:meth:`BaseConfig.cache_config`: the config, the corpus (interpreter version and module
list) and :data:`BASE_VERSION`, so a different config, Python or build trains a new base.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
)

from core.atomic import atomic_write_text
from core.cache import cached_dir, entry_path

from .corpus import list_modules, read_source, split_modules
from .fim import FimSentinels
from .gguf_import import resolve_pretrained
from .tokenizer import DEFAULT_VOCAB_SIZE, load_code_tokenizer, train_bpe

APP = "code"
#: Raised when the pre-training code changes what it builds. 1 was the app's own cache
#: folder; 2 is the same build (same weights, same tokenizer) stored through core.cache.
BASE_VERSION = 2


@dataclass
class BaseConfig:
    """The embedded base model: architecture, tokenizer and its one-off pre-training.

    Args:
        vocab_size: BPE vocabulary (special tokens included).
        hidden_size: Model width.
        num_layers: Decoder layers.
        num_heads: Attention heads (``hidden_size`` must divide by it).
        intermediate_size: SwiGLU width.
        max_positions: Longest sequence the rotary embedding is set up for.
        seq_len: Pre-training window, in tokens.
        steps: Pre-training optimizer steps.
        batch_size: Windows per step.
        lr: Peak AdamW learning rate (linear warm-up, cosine decay to 10%).
        warmup_steps: Warm-up steps.
        weight_decay: AdamW weight decay.
        held_out_fraction: Share of stdlib packages held out of everything (see corpus).
        max_corpus_chars: Cap on the pre-training text (the training modules, in order).
        sentinels: FIM sentinel strings added to the tokenizer.
        seed: Seed of the initialisation and of the window sampling.
        threads: Torch intra-op threads while pre-training (0: leave as is). One thread is
            the default: on a small shared machine more threads wait on each other.
        cache_dir: Folder of the cached bases instead of ``<cache root>/code``
            (``$SPECIALIST_FINETUNERS_CACHE`` or ``~/.cache/specialist-finetuners``).
    """

    vocab_size: int = DEFAULT_VOCAB_SIZE
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 352
    max_positions: int = 1024
    seq_len: int = 512
    steps: int = 400
    batch_size: int = 4
    lr: float = 4e-3
    warmup_steps: int = 20
    weight_decay: float = 0.01
    held_out_fraction: float = 0.15
    max_corpus_chars: int = 12_000_000
    sentinels: FimSentinels = field(default_factory=FimSentinels)
    seed: int = 0
    threads: int = 1
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.sentinels, dict):
            self.sentinels = FimSentinels(**self.sentinels)
        for name in ("hidden_size", "num_layers", "num_heads", "seq_len", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.base.{name}={getattr(self, name)!r} must be >= 1.")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.base.hidden_size={self.hidden_size} must be a multiple of "
                f"model.base.num_heads={self.num_heads}."
            )
        if self.seq_len > self.max_positions:
            raise ValueError(
                f"model.base.seq_len={self.seq_len} exceeds max_positions={self.max_positions}."
            )

    def cache_config(self, modules: list[str]) -> dict[str, Any]:
        """Everything that changes the trained base (not where it is cached, nor threads).

        The :func:`core.cache.cached_dir` key of the base trained on ``modules``.
        """
        spec = {
            k: v for k, v in dataclasses.asdict(self).items() if k not in ("cache_dir", "threads")
        }
        spec["python"] = sys.version.split()[0]
        spec["modules"] = modules
        spec["version"] = BASE_VERSION
        return spec

    def llama_config(self, vocab_size: int, eos_id: int) -> LlamaConfig:
        """The ``transformers`` config of the base."""
        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size, num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads, num_key_value_heads=self.num_heads,
            max_position_embeddings=self.max_positions, tie_word_embeddings=True,
            bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id,
            attn_implementation="sdpa",
        )  # fmt: skip


def load_causal_lm(path: str | Path) -> nn.Module:
    """A causal LM from a local ``save_pretrained`` folder (no hub downloads)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"no model in {str(path)!r} (config.json missing); model.pretrained must be a local "
            "folder written by save_pretrained, a .gguf file, smollm2 (the installed "
            "SmolLM2-135M-Instruct) or base (the app's own small base)."
        )
    model = AutoModelForCausalLM.from_pretrained(
        str(path), local_files_only=True, attn_implementation="sdpa", dtype=torch.float32
    )
    return model.train()  # from_pretrained returns eval mode; Lightning switches modes itself


def corpus_texts(cfg: BaseConfig) -> tuple[list[str], list[str], list[str]]:
    """``(train_texts, held_out_texts, train_module_names)`` of the stdlib corpus."""
    train, held = split_modules(list_modules(), cfg.held_out_fraction)
    if cfg.max_corpus_chars < 1_000_000:  # a quick base: fewer held-out modules to read
        held = dict(list(held.items())[:8])
    train_texts, total = [], 0
    for path in train.values():
        text = read_source(path, check=False)
        if text is None:
            continue
        if total + len(text) > cfg.max_corpus_chars:
            break
        train_texts.append(text)
        total += len(text)
    held_texts = [t for t in (read_source(p, check=False) for p in held.values()) if t]
    return train_texts, held_texts, list(train)


def _windows(token_ids: torch.Tensor, seq_len: int, batch: int, gen: torch.Generator):
    starts = torch.randint(0, len(token_ids) - seq_len - 1, (batch,), generator=gen)
    return torch.stack([token_ids[s : s + seq_len] for s in starts.tolist()])


def _lr_at(step: int, cfg: BaseConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


@torch.no_grad()
def mean_token_loss(model: nn.Module, windows: torch.Tensor, batch: int = 8) -> float:
    """Mean next-token cross-entropy of ``model`` over ``(N, L)`` windows."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(windows), batch):
        x = windows[i : i + batch]
        logits = model(input_ids=x).logits[:, :-1].float()
        loss = nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"
        )
        total += float(loss)
        count += x[:, 1:].numel()
    return total / max(count, 1)


def pretrain_base(cfg: BaseConfig, out_dir: Path) -> dict[str, Any]:
    """Train the tokenizer and the base on the training modules; save into ``out_dir``."""
    t0 = time.time()
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    train_texts, held_texts, _ = corpus_texts(cfg)
    tokenizer = train_bpe(train_texts, cfg.vocab_size, cfg.sentinels)
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for text in tqdm(train_texts, desc="tokenizing the corpus", leave=False):
        ids += [eos, *tokenizer.encode(text, add_special_tokens=False)]
    token_ids = torch.tensor(ids, dtype=torch.long)
    held_ids: list[int] = []
    for text in held_texts:
        held_ids += [eos, *tokenizer.encode(text, add_special_tokens=False)]
    held = torch.tensor(held_ids, dtype=torch.long)
    gen = torch.Generator().manual_seed(cfg.seed)
    held_windows = _windows(held, cfg.seq_len, 32, torch.Generator().manual_seed(cfg.seed + 1))

    model = LlamaForCausalLM(cfg.llama_config(len(tokenizer), eos))
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95)
    )
    old_threads = torch.get_num_threads()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    curve = []
    try:
        model.train()
        bar = tqdm(range(cfg.steps), desc="pre-training the code base")
        for step in bar:
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, cfg)
            x = _windows(token_ids, cfg.seq_len, cfg.batch_size, gen)
            loss = model(input_ids=x, labels=x).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if step % 10 == 0 or step == cfg.steps - 1:
                curve.append((step, loss.item()))
                bar.set_postfix(loss=f"{curve[-1][1]:.3f}")
        held_loss = mean_token_loss(model, held_windows)
    finally:
        torch.set_num_threads(old_threads)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    stats = {
        "train_tokens": len(token_ids),
        "tokens_seen": cfg.steps * cfg.batch_size * cfg.seq_len,
        "params": sum(p.numel() for p in model.parameters()),
        "final_train_loss": curve[-1][1],
        "held_out_loss": held_loss,
        "seconds": time.time() - t0,
        "curve": curve,
        "config": dataclasses.asdict(cfg),
    }
    atomic_write_text(out_dir / "pretrain.json", json.dumps(stats, indent=2, default=str))
    return stats


def ensure_base(cfg: BaseConfig | None = None) -> Path:
    """The cached base's folder, pre-training it first if it is not there yet.

    Pre-training seeds and draws from the global generators; the cache restores them
    afterwards, so a first run (which pre-trains) and a later run (which loads the cache)
    continue with the same random stream: same adapter init, same shuffles, same figures.
    """
    cfg = cfg or BaseConfig()
    train, _ = split_modules(list_modules(), cfg.held_out_fraction)
    key = cfg.cache_config(list(train))

    def build(folder: Path) -> None:
        target = entry_path("base", key, app=APP, cache_dir=cfg.cache_dir, suffix="")
        print(f"[apps.code] no cached base at {target}; pre-training one (done once).")
        pretrain_base(cfg, folder)

    return cached_dir("base", key, build, app=APP, cache_dir=cfg.cache_dir)


#: ``model.pretrained`` value naming the app's own small base (also what ``None`` means).
EMBEDDED_BASE = "base"


def resolve_model_folder(cfg: BaseConfig | None, pretrained: str | Path | None) -> Path:
    """The ``save_pretrained`` folder ``model.pretrained`` names.

    ``base`` (or ``None``): the app's own small Llama, pre-trained on the standard library
    from ``cfg`` and cached; ``smollm2``: SmolLM2-135M-Instruct from the installed wheel; a
    path ending in ``.gguf``: that GGUF, converted once and cached; otherwise a local folder.
    """
    if pretrained is None or str(pretrained) == EMBEDDED_BASE:
        return ensure_base(cfg)
    return resolve_pretrained(pretrained, cache_dir=(cfg or BaseConfig()).cache_dir)


def load_base(
    cfg: BaseConfig | None = None, pretrained: str | Path | None = None
) -> tuple[nn.Module, PreTrainedTokenizerBase, Path]:
    """``(model, tokenizer, folder)`` of what ``model.pretrained`` names
    (:func:`resolve_model_folder`)."""
    folder = resolve_model_folder(cfg, pretrained)
    return load_causal_lm(folder), load_code_tokenizer(folder), folder
