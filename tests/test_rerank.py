"""k-reciprocal re-ranking against two independent references.

`paper_rerank` spells out the paper's definitions with Python sets (slow: tiny cases only).
`dense_rerank` is the authors' dense algorithm (github.com/zhunzhong07/person-re-ranking) in
numpy, with its (Q + G) x (Q + G) matrices: the implementation the package used before the
sparse one, checked against `paper_rerank` and then used as the reference on larger cases.
"""

import numpy as np
import pytest

from siamese_reid.errors import ReIDError
from siamese_reid.evaluation import evaluate_ranking, rerank_distances
from siamese_reid.evaluation.rerank import KReciprocalReranker, _nearest_neighbours


def paper_rerank(query, gallery, k1, k2, lambda_value):
    """The definitions of Zhong et al. (2017), written with Python sets and loops."""
    features = np.concatenate([query, gallery]).astype(np.float64)
    n = len(features)
    d = np.array([[np.sum((features[i] - features[j]) ** 2) for j in range(n)] for i in range(n)])
    d = d / d.max(axis=0, keepdims=True)  # column-wise scaling of the authors' code
    d = d.T
    order = [sorted(range(n), key=lambda j, i=i: (d[i, j], j)) for i in range(n)]

    def nearest(p, k):
        return set(order[p][: k + 1])

    def reciprocal(p, k):
        return {g for g in nearest(p, k) if p in nearest(g, k)}

    v = np.zeros((n, n))
    for p in range(n):
        r = reciprocal(p, k1)
        expanded = set(r)
        for q in r:
            rq = reciprocal(q, int(round(k1 / 2)))
            if len(rq & r) > 2 / 3 * len(rq):
                expanded |= rq
        members = sorted(expanded)
        weights = np.exp(-d[p, members])
        v[p, members] = weights / weights.sum()
    if k2 > 1:
        v = np.array([np.mean([v[g] for g in order[p][:k2]], axis=0) for p in range(n)])
    num_query = len(query)
    final = np.zeros((num_query, len(gallery)))
    for i in range(num_query):
        for j in range(len(gallery)):
            g = num_query + j
            jaccard = 1 - np.minimum(v[i], v[g]).sum() / np.maximum(v[i], v[g]).sum()
            final[i, j] = (1 - lambda_value) * jaccard + lambda_value * d[i, g]
    return final


def dense_rerank(query, gallery, k1, k2, lambda_value):
    """The authors' algorithm on dense (Q + G) x (Q + G) matrices (about 20 (Q + G)^2 bytes)."""
    features = np.concatenate([query, gallery]).astype(np.float32)
    squared = np.square(features).sum(axis=1)
    distances = np.maximum(squared[:, None] + squared[None, :] - 2.0 * features @ features.T, 0.0)
    distances = (distances / distances.max(axis=0, keepdims=True)).T
    n, num_query = len(features), len(query)
    ranks = np.argsort(distances, axis=1, kind="stable")

    def reciprocal(p, k):
        forward = ranks[p, : k + 1]
        return forward[np.any(ranks[forward, : k + 1] == p, axis=1)]

    encoding = np.zeros((n, n), dtype=np.float32)
    for p in range(n):
        members = reciprocal(p, k1)
        expansion = [members]
        for candidate in members:
            candidate_members = reciprocal(candidate, int(round(k1 / 2)))
            if np.intersect1d(candidate_members, members).size > 2 / 3 * candidate_members.size:
                expansion.append(candidate_members)
        members = np.unique(np.concatenate(expansion))
        weights = np.exp(-distances[p, members])
        encoding[p, members] = weights / weights.sum()
    if k2 > 1:
        encoding = np.mean([encoding[ranks[:, column]] for column in range(k2)], axis=0)
    jaccard = np.empty((num_query, n), dtype=np.float32)
    for p in range(num_query):
        shared = np.minimum(encoding[p][None, :], encoding).sum(axis=1)
        jaccard[p] = 1 - shared / (2 - shared)
    final = (1 - lambda_value) * jaccard + lambda_value * distances[:num_query]
    return final[:, num_query:]


