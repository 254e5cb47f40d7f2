import numpy as np
import pytest

from siamese_reid.analysis import accept_rates, pair_distances, project_2d, suggest_threshold, worst_queries
from siamese_reid.data.records import Sample
from siamese_reid.errors import ReIDError


def test_pair_distances_follow_the_protocol():
    query = [Sample("q", 1, 1)]
    gallery = [Sample("a", 1, 1), Sample("b", 1, 2), Sample("c", 2, 1), Sample("d", -1, 2), Sample("e", 0, 3)]
    positive, negative = pair_distances(np.array([[0.1, 0.2, 0.3, 0.4, 0.5]]), query, gallery)
    np.testing.assert_array_equal(positive, [0.2])  # same camera ignored
    np.testing.assert_array_equal(negative, [0.3, 0.5])  # junk ignored, distractor kept


def test_threshold_at_equal_error_rate_and_at_a_false_accept_budget():
    rng = np.random.default_rng(0)
    positive, negative = rng.normal(0.5, 0.1, 2000), rng.normal(1.0, 0.1, 20000)
    threshold = suggest_threshold(positive, negative)
    assert threshold.value == pytest.approx(0.75, abs=0.02)
    assert threshold.true_accept_rate == pytest.approx(1 - threshold.false_accept_rate, abs=0.01)
    assert accept_rates(positive, negative, threshold.value) == (
        threshold.true_accept_rate,
        threshold.false_accept_rate,
    )
    strict = suggest_threshold(positive, negative, max_false_accept_rate=0.001)
    assert strict.false_accept_rate <= 0.001 and strict.value < threshold.value
    with pytest.raises(ReIDError):
        suggest_threshold(np.array([]), negative)


def test_worst_queries_skip_unscored_ones():
    assert list(worst_queries(np.array([0.9, np.nan, 0.1, 0.5]), 2)) == [2, 3]


def test_projection_keeps_the_main_axis():
    rng = np.random.default_rng(1)
    features = np.outer(rng.normal(size=100), [3.0, 0.0, 0.0]) + 0.01 * rng.normal(size=(100, 3))
    projected = project_2d(features)
    assert projected.shape == (100, 2)
    assert np.var(projected[:, 0]) > 100 * np.var(projected[:, 1])
