import numpy as np
import pytest

from siamese_reid.analysis import project_2d, worst_queries
from siamese_reid.data.readers import Sample
from siamese_reid.errors import ReIDError
from siamese_reid.evaluation.threshold import accept_rates, fit_threshold, pair_distances


def test_pair_distances_follow_the_protocol():
    query = [Sample("q", 1, 1)]
    gallery = [Sample("a", 1, 1), Sample("b", 1, 2), Sample("c", 2, 1), Sample("d", -1, 2), Sample("e", 0, 3)]
    positive, negative = pair_distances(np.array([[0.1, 0.2, 0.3, 0.4, 0.5]]), query, gallery)
    np.testing.assert_array_equal(positive, [0.2])  # same camera ignored
    np.testing.assert_array_equal(negative, [0.3, 0.5])  # junk ignored, distractor kept


def test_threshold_at_equal_error_rate_and_at_a_false_accept_budget():
    rng = np.random.default_rng(0)
    positive, negative = rng.normal(0.5, 0.1, 2000), rng.normal(1.0, 0.1, 20000)
    threshold = fit_threshold(positive, negative)
    assert threshold.value == pytest.approx(0.75, abs=0.02)
    assert threshold.true_accept_rate == pytest.approx(1 - threshold.false_accept_rate, abs=0.01)
    assert accept_rates(positive, negative, threshold.value) == (
        threshold.true_accept_rate,
        threshold.false_accept_rate,
    )
    assert threshold.equal_error_rate == pytest.approx(threshold.false_accept_rate, abs=0.01)
    strict = fit_threshold(positive, negative, target_false_accept_rate=0.001)
    assert strict.false_accept_rate <= 0.001 and strict.value < threshold.value
    with pytest.raises(ReIDError):
        fit_threshold(np.array([]), negative)


def test_worst_queries_skip_unscored_ones():
    assert list(worst_queries(np.array([0.9, np.nan, 0.1, 0.5]), 2)) == [2, 3]


def test_projection_keeps_the_main_axis():
    rng = np.random.default_rng(1)
    features = np.outer(rng.normal(size=100), [3.0, 0.0, 0.0]) + 0.01 * rng.normal(size=(100, 3))
    projected = project_2d(features)
    assert projected.shape == (100, 2)
    assert np.var(projected[:, 0]) > 100 * np.var(projected[:, 1])


def test_a_reranked_run_records_and_shows_the_distances_it_was_scored_on(tmp_path):
    # With re-ranking on, metrics.json records the re-ranked distance, and the notebook ranks
    # with the distances the APs came from, not with the plain metric.
    from siamese_reid import analysis
    from siamese_reid.config import EvaluationConfig
    from siamese_reid.evaluation import compute_distances, evaluate_features, evaluate_ranking, rerank_distances
    from siamese_reid.evaluation.protocol import protocol_record
    from siamese_reid.reporting import ranking_metrics

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 8))
    query_pids, gallery_pids = np.arange(1, 7).repeat(2), np.arange(1, 7).repeat(4)
    query_features = centres[query_pids - 1] + 0.7 * rng.normal(size=(12, 8))
    gallery_features = centres[gallery_pids - 1] + 0.7 * rng.normal(size=(24, 8))
    query = [Sample(f"q{i}", int(p), 1) for i, p in enumerate(query_pids)]
    gallery = [Sample(f"g{i}", int(p), 2) for i, p in enumerate(gallery_pids)]
    settings = EvaluationConfig(rerank=True, metric="cosine")
    evaluation = evaluate_features(query_features, gallery_features, query, gallery, settings)
    scored = evaluation.rows.distances(0, 12)
    np.testing.assert_allclose(scored, rerank_distances(query_features, gallery_features))
    assert not np.allclose(scored, compute_distances(query_features, gallery_features, "cosine"))
    metrics = ranking_metrics(evaluation.ranking, 12, 24, protocol_record(settings, evaluation.distance))
    assert metrics["protocol"]["distance"]["name"] == "k-reciprocal re-ranking"
    assert metrics["protocol"]["distance"]["base"] == "squared euclidean"
    assert "metric" not in metrics["protocol"]  # cosine was not used
    run = analysis.Run(
        path=tmp_path,
        config={},
        dataset_summary={},
        history={},
        metrics=metrics,
        query_features=query_features,
        query_samples=query,
        gallery_features=gallery_features,
        gallery_samples=gallery,
        query_average_precisions=evaluation.ranking.query_average_precisions,
    )
    shown = np.stack([analysis.run_distances(run)[query_index] for query_index in range(12)])
    np.testing.assert_array_equal(shown, scored)
    again = evaluate_ranking(shown, query_pids, gallery_pids, np.ones(12, int), np.full(24, 2))
    np.testing.assert_allclose(again.query_average_precisions, run.query_average_precisions)


def test_negative_pairs_are_a_uniform_sample_and_positives_all_kept():
    from siamese_reid.evaluation import QueryGalleryDistances

    rng = np.random.default_rng(0)
    query_pids, gallery_pids = rng.integers(1, 30, 200), rng.integers(-1, 30, 3000)
    query = [Sample(f"q{i}", int(p), 1) for i, p in enumerate(query_pids)]
    gallery = [Sample(f"g{i}", int(p), 2) for i, p in enumerate(gallery_pids)]
    rows = QueryGalleryDistances(rng.normal(size=(200, 4)), rng.normal(size=(3000, 4)))
    all_positive, all_negative = pair_distances(rows, query, gallery, max_negative_pairs=None)
    # the reference, from the definition: every cross-camera pair of non-junk images
    matrix = np.stack([rows[q] for q in range(200)])
    same = query_pids[:, None] == gallery_pids[None, :]
    scored = gallery_pids[None, :] != -1
    np.testing.assert_array_equal(np.sort(all_positive), np.sort(matrix[same & scored]))
    np.testing.assert_array_equal(np.sort(all_negative), np.sort(matrix[~same & scored]))
    positive, negative = pair_distances(rows, query, gallery, max_negative_pairs=20_000)
    np.testing.assert_array_equal(positive, all_positive)
    assert abs(len(negative) - 20_000) < 600  # binomial spread, about 4 standard deviations
    # a uniform sample: its quantiles are those of all pairs
    np.testing.assert_allclose(
        np.quantile(negative, [0.01, 0.5, 0.99]), np.quantile(all_negative, [0.01, 0.5, 0.99]), rtol=0.03
    )


def test_sample_indices_draws_each_index_once_in_order():
    from siamese_reid.analysis import sample_indices

    np.testing.assert_array_equal(sample_indices(5, 10), np.arange(5))
    drawn = sample_indices(1000, 100, seed=3)
    assert len(np.unique(drawn)) == 100 and np.all(np.diff(drawn) > 0) and drawn.max() < 1000
