"""Lung-field segmentation with SAM (segment-anything) and adapters, Dice via MONAI.

The embedded phantoms come with their lung-field mask (``batch["mask"]``, the union of the
two lung fields). :class:`SegmentationModule` segments it with a Segment Anything model:

* **Network.** No checkpoint can be downloaded here, so by default a *small* SAM is built
  from ``segment_anything.modeling`` (:func:`build_small_sam`: a 4-block ViT image encoder on
  128x128 inputs with 8x8 patches, SAM's prompt encoder and its two-way-transformer mask
  decoder). It starts from random weights. ``pretrained`` (+ ``sam_type`` vit_b/l/h) loads
  a real local SAM checkpoint through ``segment_anything.sam_model_registry`` instead.
* **Prompts** (``prompt``). ``"lung_boxes"`` (default): one box per lung, from the mask's
  two largest connected components, as MedSAM prompts one box per object; the decoder
  predicts each lung and the lung field is their union. ``"box"``: one box around the
  whole lung field (it also covers the mediastinum, which the decoder must leave out).
  ``"none"``: no prompt at all (automatic segmentation). Training boxes are widened by a
  random 0..``box_jitter`` fraction of the image on each side (MedSAM's box perturbation);
  validation and test use the tight box.
* **Training.** With ``adapter`` (LoRA on the encoder's ``qkv`` and MLP linears in the
  recipe) every base weight is frozen; the adapter and ``modules_to_save`` (default: the
  mask decoder, as MedSAM trains it) are trained. Loss: MONAI ``DiceLoss`` (sigmoid) +
  binary cross-entropy, per prompt against that prompt's target (one lung, or the field).
* **Input/output.** The 1-channel image in [0, 1] is resized to SAM's input size,
  repeated to 3 channels, scaled to 0..255 and normalised with SAM's own pixel mean/std
  (``Sam.preprocess``). The decoder's low-resolution logits are resized to the mask's
  resolution, where loss and Dice are computed.
* **Metrics.** ``{val,test}/dice``: mean per-image Dice of the predicted lung field
  (:func:`.metrics.dice_score`, MONAI ``DiceMetric``), and ``{val,test}/box_dice``: the Dice
  of the prompt boxes themselves filled as masks, a trivial baseline that the prompts give
  for free (absent with ``prompt="none"``).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.training import FineTuneModule, default_loss

from .lung_prompts import PROMPTS, fill_boxes, jitter_boxes, prompt_targets
from .metrics import dice_score

SAM_TYPES = ("vit_b", "vit_l", "vit_h")


def build_small_sam(
    *,
    image_size: int,
    patch_size: int,
    encoder_dim: int,
    encoder_depth: int,
    encoder_heads: int,
    prompt_dim: int,
    decoder_depth: int,
    decoder_heads: int,
    decoder_mlp_dim: int,
) -> nn.Module:
    """A small, randomly initialised SAM made of ``segment_anything``'s building blocks.

    Same layout as ``segment_anything.build_sam`` (ViT encoder with relative positions and a
    conv neck, prompt encoder, two-way-transformer mask decoder with 3+1 mask tokens), scaled
    down so it trains on a CPU: every encoder block attends globally (``window_size=0``; the
    token grid is only ``image_size / patch_size`` wide). The shape arguments are the
    :class:`SegmentationModule` options of the same names (``sam_image_size`` and
    ``sam_patch_size`` for the first two), whose defaults give the default small SAM.
    """
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    if image_size % patch_size:
        raise ValueError(
            f"model.sam_image_size={image_size} must be a multiple of "
            f"model.sam_patch_size={patch_size}."
        )
    if encoder_dim % encoder_heads or prompt_dim % decoder_heads or prompt_dim % 8:
        raise ValueError(
            f"model.encoder_dim={encoder_dim} must be divisible by model.encoder_heads="
            f"{encoder_heads}, and model.prompt_dim={prompt_dim} by model.decoder_heads="
            f"{decoder_heads} and by 8."
        )
    grid = image_size // patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=image_size,
            patch_size=patch_size,
            in_chans=3,
            embed_dim=encoder_dim,
            depth=encoder_depth,
            num_heads=encoder_heads,
            mlp_ratio=4.0,
            out_chans=prompt_dim,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=0,
            global_attn_indexes=(),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=decoder_depth,
                embedding_dim=prompt_dim,
                mlp_dim=decoder_mlp_dim,
                num_heads=decoder_heads,
            ),
            transformer_dim=prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=prompt_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def load_sam(sam_type: str, checkpoint: str) -> nn.Module:
    """A real SAM from a local checkpoint file (``sam_vit_b_01ec64.pth`` and friends)."""
    from segment_anything import sam_model_registry

    if sam_type not in SAM_TYPES:
        raise ValueError(f"model.sam_type={sam_type!r} must be one of {SAM_TYPES}.")
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(
            f"model.pretrained {str(path)!r} does not exist; pass the path of a local SAM "
            f"checkpoint matching model.sam_type={sam_type!r} (e.g. sam_vit_b_01ec64.pth), or "
            "leave it empty to build the small SAM."
        )
    try:
        return sam_model_registry[sam_type](checkpoint=str(path))
    except RuntimeError as err:
        raise ValueError(
            f"model.pretrained {str(path)!r} does not fit a SAM {sam_type} ({err}); set "
            "model.sam_type to the checkpoint's size."
        ) from err


def decode_masks(
    decoder: nn.Module,
    image_embeddings: Tensor,
    image_pe: Tensor,
    sparse: Tensor,
    dense: Tensor,
) -> tuple[Tensor, Tensor]:
    """SAM's ``MaskDecoder.predict_masks`` for a batch of prompts with one image embedding
    each (``image_embeddings`` ``(N, C, h, w)``, row ``n`` for prompt ``n``).

    ``segment_anything`` 1.0 repeats one image's embedding for all prompts, so ``Sam.forward``
    loops over images; this runs the same layers on the whole batch at once. Returns the
    single-mask output (mask token 0) ``(N, 1, 4h, 4w)`` and its IoU prediction ``(N, 1)``.
    """
    tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([tokens.unsqueeze(0).expand(sparse.shape[0], -1, -1), sparse], dim=1)
    src = image_embeddings + dense
    pos_src = image_pe.expand(src.shape[0], -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = decoder.transformer(src, pos_src, tokens)
    iou_out, mask_out = hs[:, 0, :], hs[:, 1, :]
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper = decoder.output_hypernetworks_mlps[0](mask_out)[:, None, :]
    b, c, h, w = upscaled.shape
    masks = (hyper @ upscaled.reshape(b, c, h * w)).reshape(b, 1, h, w)
    return masks, decoder.iou_prediction_head(iou_out)[:, :1]


# ---------------------------------------------------------------------------- module
class SegmentationModule(FineTuneModule):
    """Lung-field segmentation with a (small or real) SAM and adapters; see the module doc.

    Args:
        prompt: ``"lung_boxes"`` (one box per lung), ``"box"`` (one box around the lung
            field) or ``"none"`` (no prompt).
        box_jitter: Training boxes grow outwards by up to this fraction of the image side.
        pretrained: A local SAM checkpoint (``sam_type`` says which size); empty: build the
            small SAM below from random weights.
        sam_type: ``vit_b``, ``vit_l`` or ``vit_h`` (with ``pretrained``).
        sam_image_size / sam_patch_size / encoder_dim / encoder_depth / encoder_heads /
            prompt_dim / decoder_depth / decoder_heads / decoder_mlp_dim: Shape of the small
            SAM (:func:`build_small_sam`).
        dice_weight / bce_weight: Weights of the Dice and BCE terms of the loss.
        modules_to_save: Trained in full next to the adapter; default ``["mask_decoder"]``.
            With no adapter: only these train (``[]``: the whole SAM trains).
        monitor: The metric ``ReduceLROnPlateau`` watches (default ``val/dice``).
        **kwargs: The other :class:`~core.training.FineTuneModule` options, passed through
            (``adapter``, e.g. LoRA on ``image_encoder.blocks.*.attn.qkv`` and
            ``mlp.lin1/lin2``; ``regularizers``, ``optimizer``, ...). The loss is fixed
            (Dice + BCE, weighted as above), so ``loss`` is not an option.
    """

    def __init__(
        self,
        prompt: str = "lung_boxes",
        box_jitter: float = 0.05,
        pretrained: str | None = None,
        sam_type: str = "vit_b",
        sam_image_size: int = 128,
        sam_patch_size: int = 8,
        encoder_dim: int = 128,
        encoder_depth: int = 4,
        encoder_heads: int = 4,
        prompt_dim: int = 64,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        decoder_mlp_dim: int = 256,
        dice_weight: float = 1.0,
        bce_weight: float = 1.0,
        modules_to_save: list[str] | None = None,
        monitor: str = "val/dice",
        **kwargs: Any,
    ) -> None:
        if prompt not in PROMPTS:
            raise ValueError(f"model.prompt={prompt!r} must be one of {PROMPTS}.")
        if not 0 <= box_jitter < 0.5:
            raise ValueError(f"model.box_jitter={box_jitter} must lie in [0, 0.5).")
        if dice_weight < 0 or bce_weight < 0 or dice_weight + bce_weight == 0:
            raise ValueError(
                f"model.dice_weight={dice_weight} and model.bce_weight={bce_weight} must be "
                ">= 0 and not both 0."
            )
        if pretrained:
            network = load_sam(sam_type, pretrained)
        else:
            network = build_small_sam(
                image_size=sam_image_size,
                patch_size=sam_patch_size,
                encoder_dim=encoder_dim,
                encoder_depth=encoder_depth,
                encoder_heads=encoder_heads,
                prompt_dim=prompt_dim,
                decoder_depth=decoder_depth,
                decoder_heads=decoder_heads,
                decoder_mlp_dim=decoder_mlp_dim,
            )
        super().__init__(
            model=network,
            modules_to_save=["mask_decoder"] if modules_to_save is None else modules_to_save,
            monitor=monitor,
            loss=default_loss,
            **kwargs,
        )
        from monai.losses import DiceLoss

        self.dice_loss = DiceLoss(sigmoid=True)
        self.prompt = prompt
        self.box_jitter = box_jitter
        self.dice_weight, self.bce_weight = dice_weight, bce_weight

    @property
    def input_size(self) -> int:
        """SAM's square input side (1024 for the released checkpoints)."""
        return int(self.model.image_encoder.img_size)

    def preprocess(self, images: Tensor) -> Tensor:
        """``(B, 1, S, S)`` in [0, 1] -> SAM's normalised ``(B, 3, I, I)`` input."""
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(
                f"images must be (B, 1, H, W) grey-level in [0, 1], got {tuple(images.shape)}."
            )
        size = self.input_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, (size, size), mode="bilinear", align_corners=False)
        x = images.expand(-1, 3, -1, -1) * 255.0
        return (x - self.model.pixel_mean) / self.model.pixel_std

    def forward(self, images: Tensor, boxes: Tensor | None = None) -> Tensor:
        """Mask logits ``(B, K, S, S)`` at the images' resolution ``S``.

        ``boxes``: ``(B, K, 4)`` prompts ``(x0, y0, x1, y1)`` in pixels of the ``S x S`` image
        (max inclusive); ``None``: one unprompted mask per image (``K = 1``).
        """
        sam = self.model
        size = images.shape[-1]
        embeddings = sam.image_encoder(self.preprocess(images))  # (B, C, h, w)
        batch = embeddings.shape[0]
        if boxes is None:
            per_image = 1
            sparse, dense = sam.prompt_encoder(points=None, boxes=None, masks=None)
            sparse = sparse.expand(batch, -1, -1)
            dense = dense.expand(batch, -1, -1, -1)
        else:
            if boxes.ndim != 3 or boxes.shape[0] != batch or boxes.shape[-1] != 4:
                raise ValueError(
                    f"boxes must be (B={batch}, K, 4) as (x0, y0, x1, y1), got "
                    f"{tuple(boxes.shape)}."
                )
            per_image = boxes.shape[1]
            scaled = boxes.reshape(-1, 4).to(embeddings) * (self.input_size / size)
            sparse, dense = sam.prompt_encoder(points=None, boxes=scaled, masks=None)
            embeddings = embeddings.repeat_interleave(per_image, dim=0)
        logits, _ = decode_masks(
            sam.mask_decoder, embeddings, sam.prompt_encoder.get_dense_pe(), sparse, dense
        )
        logits = F.interpolate(logits, (size, size), mode="bilinear", align_corners=False)
        return logits.reshape(batch, per_image, size, size)

    def calibration_forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """One training batch through SAM with its tight prompts (data-dependent adapter inits)."""
        return self.shared_step(batch, "predict")

    def predict_field(self, logits: Tensor) -> Tensor:
        """Per-prompt logits ``(B, K, S, S)`` -> the predicted lung field ``(B, S, S)`` uint8
        (union of the prompts' masks)."""
        return (logits.amax(dim=1) > 0).to(torch.uint8)

    def shared_step(self, batch: dict[str, Any], stage: str) -> dict[str, Any]:
        if "mask" not in batch:
            raise ValueError(
                "SegmentationModule needs lung masks (batch['mask']): use data.source=embedded, "
                "whose phantoms come with their lung-field masks."
            )
        images, masks = batch["image"], batch["mask"]
        targets, boxes = prompt_targets(masks, self.prompt)
        targets = targets.to(images)
        prompts = None
        if boxes is not None:
            # Validation/test/predict prompt with the tight box; training widens it at random.
            prompts = (
                jitter_boxes(boxes, masks.shape[-1], self.box_jitter) if stage == "train" else boxes
            )
            boxes, prompts = boxes.to(images.device), prompts.to(images.device)
        logits = self(images, prompts)
        pred = self.predict_field(logits)
        if stage == "predict":
            return {"study_id": batch["study_id"], "mask": pred.cpu()}
        flat_logits = logits.reshape(-1, 1, *logits.shape[-2:])
        flat_targets = targets.reshape(-1, 1, *targets.shape[-2:])
        dice_loss = self.dice_loss(flat_logits, flat_targets)
        bce = F.binary_cross_entropy_with_logits(flat_logits, flat_targets)
        out: dict[str, Any] = {
            "loss": self.dice_weight * dice_loss + self.bce_weight * bce,
            "dice_loss": dice_loss,
            "bce": bce,
            "dice": dice_score(pred, masks),
            "batch_size": len(images),
        }
        if boxes is not None and stage != "train":
            out["box_dice"] = dice_score(fill_boxes(boxes, masks.shape[-1]), masks)
        return out
