"""The ranking metrics against a brute-force, obviously-correct per-query loop."""

from pathlib import Path

import numpy as np
import pytest

from siamese_reid.errors import ReIDError
from siamese_reid.evaluation.distances import compute_distances
from siamese_reid.evaluation.ranking import evaluate_ranking


def official_compute_ap(good_image, junk_image, index):
    """Line-by-line port of the official Market-1501 evaluation's compute_AP.m (Zheng et al.).

    good_image: gallery indices of true matches; junk_image: indices to ignore; index: the
    whole gallery ranked from the best match. The previous precision is carried over every
    non-junk position, matches or not.
    """
    ngood = len(good_image)
    old_recall, old_precision, ap, intersect_size, j, good_now = 0.0, 1.0, 0.0, 0, 0, 0
    for n in range(len(index)):
        flag = 0
        if index[n] in good_image:
            flag = 1
            good_now += 1
        if index[n] in junk_image:
            continue
        if flag == 1:
            intersect_size += 1
        recall = intersect_size / ngood
        precision = intersect_size / (j + 1)
        ap += (recall - old_recall) * ((old_precision + precision) / 2)
        old_recall, old_precision = recall, precision
        j += 1
        if good_now == ngood:
            return ap
    return ap


def reference_ranking(distances, query_pids, gallery_pids, query_camids, gallery_camids, max_rank, official):
    """Full stable sort per query, then the textbook definitions (the official code for
    market_official AP)."""
    cmc_sum, aps, inps, valid_queries = np.zeros(max_rank), [], [], 0
    for q in range(len(query_pids)):
        order = sorted(range(len(gallery_pids)), key=lambda g: (distances[q, g], g))
        ranked = [
            g
            for g in order
            if gallery_pids[g] != -1 and not (gallery_pids[g] == query_pids[q] and gallery_camids[g] == query_camids[q])
        ]
        hits = [gallery_pids[g] == query_pids[q] for g in ranked]
        if not any(hits):
            continue
        valid_queries += 1
        first = hits.index(True)
        for k in range(max_rank):
            cmc_sum[k] += 1.0 if first <= k else 0.0
        precisions, found = [], 0
        for position, hit in enumerate(hits, start=1):
            if hit:
                found += 1
                precisions.append(found / position)
        if official:
            good = {g for g in range(len(gallery_pids)) if g in ranked and gallery_pids[g] == query_pids[q]}
            junk = set(order) - set(ranked)
            ap = official_compute_ap(good, junk, order)
        else:
            ap = sum(precisions) / len(precisions)
        aps.append(ap)
        last = max(i for i, hit in enumerate(hits) if hit) + 1
        inps.append(sum(hits) / last)
    return cmc_sum / valid_queries, float(np.mean(aps)), float(np.mean(inps)), valid_queries


def random_case(rng, num_query, num_gallery, num_ids, num_cams, tie_levels):
    query_pids = rng.integers(1, num_ids + 1, num_query)
    gallery_pids = rng.integers(-1, num_ids + 1, num_gallery)  # includes junk (-1) and distractors (0)
    query_camids = rng.integers(1, num_cams + 1, num_query)
    gallery_camids = rng.integers(1, num_cams + 1, num_gallery)
    # few distinct values -> many ties
    distances = rng.integers(0, tie_levels, (num_query, num_gallery)).astype(np.float64) / tie_levels
    return distances, query_pids, gallery_pids, query_camids, gallery_camids


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("ap_definition", ["torchreid", "market_official"])
def test_matches_brute_force_reference(seed, ap_definition):
    rng = np.random.default_rng(seed)
    num_gallery = int(rng.integers(1, 40))
    case = random_case(
        rng,
        int(rng.integers(1, 25)),
        num_gallery,
        int(rng.integers(1, 6)),
        int(rng.integers(1, 4)),
        int(rng.integers(2, 8)),
    )
    max_rank = int(rng.integers(1, 60))  # often longer than the filtered gallery
    reference = reference_ranking(*case, max_rank, ap_definition == "market_official") if _has_valid(case) else None
    if reference is None:
        with pytest.raises(ReIDError, match="no query has a valid match"):
            evaluate_ranking(*case, max_rank=max_rank, ap_definition=ap_definition)
        return
    result = evaluate_ranking(*case, max_rank=max_rank, ap_definition=ap_definition, chunk_size=int(rng.integers(1, 9)))
    cmc, mean_ap, mean_inp, valid = reference
    np.testing.assert_allclose(result.cmc, cmc, rtol=0, atol=1e-12)
    assert abs(result.mean_ap - mean_ap) < 1e-12
    assert abs(result.mean_inp - mean_inp) < 1e-12
    assert result.num_valid_queries == valid
    assert result.num_skipped_queries == len(case[1]) - valid


