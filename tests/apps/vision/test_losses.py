import pytest
import torch
import torch.nn.functional as F

from apps.vision.losses import contrastive_loss, geodesic_mixup_loss, slerp


def test_contrastive_loss_is_clip_loss_without_labels():
    g = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(5, 4, generator=g), dim=-1)
    b = F.normalize(torch.randn(5, 4, generator=g), dim=-1)
    logits = 10 * a @ b.t()
    ref = 0.5 * (
        F.cross_entropy(logits, torch.arange(5)) + F.cross_entropy(logits.t(), torch.arange(5))
    )
    assert contrastive_loss(a, b, 10.0) == pytest.approx(float(ref), abs=1e-6)
    # with all-distinct labels the label-aware loss is the same
    assert contrastive_loss(a, b, 10.0, torch.arange(5)) == pytest.approx(float(ref), abs=1e-6)


def test_slerp_endpoints_norm_and_midpoint():
    g = torch.Generator().manual_seed(1)
    a = F.normalize(torch.randn(3, 6, generator=g), dim=-1)
    b = F.normalize(torch.randn(3, 6, generator=g), dim=-1)
    assert torch.allclose(slerp(a, b, torch.zeros(3)), a, atol=1e-5)
    assert torch.allclose(slerp(a, b, torch.ones(3)), b, atol=1e-5)
    mid = slerp(a, b, torch.full((3,), 0.5))
    assert torch.allclose(mid.norm(dim=-1), torch.ones(3), atol=1e-6)
    # the midpoint is equally far (in angle) from both ends
    assert torch.allclose((mid * a).sum(-1), (mid * b).sum(-1), atol=1e-5)


def test_geodesic_mixup_loss_is_finite_and_differentiable():
    g = torch.Generator().manual_seed(2)
    img = F.normalize(torch.randn(8, 4, generator=g), dim=-1).requires_grad_()
    txt = F.normalize(torch.randn(8, 4, generator=g), dim=-1)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 3, 3])
    loss = geodesic_mixup_loss(img, txt, y, 10.0, torch.full((8,), 0.5))
    loss.backward()
    assert torch.isfinite(loss) and img.grad.abs().sum() > 0
    # the hard negatives make the loss larger than the plain contrastive loss
    assert loss > contrastive_loss(img, txt, 10.0, y)
