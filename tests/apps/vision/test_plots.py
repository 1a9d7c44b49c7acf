import torch

from apps.vision.metrics import EffectiveRobustness
from apps.vision.plots import frontier_figure, reliability_figure, save_figure


def test_figures_draw_every_model_and_save_as_png(tmp_path):
    pts = [{"name": "zs", "id": 0.5, "ood": 0.4}, {"name": "ft", "id": 0.9, "ood": 0.5}]
    curve = [{"alpha": a / 10, "id": 0.5 + a * 0.04, "ood": 0.4 + 0.01 * a} for a in range(11)]
    fit = EffectiveRobustness.fit([0.5, 0.9], [0.4, 0.5])
    fig = frontier_figure(pts, curve=curve, fit=fit)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert labels == ["WiSE-FT (alpha 0..1)", "zs", "ft", "baseline fit (logit)"]
    png = save_figure(fig, tmp_path / "f.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    probs = torch.rand(50, 3, generator=torch.Generator().manual_seed(0)).softmax(-1)
    labels_ = torch.randint(0, 3, (50,), generator=torch.Generator().manual_seed(1))
    fig = reliability_figure({"a": (probs, labels_), "b": (probs, labels_)})
    assert [ax.get_title().split("\n")[0] for ax in fig.axes] == ["a", "b"]
    assert save_figure(fig, tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