def _has_valid(case):
    _, query_pids, gallery_pids, query_camids, gallery_camids = case
    for q in range(len(query_pids)):
        if np.any((gallery_pids == query_pids[q]) & (gallery_camids != query_camids[q])):
            return True
    return False


def test_protocol_rules_on_a_hand_made_case():
    # gallery: 0 same id same cam (ignored), 1 junk (ignored), 2 distractor, 3 match, 4 match tie with 2
    distances = np.array([[0.0, 0.1, 0.2, 0.3, 0.2]])
    result = evaluate_ranking(
        distances, np.array([5]), np.array([5, -1, 0, 5, 5]), np.array([1]), np.array([1, 2, 2, 3, 2]), max_rank=4
    )
    # valid order: [2 (d=.2), 4 (d=.2, later index), 3 (d=.3)] -> first match at rank 2
    np.testing.assert_array_equal(result.cmc, [0, 1, 1, 1])
    assert result.mean_ap == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert result.mean_inp == pytest.approx(2 / 3)


def test_query_without_valid_match_is_skipped_and_counted():
    distances = np.array([[0.1, 0.2], [0.3, 0.1]])
    result = evaluate_ranking(distances, np.array([1, 2]), np.array([1, 2]), np.array([1, 1]), np.array([2, 1]))
    assert result.num_valid_queries == 1 and result.num_skipped_queries == 1
    assert np.isnan(result.query_average_precisions[1])


def test_float32_matrix_is_scored_without_copying_to_float64():
    rng = np.random.default_rng(0)
    case = random_case(rng, 30, 50, 4, 3, 1000)
    as32 = evaluate_ranking(case[0].astype(np.float32), *case[1:])
    as64 = evaluate_ranking(case[0], *case[1:])
    np.testing.assert_allclose(as32.cmc, as64.cmc)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d, qp, gp, qc, gc: (d, qp[:-1], gp, qc, gc), "query_pids has shape"),
        (lambda d, qp, gp, qc, gc: (d, qp, gp, qc, gc[:-1]), "gallery_camids has shape"),
        (lambda d, qp, gp, qc, gc: (np.where(d > 0.5, np.nan, d), qp, gp, qc, gc), "NaN"),
        (lambda d, qp, gp, qc, gc: (d[:0], qp[:0], gp, qc[:0], gc), "empty query or gallery"),
        (lambda d, qp, gp, qc, gc: (d[:, :0], qp, gp[:0], qc, gc[:0]), "empty query or gallery"),
    ],
)
def test_bad_input_is_a_clear_error(mutate, message):
    rng = np.random.default_rng(1)
    case = random_case(rng, 5, 8, 2, 2, 100)
    with pytest.raises(ReIDError, match=message):
        evaluate_ranking(*mutate(*case))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_distances_match_direct_formula(metric):
    rng = np.random.default_rng(2)
    query, gallery = rng.normal(size=(7, 5)), rng.normal(size=(11, 5))
    if metric == "euclidean":
        expected = np.linalg.norm(query[:, None] - gallery[None], axis=2)
    else:
        unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
        expected = 1 - unit(query) @ unit(gallery).T
    got = compute_distances(query, gallery, metric, chunk_size=3)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_rows_on_demand_index_like_the_matrix():
    from siamese_reid.evaluation import QueryGalleryDistances

    rng = np.random.default_rng(3)
    query, gallery = rng.normal(size=(4, 5)), rng.normal(size=(9, 5))
    rows, matrix = QueryGalleryDistances(query, gallery), compute_distances(query, gallery)
    assert rows.shape == matrix.shape and len(rows) == 4
    for query_index in (0, 3, -1, -4):  # a notebook user may well ask for the last query
        np.testing.assert_array_equal(rows[query_index], matrix[query_index])
    for query_index in (4, -5):
        with pytest.raises(IndexError, match="outside"):
            rows[query_index]


