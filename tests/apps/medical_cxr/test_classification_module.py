"""Classification: the recipe logs AUROC against scikit-learn's, the encoder options are the
shared ones, and the base options pass through."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from apps.medical_cxr.classification_module import ClassifierModule
from apps.medical_cxr.train import main

from .tiny import CONFIGS, TRAINER, tiny_data

TINY_ENCODER = {"image_size": 32, "vit_dim": 32, "vit_depth": 1, "vit_heads": 2, "patch_size": 16}


@pytest.mark.slow
def test_classification_recipe_logs_auroc(fast_embedded, tmp_path):
    cli = main(
        ["fit", "--config", str(CONFIGS / "classification.yaml"), "--trainer.max_epochs", "1",
         "--model.init_args.vit_dim", "32", "--model.init_args.vit_depth", "1",
         "--model.init_args.vit_heads", "2", *TRAINER, *tiny_data(tmp_path)]
    )  # fmt: skip
    assert isinstance(cli.model, ClassifierModule) and cli.model.image_size == 32
    cli.trainer.test(cli.model, datamodule=cli.datamodule)
    metrics = json.loads((Path(cli.trainer.log_dir) / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["test/auroc"] <= 1.0
    assert 0 <= metrics["test"]["test/auroc_excluded"] <= 14


def test_logged_auroc_is_the_mean_over_observations_with_both_classes():
    torch.manual_seed(0)
    module = ClassifierModule(**TINY_ENCODER).eval()
    images = torch.rand(12, 1, 32, 32)
    labels = (torch.rand(12, 14) < 0.5).float()
    labels[:, 3] = 1.0  # one class only: excluded
    logged: dict[str, float] = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    with torch.no_grad():
        module.on_test_epoch_start()
        for half in (slice(0, 6), slice(6, 12)):
            module.shared_step({"image": images[half], "labels": labels[half]}, "test")
        probs = torch.sigmoid(module(images)).numpy()
        module.on_test_epoch_end()
    keep = [j for j in range(14) if j != 3]
    expected = np.mean([roc_auc_score(labels[:, j], probs[:, j]) for j in keep])
    assert logged["test/auroc"] == pytest.approx(expected, abs=1e-6)
    assert logged["test/auroc_excluded"] == 1.0


def test_options_and_base_options_pass_through():
    module = ClassifierModule(**TINY_ENCODER, pos_weight=2.0, monitor="val/auroc")
    assert module.monitor == "val/auroc" and module.pos_weight == 2.0
    assert module.model.head.out_features == 14 and module.hparams["patch_size"] == 16
    with pytest.raises(ValueError, match=r"model\.pos_weight"):
        ClassifierModule(**TINY_ENCODER, pos_weight=0.0)
    with pytest.raises(TypeError, match="loss"):  # fixed by the module: not an option
        ClassifierModule(**TINY_ENCODER, loss=torch.nn.functional.mse_loss)
