"""Lung-field segmentation with SAM (segment-anything) and adapters, Dice via MONAI.

The embedded phantoms come with their lung-field mask (``batch["mask"]``, the union of the
two lung fields). :class:`SegmentationModule` segments it with a Segment Anything model:

* **Network.** No checkpoint can be downloaded here, so by default a *small* SAM is built
  from ``segment_anything.modeling`` (:func:`build_small_sam`: a 4-block ViT image encoder on
  128x128 inputs with 8x8 patches, SAM's prompt encoder and its two-way-transformer mask
  decoder). It starts from random weights. ``sam_checkpoint`` (+ ``sam_type`` vit_b/l/h)
  loads a real local SAM checkpoint through ``segment_anything.sam_model_registry`` instead.
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

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from scipy import ndimage
from torch import Tensor, nn

from core.adapters import AdapterConfig
from core.training import FineTuneModule, Regularizer

from .metrics import dice_score

PROMPTS = ("lung_boxes", "box", "none")
SAM_TYPES = ("vit_b", "vit_l", "vit_h")


def build_small_sam(
    image_size: int = 128,
    patch_size: int = 8,
    encoder_dim: int = 128,
    encoder_depth: int = 4,
    encoder_heads: int = 4,
    prompt_dim: int = 64,
    decoder_depth: int = 2,
    decoder_heads: int = 4,
    decoder_mlp_dim: int = 256,
) -> nn.Module:
    """A small, randomly initialised SAM made of ``segment_anything``'s building blocks.

    Same layout as ``segment_anything.build_sam`` (ViT encoder with relative positions and a
    conv neck, prompt encoder, two-way-transformer mask decoder with 3+1 mask tokens), scaled
    down so it trains on a CPU: every encoder block attends globally (``window_size=0``; the
    token grid is only ``image_size / patch_size`` wide).
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
            f"model.sam_checkpoint {str(path)!r} does not exist; pass the path of a local SAM "
            f"checkpoint matching model.sam_type={sam_type!r} (e.g. sam_vit_b_01ec64.pth), or "
            "leave it empty to build the small SAM."
        )
    try:
        return sam_model_registry[sam_type](checkpoint=str(path))
    except RuntimeError as err:
        raise ValueError(
            f"model.sam_checkpoint {str(path)!r} does not fit a SAM {sam_type} ({err}); set "
            "model.sam_type to the checkpoint's size."
        ) from err


# ---------------------------------------------------------------------------- prompts
def lung_components(mask: np.ndarray) -> list[np.ndarray]:
    """The two lung fields of a binary mask ``(H, W)``, image-left first.

    The two largest 8-connected components; a mask with fewer than two is split at the
    image's vertical midline instead (either half may then be empty).
    """
    labels, count = ndimage.label(mask > 0, structure=np.ones((3, 3), dtype=int))
    if count >= 2:
        sizes = np.bincount(labels.ravel())[1:]
        keep = np.argsort(-sizes, kind="stable")[:2] + 1
        parts = [labels == k for k in keep]
        parts.sort(key=lambda p: float(np.nonzero(p)[1].mean()))
        return parts
    field = mask > 0
    half = mask.shape[1] // 2
    left, right = field.copy(), field.copy()
    left[:, half:] = False
    right[:, :half] = False
    return [left, right]


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight box ``(x0, y0, x1, y1)`` of a binary mask, max coordinates inclusive (SAM's
    ``batched_mask_to_box`` convention); ``(0, 0, 0, 0)`` for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return (0, 0, 0, 0)
    return (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))


def prompt_targets(masks: Tensor, prompt: str) -> tuple[Tensor, Tensor | None]:
    """Per-prompt targets ``(B, K, H, W)`` float and boxes ``(B, K, 4)`` (mask pixels, max
    inclusive) for a batch of lung-field masks ``(B, H, W)``; boxes are ``None`` for
    ``prompt="none"`` (one target: the whole field)."""
    if prompt not in PROMPTS:
        raise ValueError(f"model.prompt={prompt!r} must be one of {PROMPTS}.")
    field = (masks > 0).cpu().numpy()
    if prompt == "none":
        return torch.from_numpy(field[:, None].astype(np.float32)), None
    targets, boxes = [], []
    for m in field:
        parts = lung_components(m) if prompt == "lung_boxes" else [m]
        targets.append(np.stack(parts))
        boxes.append([mask_box(p) for p in parts])
    return (
        torch.from_numpy(np.stack(targets).astype(np.float32)),
        torch.tensor(boxes, dtype=torch.float32),
    )


