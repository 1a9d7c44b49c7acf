"""Figures: the training curves read the right series from a CSV log; each figure draws what
it is given."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from apps.medical_cxr.plots import (
    curves_figure,
    examples_figure,
    factuality_figure,
    per_label_figure,
)

CSV = """epoch,step,train/token_loss_epoch,val/token_loss,train/loss_epoch,val/loss
0,9,,2.5,,2.5
0,9,3.0,,3.4,
1,19,,2.0,,2.0
1,19,2.2,,2.6,
"""


def test_curves_show_the_token_loss_per_epoch(tmp_path):
    assert curves_figure(tmp_path / "metrics.csv") is None
    (tmp_path / "metrics.csv").write_text(CSV)
    fig = curves_figure(tmp_path / "metrics.csv")
    lines = {line.get_label(): line.get_ydata().tolist() for line in fig.axes[0].get_lines()}
    assert lines == {"train/token_loss_epoch": [3.0, 2.2], "val/token_loss": [2.5, 2.0]}
    (tmp_path / "metrics.csv").write_text("epoch,step,train/acc\n0,1,0.5\n")
    assert curves_figure(tmp_path / "metrics.csv") is None


def test_bar_and_image_figures():
    rows = [
        {"observation": "Edema", "f1": 0.5, "ref_positives": 3},
        {"observation": "X", "f1": 0.25, "ref_positives": 1},
    ]
    bars = per_label_figure(rows).axes[0].patches
    assert [b.get_height() for b in bars] == [0.5, 0.25]
    images = examples_figure([np.zeros((4, 4)), np.ones((4, 4))])
    assert isinstance(images, Figure) and len(images.axes) == 2
    sft, pref = {"ce_f1_micro": 0.5, "ce_f1_macro": 0.1}, {"ce_f1_micro": 0.6, "ce_f1_macro": 0.2}
    records = [{"seed": s, "sft": sft, "preference": pref} for s in (0, 1)]
    per_label = {"sft": {"Edema": 0.1}, "preference": {"Edema": 0.3}}
    left, right = factuality_figure(records, per_label).axes
    assert [b.get_height() for b in left.patches] == [0.5, 0.5, 0.1, 0.1, 0.6, 0.6, 0.2, 0.2]
    assert [b.get_height() for b in right.patches] == [0.1, 0.3]