def test_market_official_ap_carries_precision_over_every_position():
    # One true match at rank 100: the official code scores (0 + 1/100) / 2 = 0.005, not the
    # 0.505 of carrying the precision over matches only.
    gallery_pids = np.array([1] + [2] * 99)
    distances = np.arange(100, dtype=float)[::-1][None, :]  # the match (index 0) ranks last
    result = evaluate_ranking(
        distances, np.array([1]), gallery_pids, np.array([1]), np.full(100, 2), ap_definition="market_official"
    )
    assert result.mean_ap == pytest.approx(0.005, abs=1e-12)
    assert result.mean_ap == pytest.approx(official_compute_ap({0}, set(), list(range(99, -1, -1))), abs=1e-15)


def test_market_official_ap_by_hand():
    # matches at ranks 1, 3 and 6 of 6: the trapezoids use the precision at ranks 0(=1), 2, 5
    distances = np.arange(6, dtype=float)[None, :]
    gallery_pids = np.array([1, 2, 1, 2, 2, 1])
    result = evaluate_ranking(
        distances, np.array([1]), gallery_pids, np.array([1]), np.full(6, 2), ap_definition="market_official"
    )
    expected = ((1 + 1) / 2 + (1 / 2 + 2 / 3) / 2 + (2 / 5 + 3 / 6) / 2) / 3
    assert result.mean_ap == pytest.approx(expected, abs=1e-12)


def test_an_image_in_both_query_and_gallery_never_matches_itself(tmp_path):
    # Folders layout with --query_dir and --gallery_dir at the same folder: query camera 1,
    # gallery camera 2, so without this rule every query found itself at distance 0.
    from siamese_reid.config import EvaluationConfig
    from siamese_reid.data.readers import Sample
    from siamese_reid.evaluation import evaluate_features

    rng = np.random.default_rng(0)
    pids = np.array([1, 1, 2, 2, 3, 3])
    features = rng.normal(size=(6, 4)).astype(np.float32)  # no identity signal at all
    query = [Sample(str(tmp_path / f"{i}.png"), int(p), 1) for i, p in enumerate(pids)]
    gallery = [Sample(str(tmp_path / f"{i}.png"), int(p), 2) for i, p in enumerate(pids)]
    settings = EvaluationConfig(flip_test=False)
    result = evaluate_features(features, features, query, gallery, settings).ranking
    distances = compute_distances(features, features)
    np.fill_diagonal(distances, np.inf)  # the reference: a query's own file is never a candidate
    expected = [int(np.argmin(distances[q]) in np.flatnonzero(pids == pids[q])) for q in range(6)]
    assert result.cmc[0] == pytest.approx(np.mean(expected))
    assert result.cmc[0] < 1.0


