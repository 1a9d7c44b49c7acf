"""The OpenVLA-style action tokenizer (apps/robotics/actions.py).

Round trips land within half a bin; the bin chosen is the one whose centre is nearest (a
brute-force reference); out-of-range actions clip to the end bins; shapes, dtypes and bad
bounds are refused with clear errors; ``from_stats`` reads q01/q99 from a written dataset.
"""

from __future__ import annotations

import numpy as np
import pytest

from apps.robotics.actions import ActionTokenizer
from apps.robotics.dataset import Episode, read_dataset, vector_feature, write_dataset

LOW = np.array([-1.0, 0.0, -0.05, 10.0, -3.0])
HIGH = np.array([1.0, 0.5, 0.05, 250.0, 4.0])


def in_range(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.uniform(LOW, HIGH, size=(*shape, LOW.size))


@pytest.mark.parametrize("bins", [2, 7, 256])
def test_round_trip_is_within_half_a_bin(bins):
    tok = ActionTokenizer(LOW, HIGH, bins=bins)
    actions = in_range(np.random.default_rng(bins), (2000,))
    actions[:5] = LOW  # the ends are in range too
    actions[5:10] = HIGH
    tokens = tok.encode(actions)
    assert tokens.dtype == np.int64 and tokens.shape == actions.shape
    assert tokens.min() >= 0 and tokens.max() <= bins - 1
    back = tok.decode(tokens)
    assert back.dtype == np.float32 and back.shape == actions.shape
    half = (HIGH - LOW) / bins / 2
    error = np.abs(back.astype(np.float64) - actions)
    assert (error <= half * (1 + 1e-6) + 1e-5 * np.abs(actions)).all()
    # With many actions every bin is used, so the bound is tight rather than loose.
    assert (error.max(axis=0) > 0.9 * half).all()


def test_the_chosen_bin_is_the_one_with_the_nearest_centre():
    bins = 16
    tok = ActionTokenizer(LOW, HIGH, bins=bins)
    actions = in_range(np.random.default_rng(1), (500,))
    centres = LOW + (np.arange(bins)[:, None] + 0.5) * (HIGH - LOW) / bins  # (bins, dim)
    nearest = np.abs(actions[:, None, :] - centres[None]).argmin(axis=1)
    np.testing.assert_array_equal(tok.encode(actions), nearest)
    np.testing.assert_allclose(
        tok.decode(np.arange(bins)[:, None].repeat(5, 1)), centres, rtol=1e-6
    )


def test_known_bins_on_minus_one_to_one():
    tok = ActionTokenizer([-1.0], [1.0], bins=4)
    np.testing.assert_array_equal(
        tok.encode([[-1.0], [-0.51], [-0.5], [0.0], [0.49], [0.99], [1.0]]).ravel(),
        [0, 0, 1, 2, 2, 3, 3],
    )
    np.testing.assert_array_equal(
        tok.decode([[0], [1], [2], [3]]).ravel(), [-0.75, -0.25, 0.25, 0.75]
    )
    np.testing.assert_allclose(tok.bin_width, [0.5])


def test_out_of_range_actions_are_clipped_to_the_end_bins():
    bins = 256
    tok = ActionTokenizer(LOW, HIGH, bins=bins)
    above, below = HIGH + np.abs(HIGH) + 1.0, LOW - np.abs(LOW) - 1.0
    np.testing.assert_array_equal(tok.encode(above), np.full(LOW.size, bins - 1))
    np.testing.assert_array_equal(tok.encode(below), np.zeros(LOW.size))
    width = (HIGH - LOW) / bins
    np.testing.assert_allclose(tok.decode(tok.encode(above)), HIGH - width / 2, rtol=1e-6)
    np.testing.assert_allclose(tok.decode(tok.encode(below)), LOW + width / 2, rtol=1e-6)
    mixed = np.stack([LOW, above, (LOW + HIGH) / 2])
    np.testing.assert_array_equal(tok.out_of_range(mixed), [[False] * 5, [True] * 5, [False] * 5])
    with pytest.raises(
        ValueError, match=r"5 action value\(s\) in dimension\(s\) \[0, 1, 2, 3, 4\]"
    ):
        tok.encode(mixed, strict=True)
    tok.encode(np.stack([LOW, HIGH]), strict=True)  # the ends themselves are in range


def test_batches_keep_their_shape():
    tok = ActionTokenizer(LOW, HIGH)
    actions = in_range(np.random.default_rng(2), (3, 4))  # (batch, chunk, dim)
    tokens = tok.encode(actions)
    assert tokens.shape == (3, 4, 5)
    np.testing.assert_array_equal(tokens[1, 2], tok.encode(actions[1, 2]))
    assert tok.decode(tokens).shape == (3, 4, 5)


def test_a_constant_dimension_has_one_value():
    tok = ActionTokenizer([0.0, 2.0], [1.0, 2.0], bins=8)
    tokens = tok.encode([[0.3, 2.0], [0.3, 5.0], [0.3, -1.0]])
    np.testing.assert_array_equal(tokens[:, 1], [0, 0, 0])
    np.testing.assert_array_equal(tok.decode(tokens)[:, 1], [2.0, 2.0, 2.0])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda t: t.encode(np.zeros((4, 3))), r"5 values on their last axis.*\(4, 3\)"),
        (lambda t: t.encode(np.zeros(5) * np.nan), "NaN"),
        (lambda t: t.decode(np.zeros((2, 4), dtype=np.int64)), "5 values on their last axis"),
        (lambda t: t.decode(np.full(5, 256)), r"\[0, 256\)"),
        (lambda t: t.decode(np.full(5, -1)), r"\[0, 256\)"),
        (lambda t: t.decode(np.zeros(5)), "must be integers"),
    ],
)
def test_bad_shapes_and_tokens_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call(ActionTokenizer(LOW, HIGH))


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError, match=r"high < low in action dimension\(s\) \[1\]"):
        ActionTokenizer([0.0, 1.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="same length"):
        ActionTokenizer([0.0, 1.0], [1.0])
    with pytest.raises(ValueError, match="finite"):
        ActionTokenizer([0.0], [np.inf])
    with pytest.raises(ValueError, match="bins"):
        ActionTokenizer([0.0], [1.0], bins=1)


def test_config_rebuilds_the_same_tokenizer():
    tok = ActionTokenizer(LOW, HIGH, bins=64)
    again = ActionTokenizer(**tok.config())
    actions = in_range(np.random.default_rng(3), (50,))
    np.testing.assert_array_equal(again.encode(actions), tok.encode(actions))


def test_from_stats_uses_q01_and_q99_of_a_written_dataset(tmp_path):
    rng = np.random.default_rng(4)
    actions = rng.standard_t(df=2, size=(3, 40, 2)).astype(np.float32)  # heavy tails
    features = {"observation.state": vector_feature(["x"]), "action": vector_feature(["dx", "dy"])}
    episodes = [
        Episode(task="reach", data={"observation.state": np.zeros((40, 1)), "action": a})
        for a in actions
    ]
    ds = read_dataset(write_dataset(tmp_path / "ds", episodes, fps=10, features=features))
    tok = ActionTokenizer.from_stats(ds.stats)
    flat = actions.reshape(-1, 2).astype(np.float64)
    np.testing.assert_allclose(tok.low, np.quantile(flat, 0.01, axis=0), rtol=1e-12)
    np.testing.assert_allclose(tok.high, np.quantile(flat, 0.99, axis=0), rtol=1e-12)
    assert tok.bins == 256 and tok.action_dim == 2
    # The tails beyond q01/q99 are what the tokenizer clips: of 120 values, q01 lies between
    # the 2nd and 3rd smallest and q99 between the 3rd and 2nd largest, so 2 + 2 a dimension.
    np.testing.assert_array_equal(tok.out_of_range(flat).sum(axis=0), [4, 4])
    with pytest.raises(KeyError, match=r"no 'actions' entry.*recompute_stats"):
        ActionTokenizer.from_stats(ds.stats, key="actions")
    with pytest.raises(KeyError, match=r"stats\['action'\] has no \['q01'\]"):
        ActionTokenizer.from_stats({"action": {"q99": [1.0]}})
