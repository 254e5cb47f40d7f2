import numpy as np
import pytest

from siamese_reid.data.records import Sample
from siamese_reid.errors import ReIDError
from siamese_reid.evaluation.embeddings import load_embeddings, save_embeddings
from siamese_reid.evaluation.rerank import rerank_distances


def reference_rerank(query, gallery, k1, k2, lambda_value):
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


@pytest.mark.parametrize(("seed", "k1", "k2"), [(0, 4, 2), (1, 6, 3), (2, 5, 1)])
def test_rerank_matches_reference(seed, k1, k2):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(4, 6))
    labels = rng.integers(0, 4, 26)
    features = centers[labels] + 0.4 * rng.normal(size=(26, 6))
    query, gallery = features[:8], features[8:]
    got = rerank_distances(query, gallery, k1=k1, k2=k2, lambda_value=0.3)
    np.testing.assert_allclose(got, reference_rerank(query, gallery, k1, k2, 0.3), atol=2e-5)


def test_embeddings_round_trip_without_pickle(tmp_path):
    features = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    samples = [Sample("/a/0001_c1.jpg", 1, 1), Sample("/b/x.jpg", -1, 2), Sample("/c/y.jpg", 0, 3)]
    save_embeddings(tmp_path / "e.npz", features, samples)
    loaded_features, loaded_samples = load_embeddings(tmp_path / "e.npz")
    np.testing.assert_array_equal(loaded_features, features)
    assert loaded_samples == samples
    with np.load(tmp_path / "e.npz", allow_pickle=False) as data:
        assert set(data.files) == {"features", "pids", "camids", "paths", "sources"}
    with pytest.raises(ReIDError, match="does not exist"):
        load_embeddings(tmp_path / "missing.npz")


@pytest.mark.parametrize("batch_size", [2, 3, 64])
def test_flip_test_embedding_is_the_normalised_mean_of_image_and_mirror(tiny_demo, batch_size, tmp_path):
    from siamese_reid.config import ModelConfig
    from siamese_reid.data.images import decode_image
    from siamese_reid.data.records import read_market_folder
    from siamese_reid.evaluation.embeddings import extract_embeddings
    from siamese_reid.model.embedding import build_embedding_model

    model = build_embedding_model(ModelConfig(vgg_blocks=2, embedding_dim=8), (32, 32))
    paths = [s.path for s in read_market_folder(tiny_demo / "query")[0][:5]]
    images = np.stack([decode_image(path, 32, 32).numpy() for path in paths])
    expected = model.predict(images, verbose=0) + model.predict(images[:, :, ::-1], verbose=0)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    got = extract_embeddings(model, paths, (32, 32), batch_size=batch_size, flip_test=True)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    plain = extract_embeddings(model, paths, (32, 32), batch_size=batch_size)
    np.testing.assert_allclose(plain, model.predict(images, verbose=0), atol=1e-5)
    # Written to disk batch by batch: the same embeddings, in a .npy file the caller can open.
    on_disk = extract_embeddings(
        model, paths, (32, 32), batch_size=batch_size, flip_test=True, output_path=tmp_path / "features.npy"
    )
    assert isinstance(on_disk, np.memmap)
    np.testing.assert_array_equal(np.load(tmp_path / "features.npy"), got)
    assert [p.name for p in tmp_path.iterdir()] == ["features.npy"]  # no temporary file left
