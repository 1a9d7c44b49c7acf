import pytest
import torch
import torch.nn.functional as F
from torch import nn

from apps.vision.alignment import AlignmentConfig
from apps.vision.model import ImageTextClassifier, build_classifier

from .conftest import TINY_MODEL


def test_classifier_head_is_scaled_zero_shot_weights():
    feats = torch.randn(4, 3, 5)
    model = ImageTextClassifier(nn.Flatten(), nn.Linear(6, 8), nn.Linear(5, 8), feats, 20.0)
    emb = F.normalize(model.text_proj(feats), dim=-1).mean(1)
    assert torch.allclose(model.head.weight, 20.0 * F.normalize(emb, dim=-1), atol=1e-6)
    x = torch.randn(2, 6)
    ref = 20.0 * F.normalize(model.image_proj(x), dim=-1) @ F.normalize(emb, dim=-1).t()
    assert torch.allclose(model(x), ref, atol=1e-5)


def test_build_classifier_embedded_is_zero_shot_and_rejects_bad_options(cache_dir):
    alignment = AlignmentConfig(
        embed_dim=TINY_MODEL["embed_dim"],
        steps=TINY_MODEL["alignment_steps"],
        max_images=TINY_MODEL["alignment_images"],
        copies=TINY_MODEL["alignment_copies"],
    )
    model = build_classifier(alignment=alignment, cache_dir=cache_dir)
    assert model.num_classes == 10 and model.head.in_features == TINY_MODEL["embed_dim"]
    expected = model.logit_scale * model.zero_shot_weights()
    assert torch.allclose(model.head.weight, expected, atol=1e-6)
    # other class names: prompt features from the text tower, a head per class
    cats = build_classifier(class_names=["cat", "dog"], alignment=alignment, cache_dir=cache_dir)
    assert cats.num_classes == 2 and cats.prompt_features.shape[:2] == (2, 8)
    with pytest.raises(ValueError, match=r"model\.backbone='resnet'"):
        build_classifier("resnet")
    with pytest.raises(ValueError, match=r"model\.pretrained='w\.pt' is for open_clip / timm"):
        build_classifier(pretrained="w.pt")


def test_build_classifier_timm_has_no_text_side(tmp_path):
    import timm

    torch.save(timm.create_model("resnet18", num_classes=0).state_dict(), tmp_path / "w.pt")
    model = build_classifier("timm:resnet18", str(tmp_path / "w.pt"), class_names=["a", "b"])
    assert model.prompt_features is None and model.text_proj is None
    assert model.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 2)
