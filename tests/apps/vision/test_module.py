import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F

from apps.vision.alignment import contrastive_loss
from apps.vision.module import VisionModule, geodesic_mixup_loss, slerp
from apps.vision.robust import soups, wise_ft_sweep


def _fit(module, data, epochs=1):
    trainer = pl.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )
    trainer.fit(module, datamodule=data)
    return module


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


def test_wise_ft_endpoints_reproduce_zero_shot_and_fine_tuned(tiny_data, tiny_model_kwargs):
    pl.seed_everything(0)
    module = VisionModule(**tiny_model_kwargs)
    sets = tiny_data.eval_sets()
    x = tiny_data.sets["test"].tensors[0][:16].float()
    with torch.no_grad():
        zs_logits = module(x).clone()
    _fit(module, tiny_data)
    with torch.no_grad():
        ft_logits = module(x).clone()
    assert not torch.allclose(zs_logits, ft_logits)
    finetuned = {k: v.clone() for k, v in module.model.state_dict().items()}
    rows, best = wise_ft_sweep(
        module.model,
        module.initial_state,
        finetuned,
        {"id_val": sets["id_val"]},
        alphas=[0.0, 0.5, 1.0],
    )
    assert [r["alpha"] for r in rows] == [0.0, 0.5, 1.0] and best in (0.0, 0.5, 1.0)
    from core.merging import wise_ft

    for alpha, ref in ((0.0, zs_logits), (1.0, ft_logits)):
        module.model.load_state_dict(wise_ft(module.initial_state, finetuned, alpha=alpha))
        with torch.no_grad():
            assert torch.equal(module(x), ref)
    # the sweep leaves the fine-tuned weights in place
    module.model.load_state_dict(finetuned)


def test_linear_probe_head_init_and_flyp_update_text_side(tiny_data, tiny_model_kwargs):
    pl.seed_everything(0)
    lp = VisionModule(head_init="linear_probe", lp_c=10.0, **tiny_model_kwargs)
    acc = lp.fit_linear_probe(tiny_data.train_dataloader())
    assert acc > 0.3  # chance is 0.1
    assert not torch.allclose(lp.model.head.weight, lp.initial_state["head.weight"])

    flyp = VisionModule(objective="flyp", mixup_weight=0.5, **tiny_model_kwargs)
    before = flyp.model.text_proj.weight.detach().clone()
    _fit(flyp, tiny_data)
    assert not torch.equal(flyp.model.text_proj.weight, before)
    # after training, the head is the text side's zero-shot classifier
    ref = flyp.model.logit_scale * flyp.model.zero_shot_weights()
    assert torch.allclose(flyp.model.head.weight, ref, atol=1e-6)


def test_soups_never_score_below_the_best_ingredient(tiny_data, tiny_model_kwargs):
    states = []
    for seed, lr in ((0, 1e-3), (1, 3e-3)):
        pl.seed_everything(seed)
        m = VisionModule(
            optimizer=lambda p, lr=lr: torch.optim.AdamW(p, lr=lr), **tiny_model_kwargs
        )
        states.append({k: v.clone() for k, v in _fit(m, tiny_data).model.state_dict().items()})
    val = tiny_data.eval_sets()["id_val"]
    out = soups(m.model, states, val)
    assert out["greedy_val"] >= max(out["scores"])
    for k in states[0]:
        if states[0][k].is_floating_point():
            assert torch.allclose(out["uniform"][k], (states[0][k] + states[1][k]) / 2, atol=1e-6)


def test_bad_module_options(tiny_model_kwargs):
    with pytest.raises(ValueError, match=r"needs model\.objective: flyp"):
        VisionModule(mixup_weight=0.5, **tiny_model_kwargs)
    with pytest.raises(ValueError, match=r"model\.backbone='resnet'"):
        VisionModule(backbone="resnet", **tiny_model_kwargs)
    with pytest.raises(ValueError, match="must contain exactly one"):
        VisionModule(templates=["no placeholder"], **tiny_model_kwargs)
