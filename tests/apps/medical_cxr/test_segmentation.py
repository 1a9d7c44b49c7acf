"""SAM lung-field segmentation: SAM's own decoder/forward as the reference, LoRA placement,
a tiny overfit, Dice against the closed form, the base options, and the recipe end to end.
(The box prompts are tested in test_lung_prompts.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from apps.medical_cxr import data as data_mod
from apps.medical_cxr.lung_prompts import prompt_targets
from apps.medical_cxr.phantom import render_phantom
from apps.medical_cxr.segmentation import SegmentationModule, decode_masks
from apps.medical_cxr.train import DEFAULT_CONFIG, main
from core.adapters import LoraConfig

SEG_CONFIG = DEFAULT_CONFIG.parent / "segmentation.yaml"
TINY = {
    "sam_image_size": 64,
    "sam_patch_size": 8,
    "encoder_dim": 32,
    "encoder_depth": 2,
    "encoder_heads": 2,
    "prompt_dim": 32,
    "decoder_depth": 1,
    "decoder_heads": 2,
    "decoder_mlp_dim": 64,
}
ENCODER_LINEARS = r"image_encoder\.blocks\.\d+\.(attn\.qkv|mlp\.lin[12])"


def lora() -> LoraConfig:
    return LoraConfig(r=4, alpha=8.0, target_modules=ENCODER_LINEARS)


def phantom_batch(n: int = 4, size: int = 32) -> dict:
    pairs = [render_phantom({}, f"seg{i}", size) for i in range(n)]
    return {
        "image": torch.from_numpy(np.stack([p[0] for p in pairs]))[:, None],
        "mask": torch.from_numpy(np.stack([p[1] for p in pairs])),
        "study_id": [f"seg{i}" for i in range(n)],
    }


def closed_form_dice(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean over images of 2|A and B| / (|A| + |B|) (1 for two empty masks)."""
    scores = []
    for p, t in zip(pred.astype(bool), true.astype(bool), strict=True):
        total = p.sum() + t.sum()
        scores.append(1.0 if total == 0 else 2.0 * (p & t).sum() / total)
    return float(np.mean(scores))


# ---------------------------------------------------------------------------- network
def test_shapes_and_sam_reference():
    torch.manual_seed(0)
    module = SegmentationModule(**TINY).eval()
    batch = phantom_batch(2)
    _, boxes = prompt_targets(batch["mask"], "lung_boxes")
    assert module.preprocess(batch["image"]).shape == (2, 3, 64, 64)
    with torch.no_grad():
        logits = module(batch["image"], boxes)
        unprompted = module(batch["image"])
    assert logits.shape == (2, 2, 32, 32) and unprompted.shape == (2, 1, 32, 32)
    sam = module.model
    # Reference 1: SAM's own MaskDecoder, one image at a time (it repeats one embedding).
    with torch.no_grad():
        emb = sam.image_encoder(module.preprocess(batch["image"]))
        sparse, dense = sam.prompt_encoder(points=None, boxes=boxes.reshape(-1, 4) * 2, masks=None)
        pe = sam.prompt_encoder.get_dense_pe()
        ours, iou = decode_masks(sam.mask_decoder, emb.repeat_interleave(2, 0), pe, sparse, dense)
        for i in range(2):
            ref, ref_iou = sam.mask_decoder(
                emb[i : i + 1], pe, sparse[2 * i : 2 * i + 2], dense[2 * i : 2 * i + 2], False
            )
            torch.testing.assert_close(ours[2 * i : 2 * i + 2], ref, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(iou[2 * i : 2 * i + 2], ref_iou, atol=1e-5, rtol=1e-4)
    # Reference 2: Sam.forward (its own preprocessing) on the 0..255 image at SAM's input size.
    big = F.interpolate(batch["image"], (64, 64), mode="bilinear", align_corners=False)
    inputs = [
        {"image": big[i].expand(3, -1, -1) * 255, "original_size": (64, 64), "boxes": boxes[i] * 2}
        for i in range(2)
    ]
    outputs = sam(inputs, multimask_output=False)
    for i, out in enumerate(outputs):
        expected = F.interpolate(out["low_res_logits"], (32, 32), mode="bilinear")
        torch.testing.assert_close(logits[i], expected[:, 0], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="boxes must be"):
        module(batch["image"], boxes[:, 0])
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        module(batch["image"].expand(-1, 3, -1, -1))


def test_lora_on_the_encoder_and_only_adapters_and_decoder_train():
    torch.manual_seed(0)
    module = SegmentationModule(**TINY, adapter=lora())
    names = dict(module.model.named_modules())
    for block in range(TINY["encoder_depth"]):
        for layer in ("attn.qkv", "mlp.lin1", "mlp.lin2"):
            assert hasattr(names[f"image_encoder.blocks.{block}.{layer}"], "base_layer"), layer
    assert not any("lora" in n for n in names if not n.startswith("image_encoder"))
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert trainable and all(
        n.startswith("mask_decoder.") or ("image_encoder." in n and "lora" in n) for n in trainable
    )
    assert any("lora" in n for n in trainable)
    assert {n for n in trainable if n.startswith("mask_decoder.")} == {
        f"mask_decoder.{n}" for n, _ in module.model.mask_decoder.named_parameters()
    }
    # One optimisation step moves nothing outside the adapters and the decoder.
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.1)
    module.shared_step(phantom_batch(2), "train")["loss"].backward()
    opt.step()
    for n, p in module.model.named_parameters():
        if n not in trainable:
            assert torch.equal(p, before[n]), n
    assert any(not torch.equal(p, before[n]) for n, p in module.model.named_parameters())


