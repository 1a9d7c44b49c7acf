"""Networks: 1-channel image encoders (timm / MONAI), a causal text decoder (transformers),
the report generator that joins them by a visual prefix, a multi-label classifier, and the
report tokenizer.

Nothing is downloaded: encoders are built from their architecture (backbone weights from a
local file, ``encoder_pretrained``), the decoder from a small ``LlamaConfig`` or from a local
folder (``decoder_pretrained``: ``from_pretrained(path, local_files_only=True)``); see
:mod:`.weights` for every kind of local weights.

Report generation conditions the decoder on the image by a *visual prefix*: the encoder's
patch/feature-map tokens, linearly projected to the decoder width, are placed before the
report's token embeddings; the decoder attends to them causally like to a prompt. Decoding
is Hugging Face ``generate`` on ``inputs_embeds``: beam search (3 beams, no repeated token
trigram: ``no_repeat_ngram_size=3``) or sampling.

The report tokenizer is :mod:`core.tokenizers`' WordPiece (:func:`report_recipe`): the
special tokens ``[PAD]`` = 0, ``[BOS]`` = 1, ``[EOS]`` = 2, ``[UNK]`` = 3, every character of
the training reports and their most frequent words, learned deterministically.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from core import tokenizers as core_tokenizers

from .reports import normalise_report
from .weights import load_state

ENCODERS = ("vit_tiny", "densenet121", "monai_densenet121")
PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[EOS]", "[UNK]"
APP = "medical_cxr"


# ---------------------------------------------------------------------------- encoders
class ImageEncoder(nn.Module):
    """A 1-channel backbone returning a sequence of feature tokens ``(B, N, out_dim)``.

    Input images are in [0, 1]; they are standardised here (mean 0.5, std 0.25).
    """

    def __init__(self, backbone: nn.Module, out_dim: int, kind: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.out_dim = out_dim
        self.kind = kind

    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(
                f"images must be (batch, 1, H, W) grayscale radiographs; got {tuple(images.shape)}."
            )
        x = (images - 0.5) / 0.25
        feats = self.backbone(x) if self.kind == "monai" else self.backbone.forward_features(x)
        if feats.ndim == 4:  # CNN feature map -> one token per position
            feats = feats.flatten(2).transpose(1, 2)
        return feats


def build_encoder(
    name: str = "vit_tiny",
    image_size: int = 64,
    pretrained: str | None = None,
    vit_dim: int = 128,
    vit_depth: int = 2,
    vit_heads: int = 4,
    patch_size: int = 8,
    drop_path: float = 0.0,
) -> ImageEncoder:
    """A 1-channel encoder by name.

    Args:
        name: ``"vit_tiny"`` (a small timm ViT: ``vit_dim``, ``vit_depth``, ``vit_heads``,
            ``patch_size``), ``"densenet121"`` (timm), ``"monai_densenet121"`` (MONAI), or
            any other timm model name (built with ``in_chans=1``, no pretrained download).
        pretrained: Optional local state-dict file for the backbone (``.pth``/``.safetensors``).
    """
    import timm

    if name == "vit_tiny":
        from timm.models.vision_transformer import VisionTransformer

        if image_size % patch_size:
            raise ValueError(
                f"image_size={image_size} must be a multiple of patch_size={patch_size}."
            )
        backbone: nn.Module = VisionTransformer(
            img_size=image_size,
            patch_size=patch_size,
            in_chans=1,
            embed_dim=vit_dim,
            depth=vit_depth,
            num_heads=vit_heads,
            mlp_ratio=2.0,
            num_classes=0,
            drop_path_rate=drop_path,
        )
        encoder = ImageEncoder(backbone, vit_dim, "timm")
    elif name == "monai_densenet121":
        from monai.networks.nets import DenseNet121

        net = DenseNet121(spatial_dims=2, in_channels=1, out_channels=1)
        encoder = ImageEncoder(nn.Sequential(net.features, nn.ReLU()), 1024, "monai")
    else:
        kwargs = {"pretrained": False, "in_chans": 1, "num_classes": 0}
        try:
            try:  # ViT-like models are built for the input size
                backbone = timm.create_model(name, img_size=image_size, **kwargs)
            except TypeError:
                backbone = timm.create_model(name, **kwargs)
        except RuntimeError as err:
            raise ValueError(
                f"model.encoder={name!r} is not a timm model; use one of {ENCODERS} or a "
                "timm model name (timm.list_models())."
            ) from err
        encoder = ImageEncoder(backbone, int(backbone.num_features), "timm")
    if pretrained:
        load_state(encoder.backbone, pretrained, what="model.encoder_pretrained")
    return encoder


# ---------------------------------------------------------------------------- text side
def report_recipe(vocab_size: int = 1000) -> core_tokenizers.TokenizerRecipe:
    """The report tokenizer's recipe: WordPiece, ``[PAD] [BOS] [EOS] [UNK]`` as ids 0..3."""
    return core_tokenizers.TokenizerRecipe(
        "wordpiece",
        vocab_size,
        special_tokens=(PAD, BOS, EOS, UNK),
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
    )


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1000) -> PreTrainedTokenizerBase:
    """A report tokenizer learned from ``texts`` (deterministic; see :func:`report_recipe`)."""
    return core_tokenizers.train_tokenizer(texts, report_recipe(vocab_size))


def cached_report_tokenizer(
    texts: Iterable[str], vocab_size: int, cache_dir: str | Path | None = None
) -> PreTrainedTokenizerBase:
    """:func:`train_tokenizer`, kept in the app's cache (keyed by recipe and texts)."""
    return core_tokenizers.cached_tokenizer(
        texts, report_recipe(vocab_size), app=APP, cache_dir=cache_dir
    )


