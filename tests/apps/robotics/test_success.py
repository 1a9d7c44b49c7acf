"""The learned success detector: labelled rollouts, metrics against sklearn, fit, files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from apps.robotics.evaluation import EVAL_SEED_BASE
from apps.robotics.model import fake_text_tower
from apps.robotics.success import (
    BEHAVIOURS,
    SUCCESS_SEED_BASE,
    LabelledFrames,
    SuccessClassifier,
    binary_metrics,
    fit_classifier,
    load_classifier,
    record_labelled_rollouts,
    save_classifier,
    score_classifier,
)


@pytest.fixture(scope="module")
def frames() -> LabelledFrames:
    return record_labelled_rollouts(16, seed=0, num_envs=8, progress=False)


def test_rollouts_are_labelled_by_the_simulator(frames: LabelledFrames) -> None:
    # Two frames per episode (the final one and one before it), behaviours in turn.
    assert len(frames) == 32
    assert int(frames.final.sum()) == 16
    assert not frames.labels[~frames.final].any(), "an episode ends on success: no earlier win"
    by = {b: frames.labels[frames.final & (np.array(frames.behaviours) == b)] for b in BEHAVIOURS}
    assert by["expert"].all() and not by["random"].any()
    assert (frames.seeds >= SUCCESS_SEED_BASE).all() and (
        frames.seeds > EVAL_SEED_BASE + 10**6
    ).all()
    again = record_labelled_rollouts(16, seed=0, num_envs=4, progress=False)
    assert (again.images == frames.images).all() and (again.labels == frames.labels).all()


def test_binary_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    truth, predicted = rng.random(200) < 0.3, rng.random(200) < 0.4
    ours = binary_metrics(predicted, truth)
    assert ours["accuracy"] == pytest.approx(accuracy_score(truth, predicted))
    assert ours["precision"] == pytest.approx(precision_score(truth, predicted))
    assert ours["recall"] == pytest.approx(recall_score(truth, predicted))
    assert ours["f1"] == pytest.approx(f1_score(truth, predicted))
    none = binary_metrics(np.zeros(4, bool), np.zeros(4, bool))
    assert none["precision"] == precision_score([0] * 4, [0] * 4, zero_division=0)


def test_classifier_fits_and_scores(frames: LabelledFrames) -> None:
    torch.manual_seed(0)
    classifier = SuccessClassifier(text_tower=fake_text_tower(), num_keypoints=8, hidden_dim=64)
    fit = fit_classifier(classifier, frames, steps=300, batch_size=32, lr=3e-3, progress=False)
    assert fit.losses[-1][1] < fit.losses[0][1]
    scores = score_classifier(classifier, frames)
    assert scores["all"]["accuracy"] >= 0.9
    assert set(scores["behaviour"]) == set(BEHAVIOURS)
    assert scores["final"]["count"] == 16


def test_single_outcome_is_refused(frames: LabelledFrames) -> None:
    classifier = SuccessClassifier(text_tower=fake_text_tower(), num_keypoints=4, hidden_dim=16)
    with pytest.raises(ValueError, match="both outcomes"):
        fit_classifier(classifier, frames.subset(~frames.labels), steps=1, progress=False)


def test_classifier_file_round_trip_and_tower_check(frames: LabelledFrames, tmp_path) -> None:
    classifier = SuccessClassifier(text_tower=fake_text_tower(), num_keypoints=4, hidden_dim=16)
    path = save_classifier(tmp_path / "success.pt", classifier)
    again = load_classifier(path, text_tower=fake_text_tower())
    np.testing.assert_allclose(
        again.probability(frames.images[:4], frames.instructions[:4]),
        classifier.probability(frames.images[:4], frames.instructions[:4]),
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match=r"success.pt.*trained on towers"):
        load_classifier(path, trunk_split=2, text_tower=fake_text_tower())
    with pytest.raises(ValueError, match="trained on towers"):
        load_classifier(path, pretrained=False, text_tower=fake_text_tower())
    with pytest.raises(FileNotFoundError, match=r"nothing.pt"):
        load_classifier(tmp_path / "nothing.pt")


def test_rollout_file_round_trip_and_bad_files(frames: LabelledFrames, tmp_path) -> None:
    path = frames.save(tmp_path / "rollouts.npz")
    back = LabelledFrames.load(path)
    assert (back.images == frames.images).all() and back.instructions == frames.instructions
    assert back.behaviours == frames.behaviours and (back.final == frames.final).all()
    # A file with frames missing: fewer images than labels.
    fields = {k: getattr(frames, k) for k in ("labels", "final", "seeds")}
    np.savez(
        tmp_path / "short.npz",
        images=frames.images[:-3],
        instructions=np.array(frames.instructions),
        families=np.array(frames.families),
        behaviours=np.array(frames.behaviours),
        **fields,
    )
    with pytest.raises(ValueError, match=r"short.npz.*missing frames"):
        LabelledFrames.load(tmp_path / "short.npz")
    np.savez(tmp_path / "other.npz", images=frames.images)
    with pytest.raises(ValueError, match=r"other.npz.*lack"):
        LabelledFrames.load(tmp_path / "other.npz")
