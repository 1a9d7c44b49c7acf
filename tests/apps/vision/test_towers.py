import pytest
import torch

from apps.vision.towers import build_open_clip


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