def jitter_boxes(boxes: Tensor, size: int, fraction: float, generator: Any = None) -> Tensor:
    """Widen each box side outwards by a uniform random 0..``fraction * size`` pixels (MedSAM's
    training perturbation), clipped to the image ``[0, size - 1]``."""
    if fraction <= 0:
        return boxes
    shift = torch.rand(boxes.shape, generator=generator) * fraction * size
    sign = torch.tensor([-1.0, -1.0, 1.0, 1.0])
    return (boxes + sign * shift.to(boxes)).clamp(0, size - 1)


def fill_boxes(boxes: Tensor, size: int) -> Tensor:
    """The union of the boxes ``(B, K, 4)`` (pixels, max inclusive) filled, ``(B, size, size)``."""
    coords = torch.arange(size, dtype=boxes.dtype, device=boxes.device)
    x0, y0, x1, y1 = (boxes[..., i, None] for i in range(4))
    inside_x = (coords >= x0.round()) & (coords <= x1.round())  # (B, K, W)
    inside_y = (coords >= y0.round()) & (coords <= y1.round())  # (B, K, H)
    return (inside_y[..., :, None] & inside_x[..., None, :]).any(dim=1).to(torch.uint8)


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
        sam_checkpoint: A local SAM checkpoint (``sam_type`` says which size); empty:
            build the small SAM below from random weights.
        sam_type: ``vit_b``, ``vit_l`` or ``vit_h`` (with ``sam_checkpoint``).
        sam_image_size / sam_patch_size / encoder_dim / encoder_depth / encoder_heads /
            prompt_dim / decoder_depth / decoder_heads / decoder_mlp_dim: Shape of the small
            SAM (:func:`build_small_sam`).
        dice_weight / bce_weight: Weights of the Dice and BCE terms of the loss.
        adapter: e.g. LoRA on ``image_encoder.blocks.*.attn.qkv`` and ``mlp.lin1/lin2``.
        modules_to_save: Trained in full next to the adapter; default ``["mask_decoder"]``.
            With no adapter: only these train (``[]``: the whole SAM trains).
        regularizers / optimizer / lr_scheduler: as in :class:`core.training.FineTuneModule`
            (the loss is fixed: Dice + BCE, weighted as above).
    """

    def __init__(
        self,
        prompt: str = "lung_boxes",
        box_jitter: float = 0.05,
        sam_checkpoint: str | None = None,
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
        adapter: AdapterConfig | None = None,
        modules_to_save: list[str] | None = None,
        regularizers: list[Regularizer] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
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
        if sam_checkpoint:
            network = load_sam(sam_type, sam_checkpoint)
        else:
            network = build_small_sam(
                sam_image_size,
                sam_patch_size,
                encoder_dim,
                encoder_depth,
                encoder_heads,
                prompt_dim,
                decoder_depth,
                decoder_heads,
                decoder_mlp_dim,
            )
        super().__init__(
            model=network,
            adapter=adapter,
            modules_to_save=["mask_decoder"] if modules_to_save is None else modules_to_save,
            regularizers=regularizers,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            monitor="val/dice",
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

    def predict_field(self, logits: Tensor) -> Tensor:
        """Per-prompt logits ``(B, K, S, S)`` -> the predicted lung field ``(B, S, S)`` uint8
        (union of the prompts' masks)."""
        return (logits.amax(dim=1) > 0).to(torch.uint8)

    def shared_step(self, batch: dict[str, Any], stage: str) -> dict[str, Any]:
        if "mask" not in batch:
            raise ValueError(
                "SegmentationModule needs lung masks (batch['mask']): use data.dataset=embedded, "
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
