import pytest
import torch

from apps.vision.shifts import (
    SHIFT_CLASSES,
    apply_shift,
    augment_for_alignment,
    gaussian_blur,
    render,
    shift_names,
)


def _digits(n=6):
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(n, 28, 28)
    x[:, 8:20, 12:16] = 1.0  # a vertical bar
    return (x + 0.05 * torch.rand(n, 28, 28, generator=g)).clamp(0, 1)


def test_render_shape_range_and_bad_input():
    rgb = render(_digits(), 32)
    assert rgb.shape == (6, 3, 32, 32)
    assert rgb.min() >= 0 and rgb.max() <= 1
    assert torch.equal(rgb[:, 0], rgb[:, 1])
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        render(torch.zeros(2, 1, 28, 28))


@pytest.mark.parametrize("name", shift_names())
def test_every_shift_is_seeded_and_changes_the_image(name):
    rgb = render(_digits(), 32)
    a, b = apply_shift(name, rgb, seed=3), apply_shift(name, rgb, seed=3)
    assert torch.equal(a, b)
    assert a.shape == rgb.shape and a.min() >= 0 and a.max() <= 1
    assert not torch.allclose(a, rgb, atol=1e-3)


def test_specific_shifts_do_what_they_say():
    rgb = render(_digits(), 32)
    assert torch.allclose(apply_shift("inversion", rgb, 0), 1 - rgb)
    assert torch.equal(apply_shift("flip180", rgb, 0), torch.flip(rgb, dims=(-2, -1)))
    # 180 degrees twice is the identity
    assert torch.equal(apply_shift("flip180", apply_shift("flip180", rgb, 0), 0), rgb)
    assert sorted(SHIFT_CLASSES["flip180"]) == [0, 1, 2, 3, 4, 5, 7, 8]


def test_blur_matches_a_dense_gaussian_reference():
    x = torch.rand(1, 1, 15, 15)
    sigma, radius = 1.0, 3
    out = gaussian_blur(x, sigma)
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k1 = torch.exp(-(t**2) / 2)
    k2 = torch.outer(k1, k1) / k1.sum() ** 2
    padded = torch.nn.functional.pad(x, (radius,) * 4, mode="reflect")
    ref = torch.nn.functional.conv2d(padded, k2[None, None])
    assert torch.allclose(out, ref, atol=1e-6)


def test_unknown_shift_and_alignment_augmentation():
    with pytest.raises(ValueError, match="unknown shift 'fog'"):
        apply_shift("fog", render(_digits(), 32), 0)
    rgb = render(_digits(), 32)
    assert torch.equal(augment_for_alignment(rgb, 1), augment_for_alignment(rgb, 1))
    assert not torch.equal(augment_for_alignment(rgb, 1), augment_for_alignment(rgb, 2))