def load_report_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """A tokenizer from a local ``tokenizer.json`` file or folder (``model.tokenizer``)."""
    try:
        return core_tokenizers.load_tokenizer(path, report_recipe())
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"model.tokenizer: {err} Leave it empty to train one on the training reports."
        ) from err


def encode_reports(
    tok: PreTrainedTokenizerBase, texts: Sequence[str], max_tokens: int
) -> tuple[Tensor, Tensor]:
    """``[BOS] report [EOS]`` ids (at most ``max_tokens``) and attention mask, right-padded."""
    rows = [
        [
            tok.bos_token_id,
            *tok(t, add_special_tokens=False).input_ids[: max_tokens - 2],
            tok.eos_token_id,
        ]
        for t in texts
    ]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


def decode_reports(tok: PreTrainedTokenizerBase, ids: Tensor) -> list[str]:
    """Generated ids -> normalised report texts (each cut at its first EOS)."""
    texts = []
    for row in ids.tolist():
        if tok.eos_token_id in row:
            row = row[: row.index(tok.eos_token_id)]
        texts.append(normalise_report(tok.decode(row, skip_special_tokens=True)))
    return texts


def build_decoder(
    vocab_size: int,
    pretrained: str | None = None,
    hidden_size: int = 128,
    layers: int = 2,
    heads: int = 4,
    max_positions: int = 256,
) -> PreTrainedModel:
    """A causal LM: a small Llama-style model from a config, or a local checkpoint folder."""
    if pretrained:
        folder = Path(pretrained)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"model.decoder_pretrained {str(folder)!r} is not a folder holding a causal-LM "
                "checkpoint (config.json + weights); no hub downloads are made."
            )
        return AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


# ---------------------------------------------------------------------------- models
class ReportGenerator(nn.Module):
    """Image encoder -> projected visual prefix -> causal decoder.

    Token layout of a training sequence: ``[prefix tokens][BOS] w1 ... wn [EOS] [PAD]...``;
    the decoder predicts ``w1 .. wn, EOS`` from the prefix and the preceding words.
    """

    def __init__(
        self, encoder: ImageEncoder, decoder: PreTrainedModel, num_labels: int = 14
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        width = decoder.get_input_embeddings().embedding_dim
        self.projector = nn.Sequential(nn.Linear(encoder.out_dim, width), nn.LayerNorm(width))
        # Auxiliary head: predicts the report's 14 labels from the pooled image tokens.
        self.label_head = nn.Linear(encoder.out_dim, num_labels)

    def prefix(self, images: Tensor) -> Tensor:
        """Visual prefix ``(B, N, width)`` of a batch of images."""
        return self.projector(self.encoder(images))

    def forward(
        self,
        images: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor,
        return_label_logits: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Next-token logits ``(B, L-1, V)`` for the targets ``input_ids[:, 1:]``.

        With ``return_label_logits`` also the auxiliary label logits ``(B, 14)``.
        """
        tokens = self.encoder(images)
        prefix = self.projector(tokens)
        embeds = torch.cat([prefix, self.decoder.get_input_embeddings()(input_ids)], dim=1)
        ones = attention_mask.new_ones(prefix.shape[:2])
        mask = torch.cat([ones, attention_mask], dim=1)
        logits = self.decoder(inputs_embeds=embeds, attention_mask=mask).logits
        logits = logits[:, prefix.shape[1] : -1]
        if return_label_logits:
            return logits, self.label_head(tokens.mean(dim=1))
        return logits

    def sequence_logprobs(
        self, images: Tensor, input_ids: Tensor, attention_mask: Tensor
    ) -> Tensor:
        """Sum over each report's tokens of ``log p(token | image, previous)`` -> ``(B,)``."""
        logits = self(images, input_ids, attention_mask).float()
        targets = input_ids[:, 1:]
        logp = torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).squeeze(-1)
        return (logp * attention_mask[:, 1:].to(logp.dtype)).sum(-1)

    @torch.no_grad()
    def generate(
        self,
        images: Tensor,
        bos_token_id: int,
        eos_token_id: int,
        pad_token_id: int,
        max_new_tokens: int = 96,
        num_beams: int = 3,
        no_repeat_ngram_size: int = 3,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        num_return_sequences: int = 1,
    ) -> Tensor:
        """Generated token ids ``(B * num_return_sequences, T)`` (after BOS; EOS/PAD-ended).

        Beam search by default; ``do_sample=True`` samples (``temperature``, ``top_p``).
        """
        prefix = self.prefix(images)
        bos = torch.full((images.shape[0], 1), bos_token_id, device=images.device)
        embeds = torch.cat([prefix, self.decoder.get_input_embeddings()(bos)], dim=1)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=images.device)
        kwargs: dict[str, Any] = {
            "inputs_embeds": embeds,
            "attention_mask": mask,
            "max_new_tokens": max_new_tokens,
            "eos_token_id": eos_token_id,
            "pad_token_id": pad_token_id,
            "bos_token_id": bos_token_id,
            "num_return_sequences": num_return_sequences,
        }
        if no_repeat_ngram_size:
            kwargs["no_repeat_ngram_size"] = no_repeat_ngram_size
        if do_sample:
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
            kwargs["num_beams"] = 1
        else:
            kwargs.update(do_sample=False, num_beams=num_beams)
            if num_beams > 1:
                kwargs["early_stopping"] = True
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*no_repeat_ngram_size.*")
            warnings.filterwarnings("ignore", message=".*generation flags are not valid.*")
            return self.decoder.generate(**kwargs)


class CxrClassifier(nn.Module):
    """Image encoder, mean-pooled tokens, linear ``head`` over the 14 observations."""

    def __init__(self, encoder: ImageEncoder, num_labels: int = 14) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.out_dim, num_labels)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.encoder(images).mean(dim=1))