def _clustered_case(rng, num_query, num_gallery, num_ids, num_cams, dim=8):
    centers = rng.normal(size=(num_ids + 1, dim))
    query_pids = rng.integers(1, num_ids + 1, num_query)
    gallery_pids = rng.integers(-1, num_ids + 1, num_gallery)
    query_features = centers[query_pids] + rng.normal(scale=0.8, size=(num_query, dim))
    gallery_features = centers[np.maximum(gallery_pids, 0)] + rng.normal(scale=0.8, size=(num_gallery, dim))
    return (
        query_features.astype(np.float32),
        gallery_features.astype(np.float32),
        query_pids,
        gallery_pids,
        rng.integers(1, num_cams + 1, num_query),
        rng.integers(1, num_cams + 1, num_gallery),
    )


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_evaluate_embeddings_equals_ranking_the_whole_matrix(seed, metric):
    from siamese_reid.evaluation import evaluate_embeddings

    rng = np.random.default_rng(seed)
    case = _clustered_case(rng, int(rng.integers(20, 200)), int(rng.integers(50, 3000)), 12, 3)
    query_features, gallery_features, *labels = case
    ap_definition = ["torchreid", "market_official"][seed % 2]
    expected = evaluate_ranking(
        compute_distances(query_features, gallery_features, metric), *labels, max_rank=20, ap_definition=ap_definition
    )
    # A 1 MiB budget splits even these small problems into several blocks and gallery slices.
    for budget in (None, 2**20):
        got = evaluate_embeddings(
            *case, metric=metric, max_rank=20, ap_definition=ap_definition, memory_budget_bytes=budget
        )
        np.testing.assert_array_equal(got.query_first_match_ranks, expected.query_first_match_ranks)
        np.testing.assert_array_equal(got.query_average_precisions, expected.query_average_precisions)
        np.testing.assert_array_equal(got.cmc, expected.cmc)
        assert (got.mean_ap, got.mean_inp, got.num_valid_queries) == (
            expected.mean_ap,
            expected.mean_inp,
            expected.num_valid_queries,
        )


def test_evaluate_embeddings_keeps_ties_in_gallery_order():
    from siamese_reid.evaluation import evaluate_embeddings

    # Every gallery image at the same distance: each match ranks by its gallery index.
    gallery_features = np.zeros((6, 2), np.float32)
    gallery_pids = np.array([2, 1, 2, 1, 2, 1])
    result = evaluate_embeddings(
        np.ones((1, 2), np.float32), gallery_features, np.array([1]), gallery_pids, np.array([1]), np.full(6, 2)
    )
    reference = reference_ranking(
        np.ones((1, 6)), np.array([1]), gallery_pids, np.array([1]), np.full(6, 2), 50, official=False
    )
    assert result.query_first_match_ranks[0] == 1
    assert result.mean_ap == pytest.approx(reference[1], abs=1e-15)
    assert result.mean_inp == pytest.approx(3 / 6)


@pytest.mark.parametrize(("metric", "ap_definition"), [("euclidean", "torchreid"), ("cosine", "market_official")])
def test_evaluate_embeddings_ties_across_gallery_slices_equal_the_brute_force_reference(metric, ap_definition):
    from siamese_reid.evaluation import QueryGalleryDistances, evaluate_embeddings

    rng = np.random.default_rng(7)
    # Features on a 3 x 3 grid: a few distinct distances, so most of a query's matches tie with
    # images in other slices of the gallery.
    query_features = rng.integers(0, 3, (40, 2)).astype(np.float32)
    gallery_features = rng.integers(0, 3, (5000, 2)).astype(np.float32)
    labels = (rng.integers(1, 4, 40), rng.integers(-1, 4, 5000), rng.integers(1, 3, 40), rng.integers(1, 3, 5000))
    assert QueryGalleryDistances(query_features, gallery_features, metric, 2**20).tile_columns < 2000
    got = evaluate_embeddings(
        query_features, gallery_features, *labels, metric, 20, ap_definition, memory_budget_bytes=2**20
    )
    distances = compute_distances(query_features, gallery_features, metric)
    cmc, mean_ap, mean_inp, valid = reference_ranking(distances, *labels, 20, ap_definition == "market_official")
    np.testing.assert_allclose(got.cmc, cmc, rtol=0, atol=1e-12)
    assert abs(got.mean_ap - mean_ap) < 1e-12 and abs(got.mean_inp - mean_inp) < 1e-12
    assert got.num_valid_queries == valid


def _traced_peak(function):
    import tracemalloc

    tracemalloc.start()
    try:
        result = function()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("dim", [16, 256])