def test_overfit_a_tiny_batch():
    torch.manual_seed(0)
    module = SegmentationModule(**TINY, adapter=lora(), box_jitter=0.0)
    batch = phantom_batch(4)
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=3e-3)
    module.eval()
    with torch.no_grad():
        start = module.shared_step(batch, "val")
    module.train()
    for _ in range(40):
        loss = module.shared_step(batch, "train")["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    module.eval()
    with torch.no_grad():
        end = module.shared_step(batch, "val")
    assert end["loss"] < 0.6 * start["loss"]
    assert start["dice"] < 0.5 and end["dice"] > 0.8


def test_logged_dice_is_the_closed_form():
    torch.manual_seed(0)
    module = SegmentationModule(**TINY).eval()
    batch = phantom_batch(3)
    with torch.no_grad():
        out = module.shared_step(batch, "test")
        pred = module.predict_field(
            module(batch["image"], prompt_targets(batch["mask"], "lung_boxes")[1])
        )
    masks = batch["mask"].numpy()
    assert out["dice"] == pytest.approx(closed_form_dice(pred.numpy(), masks), abs=1e-6)
    _, boxes = prompt_targets(batch["mask"], "lung_boxes")
    filled = np.zeros_like(masks)
    for b, rows in enumerate(boxes.int().tolist()):
        for x0, y0, x1, y1 in rows:
            filled[b, y0 : y1 + 1, x0 : x1 + 1] = 1
    assert out["box_dice"] == pytest.approx(closed_form_dice(filled, masks), abs=1e-6)
    assert 0.7 < out["box_dice"] < 1.0  # ellipse-like lungs fill most of their boxes
    predicted = module.shared_step(batch, "predict")
    assert predicted["mask"].shape == (3, 32, 32) and predicted["study_id"] == batch["study_id"]


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"model\.prompt"):
        SegmentationModule(**TINY, prompt="points")
    with pytest.raises(ValueError, match=r"model\.box_jitter"):
        SegmentationModule(**TINY, box_jitter=0.7)
    with pytest.raises(ValueError, match="multiple of"):
        SegmentationModule(**{**TINY, "sam_image_size": 60})
    with pytest.raises(FileNotFoundError, match=r"model\.pretrained"):
        SegmentationModule(pretrained=str(tmp_path / "sam_vit_b.pth"))
    with pytest.raises(ValueError, match=r"model\.sam_type"):
        SegmentationModule(pretrained=str(tmp_path / "x.pth"), sam_type="vit_s")
    module = SegmentationModule(**TINY)
    batch = phantom_batch(1)
    del batch["mask"]
    with pytest.raises(ValueError, match=r"data\.source=embedded"):
        module.shared_step(batch, "val")


# ---------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_segmentation_recipe_end_to_end(monkeypatch, embedded_studies, tmp_path):
    monkeypatch.setattr(data_mod, "load_embedded", lambda *a, **k: list(embedded_studies))
    arch = [x for k, v in TINY.items() for x in (f"--model.init_args.{k}", str(v))]
    cli = main(
        ["fit", "--config", str(SEG_CONFIG), "--trainer.max_epochs", "2", *arch,
         "--model.init_args.adapter.init_args.r", "4",
         "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
         "--data.max_studies", "16", "--data.image_size", "32", "--data.batch_size", "8",
         "--data.cache_dir", str(tmp_path / "cache"),
         "--trainer.default_root_dir", str(tmp_path / "runs")]
    )  # fmt: skip
    assert isinstance(cli.model, SegmentationModule) and cli.model.prompt == "lung_boxes"
    cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best")
    run_dir = Path(cli.trainer.log_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("val/dice", "val/box_dice"):
        assert 0.0 <= metrics["fit"][key] <= 1.0
    assert 0.0 <= metrics["test"]["test/dice"] <= 1.0 and 0.7 < metrics["test"]["test/box_dice"] < 1
    adapter = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["modules_to_save"] == ["mask_decoder"]
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
