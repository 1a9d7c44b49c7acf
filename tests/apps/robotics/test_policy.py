"""The encoder and the policy (apps/robotics/model.py, apps/robotics/policy.py).

Pixels and cached trunk features give the same output; FiLM lets the instruction move the
keypoints; the text tower is cached, frozen and never saved; adapters attach to the image
tower's top with exactly the adapter and the new layers trainable; ``predict_chunk`` speaks
env units. A fake text tower and a randomly initialised image tower keep this fast; one test
loads the real pretrained towers.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from apps.robotics.model import (
    TextEmbedder,
    VisionLanguageEncoder,
    count_parameters,
    fake_text_tower,
)
from apps.robotics.policy import NEW_MODULES, VLAPolicy, adapter_config

TEXT_DIM, CHUNK = 16, 4


class StandInNormalizer:
    """The interface of apps.robotics.normalize.Normalizer: proprio in 0..96, actions +-40."""

    def normalize_state(self, state):
        return (state - 48.0) / 48.0

    def normalize_action(self, action):
        return np.clip(action / 40.0, -1.0, 1.0)

    def denormalize_action(self, action):
        return action * 40.0


@pytest.fixture(scope="module")
def tower():
    return VisionLanguageEncoder.build_image_tower(pretrained=False, trunk_split=2, top_blocks=1)


def make_encoder(tower, **kwargs) -> VisionLanguageEncoder:
    torch.manual_seed(0)
    options = {"text_tower": fake_text_tower(TEXT_DIM), "num_keypoints": 8, "feature_dim": 32}
    return VisionLanguageEncoder(image_tower=copy.deepcopy(tower), **{**options, **kwargs})


def make_policy(tower, **kwargs) -> VLAPolicy:
    options = {"chunk_size": CHUNK, "normalizer": StandInNormalizer(), "finetune": "top"}
    return VLAPolicy(encoder=make_encoder(tower), **{**options, **kwargs})


def pixels(n: int = 3, size: int = 48, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def batch(n: int = 3) -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "image": pixels(n),
        "proprio": torch.rand(n, 2, generator=g) * 2 - 1,
        "instruction": ["push the block to the red target", "", "push the block to the red target"][
            :n
        ],
        "action": torch.rand(n, CHUNK, 2, generator=g) * 2 - 1,
        "action_pad": torch.zeros(n, CHUNK, dtype=torch.bool),
    }


# ----------------------------------------------------------------------------- encoder
def test_attention_pooling_starts_as_the_sentence_encoders_mean_pooling():
    from apps.robotics.model import AttentionPool

    g = torch.Generator().manual_seed(0)
    states, mask = torch.randn(3, 5, 8, generator=g), torch.ones(3, 5, dtype=torch.bool)
    mask[1, 3:] = False
    pool = AttentionPool(8, heads=2)
    mean = torch.stack([states[i, mask[i]].mean(0) for i in range(3)])
    torch.testing.assert_close(pool(states, mask), torch.nn.functional.normalize(mean, dim=-1))
    with torch.no_grad():
        pool.query[0, 0] = 50.0  # head 0 now looks at the token with the largest first entry
    out = pool(states, mask)
    top = states[0, mask[0], 0].argmax()
    head0 = torch.nn.functional.normalize(out[0], dim=-1)[:4]
    assert torch.allclose(head0 / head0.norm(), states[0, top, :4] / states[0, top, :4].norm(),
                          atol=1e-3)  # fmt: skip
    assert not torch.isnan(pool(states, mask)).any()


def test_pixels_and_cached_trunk_features_give_the_same_output(tower):
    encoder = make_encoder(tower).eval()
    images = pixels()
    proprio = torch.zeros(3, 2)
    texts = ["a", "b", ""]
    out = encoder(images, proprio, texts)
    assert out.shape == (3, 32)
    trunk = encoder.trunk_features(images)
    assert trunk.shape == (3, encoder.trunk_channels, 12, 12)  # stride 4 at 48 px
    assert encoder.feature_map(images).shape == (3, encoder.channels, 6, 6)
    torch.testing.assert_close(encoder(trunk, proprio, texts), out)
    # float16 caches (half the memory) give nearly the same features.
    torch.testing.assert_close(encoder(trunk.half(), proprio, texts), out, atol=5e-3, rtol=5e-3)
    # uint8 pixels and float pixels in [0, 1] are the same image.
    torch.testing.assert_close(encoder(images.float() / 255, proprio, texts), out)
    with pytest.raises(ValueError, match="channels"):
        encoder(torch.zeros(3, 5, 12, 12), proprio, texts)


def test_the_top_is_cut_short_and_batch_norms_stay_in_eval(tower):
    encoder = make_encoder(tower)
    assert len(encoder.image.top) == 1 and encoder.channels == 40
    encoder.train()
    norms = [m for m in encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and not any(m.training for m in norms)
    with pytest.raises(ValueError, match="top_blocks"):
        VisionLanguageEncoder.build_image_tower(False, trunk_split=2, top_blocks=9)


def test_no_top_uses_the_cached_trunk_map_itself():
    """top_blocks=0: the trunk's map (split 3: 40 channels at stride 8) is the image feature,
    the same from pixels and from cached features, and no adapter can attach."""
    bare = VisionLanguageEncoder.build_image_tower(pretrained=False, trunk_split=3, top_blocks=0)
    encoder = make_encoder(bare).eval()
    assert len(encoder.image.top) == 0 and encoder.channels == encoder.trunk_channels == 40
    images, proprio, texts = pixels(), torch.zeros(3, 2), ["a", "b", ""]
    trunk = encoder.trunk_features(images)
    torch.testing.assert_close(encoder.feature_map(images), trunk)
    with pytest.raises(ValueError, match="channels"):  # neither pixels nor trunk features
        encoder.feature_map(torch.zeros(3, 5, 12, 12))
    torch.testing.assert_close(
        encoder(trunk.half(), proprio, texts), encoder(images, proprio, texts), atol=5e-3, rtol=5e-3
    )
    policy = VLAPolicy(encoder=make_encoder(bare), chunk_size=CHUNK, finetune="frozen")
    assert trainable_names(policy) == new_layer_names(policy)
    with pytest.raises(ValueError, match="top_blocks=0 there is no top"):
        VLAPolicy(encoder=make_encoder(bare), chunk_size=CHUNK, finetune="adapter", adapter="lora")


def test_film_lets_the_instruction_move_the_keypoints(tower):
    encoder = make_encoder(tower).eval()
    images = pixels(2)
    red, blue = encoder.embed(["red", "red"]), encoder.embed(["blue", "blue"])
    # FiLM starts at the identity: the map, hence the keypoints, ignore the instruction ...
    torch.testing.assert_close(
        encoder.keypoints_of(images, red), encoder.keypoints_of(images, blue)
    )
    # ... until it learns a modulation.
    torch.nn.init.normal_(encoder.film.proj.weight, std=0.5)
    kp_red, kp_blue = encoder.keypoints_of(images, red), encoder.keypoints_of(images, blue)
    assert kp_red.shape == (2, 8, 2) and kp_red.abs().max() <= 1.0
    assert (kp_red - kp_blue).abs().max() > 1e-3
    proprio = torch.zeros(2, 2)
    assert not torch.allclose(
        encoder(images, proprio, ["red"] * 2), encoder(images, proprio, ["blue"] * 2)
    )


def test_text_embeddings_are_cached_frozen_and_not_saved(tower):
    calls = []
    fake = fake_text_tower(TEXT_DIM)

    def counting(texts):
        calls.append(list(texts))
        return fake(texts)

    embedder = TextEmbedder(counting)
    assert embedder.dim == TEXT_DIM  # probed once with ""
    calls.clear()
    first = embedder(["go left", "", "go left"])
    assert first.shape == (3, TEXT_DIM) and torch.equal(first[0], first[2])
    assert calls == [["", "go left"]]
    embedder(["", "go left"] * 10)
    assert len(calls) == 1  # all cached
    with pytest.raises(TypeError, match="list of strings"):
        embedder("go left")

    encoder = make_encoder(tower, text_tower=embedder)
    assert encoder.text is embedder
    names = [n for n, _ in encoder.named_parameters()] + list(encoder.state_dict())
    # the tower is neither trained nor saved; only the learned pooling over its tokens is
    assert not any(n.split(".")[0] == "text" for n in names)
    assert {n for n in names if n.startswith("text_pool")} == {"text_pool.query"}


# ----------------------------------------------------------------------------- finetune modes
def trainable_names(policy: VLAPolicy) -> set[str]:
    return {n for n, p in policy.named_parameters() if p.requires_grad}


def new_layer_names(policy: VLAPolicy) -> set[str]:
    return {f"{m}.{n}" for m in NEW_MODULES for n, _ in policy.get_submodule(m).named_parameters()}


@pytest.mark.parametrize("method", ["lora", "dora", "ssf"])
def test_adapters_attach_to_the_top_and_only_they_and_the_new_layers_train(tower, method, tmp_path):
    from core.adapters import adapter_layers, save_adapter

    reference = make_policy(tower, finetune="frozen").eval()
    policy = make_policy(tower, finetune="adapter", adapter=method).eval()
    targets = policy.adapter_targets(method)
    assert targets and all(t.startswith("encoder.image.top.") for t in targets)
    assert {n for n, _ in adapter_layers(policy)} == set(targets)
    kinds = {t.rsplit(".", 1)[-1] for t in targets}
    assert kinds == (
        {"conv_pw", "conv_dw", "conv_pwl"} if method == "ssf" else {"conv_pw", "conv_pwl"}
    )
    if method == "dora":
        assert any("lora_magnitude_vector" in n for n in trainable_names(policy))

    adapter = {n for n in trainable_names(policy) if ".adapters.default." in n}
    assert adapter and trainable_names(policy) == adapter | new_layer_names(policy)
    counts = policy.parameter_counts()
    assert counts["adapter"] == sum(p.numel() for n, p in policy.named_parameters() if n in adapter)
    assert counts["top"] == 0 and counts["trainable"] == counts["adapter"] + counts["new"]

    # A fresh adapter leaves the network's output unchanged.
    b = batch()
    with torch.no_grad():
        torch.testing.assert_close(
            policy.features(b["image"], b["proprio"], b["instruction"]),
            reference.features(b["image"], b["proprio"], b["instruction"]),
            atol=1e-5,
            rtol=1e-5,
        )
    # Gradients reach exactly the trainable set.
    policy.train()
    policy.loss(b).backward()
    with_grad = {n for n, p in policy.named_parameters() if p.grad is not None}
    assert with_grad <= trainable_names(policy)
    assert any(".adapters.default." in n for n in with_grad)

    # The saved adapter holds the adapter and the new layers, never the text tower.
    save_adapter(policy, tmp_path / method)
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / method / "adapter_model.safetensors")).keys()
    assert any("head." in k for k in keys) and any("encoder.film" in k for k in keys)
    assert any("text_pool.query" in k for k in keys)  # the learned pooling: a new layer
    assert not any(".text." in k or "text.tower" in k or "trunk" in k for k in keys)


def test_bottleneck_needs_linear_layers_the_conv_top_lacks(tower):
    from core.adapters import get_method

    conv_ok = get_method("bottleneck").supports(torch.nn.Conv2d(4, 4, 1))
    if conv_ok:  # core learnt conv bottlenecks: then they attach like the others
        policy = make_policy(tower, finetune="adapter", adapter="bottleneck")
        assert policy.parameter_counts()["adapter"] > 0
    else:
        with pytest.raises(ValueError, match="bottleneck adapters cannot attach"):
            make_policy(tower, finetune="adapter", adapter="bottleneck")


def test_custom_adapter_config_is_completed(tower):
    from core.adapters import LoraConfig

    config = LoraConfig(r=2, alpha=4.0)
    policy = make_policy(tower, finetune="adapter", adapter=config)
    assert config.target_modules is None  # the caller's config is not mutated
    done = adapter_config(config, policy.encoder.image.top, "encoder.image.top.")
    assert done.r == 2 and done.target_modules == policy.adapter_targets("lora")
    assert done.modules_to_save == list(NEW_MODULES)


def test_top_and_frozen_modes(tower):
    top = make_policy(tower, finetune="top")
    top_names = {f"encoder.image.top.{n}" for n, _ in top.encoder.image.top.named_parameters()}
    assert trainable_names(top) == top_names | new_layer_names(top)
    frozen = make_policy(tower, finetune="frozen")
    assert trainable_names(frozen) == new_layer_names(frozen)
    assert top.parameter_counts()["top"] == count_parameters(top.encoder.image.top)
    assert frozen.parameter_counts()["top"] == 0
    with pytest.raises(ValueError, match="finetune"):
        make_policy(tower, finetune="all")
    with pytest.raises(KeyError, match="instruction"):
        top.loss({k: v for k, v in batch().items() if k != "instruction"})


# ----------------------------------------------------------------------------- the protocol
@pytest.mark.parametrize("head", ["l1_chunk", "tokens", "diffusion"])
def test_predict_chunk_returns_env_units(tower, head):
    policy = make_policy(tower, head=head)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 48, 48, 3), dtype=np.uint8)
    proprio = rng.uniform(0, 96, (5, 2)).astype(np.float32)
    texts = ["push the block to the red target"] * 4 + [""]
    out = policy.predict_chunk(images, proprio, texts)
    assert out.shape == (5, CHUNK, 2) and out.dtype == np.float32
    assert np.abs(out).max() <= 40.0 + 1e-4
    with torch.no_grad():
        feats = policy.features(
            torch.from_numpy(images).permute(0, 3, 1, 2),
            torch.from_numpy((proprio - 48) / 48),
            texts,
        )
        normalised = policy.head.predict(feats).numpy()
    np.testing.assert_allclose(out, normalised * 40.0, rtol=1e-5, atol=1e-4)
    assert policy.training  # restored after predicting
    with pytest.raises(ValueError, match="uint8"):
        policy.predict_chunk(images.astype(np.float32), proprio, texts)
    with pytest.raises(ValueError, match="5 strings"):
        policy.predict_chunk(images, proprio, texts[:2])
    policy.normalizer = None
    with pytest.raises(ValueError, match="Normalizer"):
        policy.predict_chunk(images, proprio, texts)


def test_real_pretrained_towers_end_to_end():
    """The one test that loads MiniLM and the ImageNet EfficientNet weights."""
    policy = VLAPolicy(head="l1_chunk", chunk_size=CHUNK, normalizer=StandInNormalizer())
    assert policy.encoder.text_dim == 384
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 96, 96, 3), dtype=np.uint8)
    proprio = np.array([[10.0, 20.0], [50.0, 80.0]], dtype=np.float32)
    out = policy.predict_chunk(images, proprio, ["push the block to the red target", ""])
    assert out.shape == (2, CHUNK, 2) and np.isfinite(out).all()
    assert policy.encoder.feature_map(torch.from_numpy(images).permute(0, 3, 1, 2)).shape == (
        2,
        40,
        12,
        12,
    )
    red, blue = policy.encoder.embed(
        ["push the block to the red target", "push the block to the blue target"]
    )
    assert 0.5 < float(red @ blue) < 0.999  # related, distinct sentences
    counts = policy.parameter_counts()
    assert counts["adapter"] > 0 and counts["top"] == 0