def test_evaluate_embeddings_stays_within_its_memory_budget(metric, dim):
    from siamese_reid.evaluation import evaluate_embeddings

    rng = np.random.default_rng(0)
    # 400 x 40,000: the float32 matrix alone would be 61 MiB. At 256 dimensions the gallery
    # alone is 39 MiB: neither a float64 copy of it (for its norms or products) nor a unit-length
    # copy (cosine) fits the budget.
    case = _clustered_case(rng, 400, 40_000, 500, 4, dim=dim)
    budget = 4 * 2**20
    _, peak = _traced_peak(lambda: evaluate_embeddings(*case, metric=metric, memory_budget_bytes=budget))
    # The budget plus O(gallery) index arrays (a few int64 arrays of 40,000).
    assert peak < budget + 3 * 2**20, peak / 2**20


def test_a_query_with_thousands_of_matches_stays_within_budget():
    from siamese_reid.evaluation import evaluate_embeddings

    rng = np.random.default_rng(1)
    num_gallery = 60_000
    gallery_pids = np.where(rng.random(num_gallery) < 0.5, 1, rng.integers(2, 100, num_gallery))  # ~30,000 matches
    gallery_features = rng.normal(size=(num_gallery, 8)).astype(np.float32)
    query_features = rng.normal(size=(2, 8)).astype(np.float32)
    labels = (np.array([1, 1]), gallery_pids, np.array([1, 1]), np.full(num_gallery, 2))
    result, peak = _traced_peak(lambda: evaluate_embeddings(query_features, gallery_features, *labels))
    # matches x gallery booleans would be 1.7 GB; the ranking needs O(gallery).
    assert peak < 16 * 2**20, peak / 2**20
    expected = evaluate_ranking(compute_distances(query_features, gallery_features), *labels)
    np.testing.assert_array_equal(result.query_average_precisions, expected.query_average_precisions)


def test_many_queries_with_thousands_of_matches_stay_within_budget():
    from siamese_reid.evaluation import evaluate_embeddings

    rng = np.random.default_rng(2)
    num_gallery, num_query = 40_000, 100
    gallery_pids = np.where(rng.random(num_gallery) < 0.5, 1, rng.integers(2, 100, num_gallery))  # ~20,000 matches
    gallery_features = rng.normal(size=(num_gallery, 8)).astype(np.float32)
    query_features = rng.normal(size=(num_query, 8)).astype(np.float32)
    labels = (np.ones(num_query, int), gallery_pids, np.ones(num_query, int), np.full(num_gallery, 2))
    budget = 8 * 2**20
    result, peak = _traced_peak(
        lambda: evaluate_embeddings(query_features, gallery_features, *labels, memory_budget_bytes=budget)
    )
    # The 100 queries fit in one tile; their 2,000,000 matches held at once would take about 60 MB.
    assert peak < budget + 4 * 2**20, peak / 2**20
    expected = evaluate_ranking(compute_distances(query_features, gallery_features), *labels)
    np.testing.assert_array_equal(result.query_average_precisions, expected.query_average_precisions)
    np.testing.assert_array_equal(result.query_first_match_ranks, expected.query_first_match_ranks)


def test_same_image_pairs_see_through_linked_folders_files_and_relative_paths(tmp_path, monkeypatch):
    import os

    from siamese_reid.data.readers import Sample
    from siamese_reid.evaluation.protocol import same_image_pairs

    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (images / name).write_bytes(b"x")
    os.symlink(images, tmp_path / "linked_folder")
    os.symlink(images / "c.png", tmp_path / "linked_c.png")
    monkeypatch.chdir(tmp_path)
    query = [Sample(str(images / "a.png"), 1, 1), Sample("linked_c.png", 2, 1), Sample(str(images / "b.png"), 3, 1)]
    gallery = [
        Sample("images/b.png", 3, 2),
        Sample(str(tmp_path / "linked_folder" / "a.png"), 1, 2),
        Sample(str(images / "c.png"), 2, 2),
    ]
    # the reference: Path.resolve of every file
    expected = [
        (row, column)
        for row, q in enumerate(query)
        for column, g in enumerate(gallery)
        if Path(q.path).resolve() == Path(g.path).resolve()
    ]
    assert sorted(map(tuple, same_image_pairs(query, gallery).tolist())) == sorted(expected) == [(0, 1), (1, 2), (2, 0)]
