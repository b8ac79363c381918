import numpy as np
import pytest

from dynexit import criteria
from dynexit.table import ExitTable
from conftest import random_table


def test_scores_by_hand():
    probs = np.array([[[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.6, 0.3]]])
    np.testing.assert_allclose(criteria.max_prob(probs), [[0.7, 0.5, 0.6]])
    np.testing.assert_allclose(criteria.margin(probs), [[0.5, 0.2, 0.3]])
    h0 = -(0.7 * np.log(0.7) + 0.2 * np.log(0.2) + 0.1 * np.log(0.1))
    assert criteria.entropy(probs)[0, 0] == pytest.approx(-h0)
    # predictions 0, 1, 1: runs of agreement 1, 1, 2
    np.testing.assert_array_equal(np.floor(criteria.patience(probs)), [[1, 1, 2]])


def test_score_at_exit_k_uses_only_exits_up_to_k():
    t = random_table(seed=3)
    p = t.probabilities()
    for name in criteria.available():
        full = criteria.get(name)(p)
        for k in range(t.num_exits):
            np.testing.assert_allclose(criteria.get(name)(p[:, : k + 1])[:, k], full[:, k])


def test_unknown_and_nan():
    with pytest.raises(ValueError, match="unknown exit criterion"):
        criteria.get("confidence!")
    with pytest.raises(ValueError, match="NaN"):
        criteria.max_prob(np.full((2, 2, 3), np.nan))


def test_temperature_scaling_improves_calibration():
    rng = np.random.default_rng(0)
    n, k, c = 2000, 2, 10
    logits = rng.normal(scale=2.0, size=(n, 1, c)).repeat(k, axis=1)
    p = np.exp(logits[:, 0]) / np.exp(logits[:, 0]).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(c, p=row) for row in p])  # calibrated at T = 1 by construction
    over = ExitTable(logits * 4.0, labels, [1.0, 2.0])  # over-confident by a factor of 4
    temps = criteria.fit_temperature(over)
    np.testing.assert_allclose(temps, 4.0, rtol=0.15)
    before = criteria.expected_calibration_error(over)
    after = criteria.expected_calibration_error(over, temps)
    assert np.all(after < before / 2)


def test_random_score_is_keyed_by_sample_id():
    probs = random_table(n=50, k=3, c=4, seed=5).probabilities()
    full = criteria.random_score(probs)
    assert full.shape == (50, 3) and ((full >= 0) & (full < 1)).all()
    rows = np.array([7, 3, 49, 0])
    np.testing.assert_array_equal(criteria.random_score(probs[rows], rows=rows), full[rows])
    np.testing.assert_array_equal(criteria.apply("random", probs[rows], rows=rows), full[rows])
    # without rows, row i is sample i (the old, position-keyed scores of the table path are unchanged)
    np.testing.assert_array_equal(criteria.random_score(probs[:10]), full[:10])
    # the score at exit j does not depend on how many exits were computed
    np.testing.assert_array_equal(criteria.random_score(probs[rows, :2], rows=rows), full[rows, :2])
    assert not np.array_equal(criteria.random_score(probs, seed=1), full)
    # criteria without rows ignore them
    np.testing.assert_array_equal(criteria.apply("max_prob", probs[rows], rows=rows), probs[rows].max(axis=2))
    assert criteria.takes_rows("random") and not criteria.takes_rows("max_prob")
    assert criteria.random_score(probs[:0], rows=np.array([], dtype=int)).shape == (0, 3)
    with pytest.raises(ValueError, match="integer sample ids"):
        criteria.random_score(probs[:2], rows=[0.5, 1.5])
    with pytest.raises(ValueError, match="cannot be negative"):
        criteria.random_score(probs[:2], rows=[0, -1])
    with pytest.raises(ValueError, match="integer sample ids"):
        criteria.random_score(probs[:2], rows=[0, 1, 2])
