import numpy as np
import pytest

from siamese_reid.data.readers import Sample
from siamese_reid.errors import ReIDError
from siamese_reid.evaluation.embeddings import load_embeddings, save_embeddings


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
    from siamese_reid.data.readers import read_market_folder
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


def test_an_evaluated_model_is_not_kept_alive(tiny_demo):
    import gc
    import weakref

    from siamese_reid.config import ModelConfig
    from siamese_reid.data.readers import read_market_folder
    from siamese_reid.evaluation.embeddings import extract_embeddings
    from siamese_reid.model.embedding import build_embedding_model

    model = build_embedding_model(ModelConfig(vgg_blocks=1, embedding_dim=8), (32, 32))
    paths = [s.path for s in read_market_folder(tiny_demo / "query")[0][:2]]
    extract_embeddings(model, paths, (32, 32), batch_size=2)
    reference = weakref.ref(model)
    del model
    gc.collect()
    # An ablation, a notebook or a test suite evaluates many models in one process: a cache of
    # their inference steps must not keep them (and their weights) alive.
    assert reference() is None


def test_embed_images_flip_test_is_the_normalised_mean_of_an_image_and_its_mirror():
    import keras

    from siamese_reid.evaluation.embeddings import embed_images

    inputs = keras.Input((8, 4, 3))
    model = keras.Model(inputs, keras.layers.Dense(5)(keras.layers.Flatten()(inputs)))
    images = np.random.default_rng(0).uniform(0, 255, (3, 8, 4, 3)).astype("float32")
    plain = np.asarray(model(images))
    mirrored = np.asarray(model(images[:, :, ::-1, :]))
    expected = (plain + mirrored) / np.linalg.norm(plain + mirrored, axis=1, keepdims=True)
    np.testing.assert_allclose(embed_images(model, images, flip_test=True), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(embed_images(model, images), plain, rtol=1e-5, atol=1e-6)
