import json
import math

import pytest
import torch
from torchmetrics.classification import MulticlassCalibrationError

from apps.vision.metrics import (
    EffectiveRobustness,
    ResultsDB,
    accuracy,
    expected_calibration_error,
    project_logits,
)


@pytest.mark.parametrize(
    ("n", "c", "bins", "temp"),
    [(500, 10, 15, 1.0), (97, 3, 15, 5.0), (300, 7, 10, 0.3), (64, 2, 1, 2.0)],
)
def test_ece_matches_torchmetrics(n, c, bins, temp):
    g = torch.Generator().manual_seed(n + c)
    probs = (torch.randn(n, c, generator=g) * temp).softmax(-1)
    labels = torch.randint(0, c, (n,), generator=g)
    ref = MulticlassCalibrationError(num_classes=c, n_bins=bins, norm="l1")(probs, labels)
    assert expected_calibration_error(probs, labels, n_bins=bins) == pytest.approx(
        float(ref), abs=1e-6
    )


def test_ece_on_bin_edges_matches_torchmetrics():
    # confidences exactly on the edges 0.2, 0.4, ... land in the same bins as torchmetrics
    conf = torch.tensor([0.2, 0.4, 0.6, 0.8, 1.0, 0.5])
    probs = torch.stack([conf, 1 - conf], 1)
    probs = torch.where(probs.argmax(1, keepdim=True) == 0, probs, probs.flip(1))
    labels = torch.tensor([0, 1, 0, 0, 0, 1])
    ref = MulticlassCalibrationError(num_classes=2, n_bins=5, norm="l1")(probs, labels)
    assert expected_calibration_error(probs, labels, 5) == pytest.approx(float(ref), abs=1e-6)


def test_ece_hand_computed_and_bad_input():
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    labels = torch.tensor([0, 1, 0, 0])
    # bin (0.8, 0.9]: acc 0.5 conf 0.9; bin (0.5, 0.6]: acc 1 conf 0.6
    assert expected_calibration_error(probs, labels, 10) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    with pytest.raises(ValueError, match="probs must be"):
        expected_calibration_error(probs[:, 0], labels)


def test_accuracy_with_class_subset_projection():
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 2.0]])
    labels = torch.tensor([2, 0])
    assert accuracy(logits, labels) == 0.5
    # without class 1 the first row predicts class 2
    assert accuracy(logits, labels, classes=[0, 2]) == 1.0
    sub, new = project_logits(logits, labels, [0, 2])
    assert sub.shape == (2, 2) and new.tolist() == [1, 0]
    with pytest.raises(ValueError, match=r"labels \[1\] are not in the evaluated class subset"):
        accuracy(logits, torch.tensor([1, 0]), classes=[0, 2])


def test_effective_robustness_fit_recovers_a_logit_line(tmp_path):
    def logit(p):
        return math.log(p / (1 - p))

    ids = [0.5, 0.7, 0.9]
    oods = [1 / (1 + math.exp(-(0.8 * logit(p) - 0.5))) for p in ids]
    fit = EffectiveRobustness.fit(ids, oods)
    assert fit.slope == pytest.approx(0.8) and fit.intercept == pytest.approx(-0.5)
    assert fit(0.7, oods[1] + 0.05) == pytest.approx(0.05)
    path = fit.save(tmp_path / "fit.json")
    assert EffectiveRobustness.load(path) == fit
    assert json.loads(path.read_text())["n_models"] == 3
    with pytest.raises(ValueError, match="at least two baseline"):
        EffectiveRobustness.fit([0.5], [0.4])


def test_results_db_appends_whole_rows(tmp_path):
    db = ResultsDB(tmp_path / "r.jsonl")
    db.append([{"name": "a", "id": 0.5}])
    db.append([{"name": "b", "id": 0.7}, {"name": "c", "id": 0.9}])
    assert [r["name"] for r in db.rows()] == ["a", "b", "c"]
    assert ResultsDB(tmp_path / "missing.jsonl").rows() == []