def clustered_case(seed, num_query, num_gallery, dim=16, num_identities=8, num_cameras=3, k=20):
    """Features clustered by identity whose k + 2 nearest neighbours are never within 1e-6
    (relative) of each other: near-ties would let two correct implementations (with different
    float rounding) choose different neighbours."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_identities, dim))
    pids = rng.integers(0, num_identities, num_query + num_gallery)
    features = (centres[pids] + 0.6 * rng.normal(size=(len(pids), dim))).astype(np.float32)
    distances = np.square(features[:, None, :] - features[None, :, :]).sum(axis=2)
    nearest = np.sort(distances, axis=1)[:, : k + 3]
    gaps = np.diff(nearest, axis=1) / distances.max(axis=1, keepdims=True)
    assert gaps.min() > 1e-6, "seed gives near-tied distances; pick another"
    camids = rng.integers(1, num_cameras + 1, len(pids))
    return features[:num_query], features[num_query:], pids[:num_query], pids[num_query:], camids


@pytest.mark.parametrize(("seed", "k1", "k2"), [(0, 4, 2), (1, 6, 3), (2, 5, 1)])
def test_dense_reference_follows_the_papers_definitions(seed, k1, k2):
    query, gallery, *_ = clustered_case(seed, 8, 18, dim=6, num_identities=4, k=k1)
    expected = paper_rerank(query, gallery, k1, k2, 0.3)
    np.testing.assert_allclose(dense_rerank(query, gallery, k1, k2, 0.3), expected, atol=2e-5)
    np.testing.assert_allclose(rerank_distances(query, gallery, k1, k2, 0.3), expected, atol=2e-5)


@pytest.mark.parametrize(
    ("seed", "num_query", "num_gallery", "k1", "k2", "lambda_value"),
    [
        (1, 40, 260, 20, 6, 0.3),  # the authors' parameters
        (4, 25, 120, 7, 1, 0.5),  # no local query expansion
        (5, 6, 12, 20, 6, 0.3),  # gallery (and all images) fewer than k1
        (6, 30, 90, 3, 4, 0.0),  # Jaccard distance alone; k2 > k1
        (7, 50, 150, 11, 6, 1.0),  # original distance alone
        (8, 1, 60, 5, 2, 0.3),  # a single query
    ],
)
def test_sparse_reranker_equals_the_dense_algorithm(seed, num_query, num_gallery, k1, k2, lambda_value):
    query, gallery, *_ = clustered_case(seed, num_query, num_gallery, k=max(k1, k2))
    expected = dense_rerank(query, gallery, k1, k2, lambda_value)
    got = rerank_distances(query, gallery, k1=k1, k2=k2, lambda_value=lambda_value)
    assert got.dtype == np.float32 and got.shape == (num_query, num_gallery)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_query_chunks_concatenate_to_the_full_matrix():
    query, gallery, *_ = clustered_case(9, 37, 140, k=10)
    reranker = KReciprocalReranker(query, gallery, k1=10, k2=3, lambda_value=0.3)
    full = dense_rerank(query, gallery, 10, 3, 0.3)
    bounds = [0, 1, 2, 15, 15, 36, 37]
    chunks = [reranker.distances(start, stop) for start, stop in zip(bounds[:-1], bounds[1:], strict=True)]
    assert chunks[3].shape == (0, 140)
    np.testing.assert_allclose(np.concatenate(chunks), full, atol=1e-5)
    # Equal up to float rounding: BLAS may block a product differently for different row counts.
    np.testing.assert_allclose(reranker.distances(20, 30), reranker.distances(0, 37)[20:30], atol=1e-6)
    # The row interface of QueryGalleryDistances: a stop past the end is cut, as in slicing.
    np.testing.assert_allclose(reranker.distances(30, 64), full[30:], atol=1e-5)
    np.testing.assert_allclose(reranker[36], full[36], atol=1e-5)
    assert reranker.shape == (37, 140) and len(reranker) == 37


def test_ranking_metrics_on_reranked_distances_equal_the_dense_algorithms():
    query, gallery, query_pids, gallery_pids, camids = clustered_case(10, 60, 240, num_identities=12)
    query_camids, gallery_camids = camids[:60], camids[60:]
    labels = (query_pids, gallery_pids, query_camids, gallery_camids)
    expected = evaluate_ranking(dense_rerank(query, gallery, 20, 6, 0.3), *labels, max_rank=20)
    reranker = KReciprocalReranker(query, gallery)
    reranker.rows_per_block = 7  # streamed in blocks that do not divide the 60 queries
    for got in (
        evaluate_ranking(rerank_distances(query, gallery), *labels, max_rank=20),
        evaluate_ranking(reranker, *labels, max_rank=20),
    ):
        np.testing.assert_array_equal(got.cmc, expected.cmc)
        np.testing.assert_allclose([got.mean_ap, got.mean_inp], [expected.mean_ap, expected.mean_inp], atol=1e-12)
        np.testing.assert_array_equal(got.query_first_match_ranks, expected.query_first_match_ranks)
    # Re-ranking helps on clustered identities (as the paper reports): a check that it re-ranks at all.
    plain = np.square(query[:, None, :] - gallery[None, :, :]).sum(axis=2)
    assert got.mean_ap > evaluate_ranking(plain, *labels, max_rank=20).mean_ap


def test_every_image_is_its_own_first_neighbour_even_with_exact_duplicates():
    # The k-reciprocal sets and the query expansion take rank 0 to be the image itself; an exact
    # search may list an identical image (distance 0 too) first.
    rng = np.random.default_rng(13)
    unique = rng.normal(size=(20, 8)).astype(np.float32)
    features = np.concatenate([unique, unique[:5], unique[:5]])  # images 0-4 three times each
    ranks = _nearest_neighbours(features, 6, verbose=False)
    np.testing.assert_array_equal(ranks[:, 0], np.arange(30))
    assert all(len(set(row)) == 6 for row in ranks.tolist())
    for image in range(5):
        copies = {image, image + 20, image + 25}
        for copy in copies:
            assert set(ranks[copy, :3]) == copies


def test_memory_grows_linearly_with_the_number_of_images():
    held = {}
    for num_images in (1600, 3200):
        rng = np.random.default_rng(num_images)
        centres = rng.normal(size=(num_images // 10, 16))
        features = centres[rng.integers(0, len(centres), num_images)] + 0.6 * rng.normal(size=(num_images, 16))
        held[num_images] = KReciprocalReranker(features[:100], features[100:]).nbytes
    assert held[3200] < 2.3 * held[1600]
    assert held[3200] < 20 * 3200**2 / 50  # far below the dense algorithm's 20 (Q + G)^2 bytes


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (dict(query_features=np.ones((3, 4)), gallery_features=np.ones((5, 3))), "differ in size"),
        (dict(query_features=np.ones((0, 4)), gallery_features=np.ones((5, 4))), "non-empty"),
        (dict(query_features=np.full((2, 4), np.nan), gallery_features=np.ones((5, 4))), "NaN"),
        (dict(query_features=np.ones((2, 4)), gallery_features=np.ones((5, 4)), k1=0), "positive integer k1"),
        (dict(query_features=np.ones((2, 4)), gallery_features=np.ones((5, 4)), k2=2.5), "positive integer k2"),
        (dict(query_features=np.ones((2, 4)), gallery_features=np.ones((5, 4)), lambda_value=1.5), r"\[0, 1\]"),
    ],
)
def test_bad_input_says_what_is_wrong(arguments, message):
    with pytest.raises(ReIDError, match=message):
        KReciprocalReranker(**arguments)


def test_a_query_range_outside_the_queries_is_refused():
    query, gallery, *_ = clustered_case(12, 5, 30, k=4)
    reranker = KReciprocalReranker(query, gallery, k1=4, k2=2)
    with pytest.raises(ReIDError, match="outside"):
        reranker.distances(-1, 2)
    with pytest.raises(IndexError, match="outside"):
        reranker[5]
