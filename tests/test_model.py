import keras
import numpy as np
import pytest

from siamese_reid.errors import ReIDError
from siamese_reid.model.embedding import TowerSpec, build_embedding_model, load_embedding_model
from siamese_reid.model.siamese import SiameseModel

SMALL = TowerSpec(image_height=32, image_width=32, vgg_blocks=2, embedding_dim=8)


def images(seed, batch=4, spec=SMALL):
    return (
        np.random.default_rng(seed).uniform(0, 255, (batch, spec.image_height, spec.image_width, 3)).astype("float32")
    )


def test_embeddings_are_unit_length_float32():
    embeddings = build_embedding_model(SMALL).predict(images(0), verbose=0)
    assert embeddings.shape == (4, 8) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)


def test_three_branches_share_one_set_of_variables():
    tower = build_embedding_model(SMALL)
    siamese = SiameseModel(tower)
    siamese((images(0), images(1), images(2)))
    assert {id(v) for v in siamese.trainable_variables} == {id(v) for v in tower.trainable_variables}
    assert len(siamese.weights) == len(tower.weights)
    # changing the tower's weights changes all three branches
    before = siamese((images(0), images(0), images(0)), training=False).numpy()
    np.testing.assert_allclose(before[:, 0], before[:, 1], rtol=1e-5)
    np.testing.assert_allclose(before[:, 0], before[:, 2], rtol=1e-5)


def test_batched_and_separate_branches_agree_at_inference():
    tower = build_embedding_model(SMALL)
    inputs = (images(0), images(1), images(2))
    batched = SiameseModel(tower, "batched")(inputs, training=False).numpy()
    separate = SiameseModel(tower, "separate")(inputs, training=False).numpy()
    np.testing.assert_allclose(batched, separate, atol=1e-5)


def test_saved_tower_reloads_with_identical_embeddings(tmp_path):
    spec = TowerSpec(image_height=32, image_width=32, vgg_blocks=2, embedding_dim=8, pooling="gem")
    tower = build_embedding_model(spec)
    tower.save(tmp_path / "tower.keras")
    reloaded = load_embedding_model(tmp_path / "tower.keras")
    np.testing.assert_array_equal(tower.predict(images(3), verbose=0), reloaded.predict(images(3), verbose=0))


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(ReIDError, match="does not exist"):
        load_embedding_model(tmp_path / "missing.keras")
    (tmp_path / "junk.keras").write_text("not a model")
    with pytest.raises(ReIDError, match="not a loadable Keras model"):
        load_embedding_model(tmp_path / "junk.keras")


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ReIDError, match=r"valid names: \['mobilenetv2', 'resnet50', 'vgg16'\]"):
        build_embedding_model(TowerSpec(backbone="alexnet"))


@pytest.mark.parametrize("backbone", ["resnet50", "mobilenetv2"])
def test_other_backbones_build(backbone):
    spec = TowerSpec(backbone=backbone, image_height=64, image_width=32, embedding_dim=8)
    assert build_embedding_model(spec).predict(images(0, 2, spec), verbose=0).shape == (2, 8)


def test_imagenet_download_failure_explains_what_to_do(monkeypatch):
    def offline(*args, **kwargs):
        raise Exception(
            "URL fetch failure on https://storage.googleapis.com/...: None -- "
            "[Errno -3] Temporary failure in name resolution"
        )

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr("keras.src.applications.vgg16.file_utils.get_file", offline)
    with pytest.raises(ReIDError, match="could not download ImageNet weights for vgg16.*model.weights=none"):
        build_embedding_model(TowerSpec(weights="imagenet", image_height=32, image_width=32))


def test_local_weights_file_is_loaded(tmp_path):
    source = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    source.save_weights(tmp_path / "vgg16_notop.weights.h5")
    spec = TowerSpec(weights=str(tmp_path / "vgg16_notop.weights.h5"), image_height=32, image_width=32)
    tower = build_embedding_model(spec)
    loaded = tower.get_layer("vgg16").get_layer("block1_conv1").kernel.numpy()
    np.testing.assert_array_equal(loaded, source.get_layer("block1_conv1").kernel.numpy())
    with pytest.raises(ReIDError, match="neither 'none', 'imagenet' nor an existing weights file"):
        build_embedding_model(TowerSpec(weights=str(tmp_path / "missing.h5")))


def test_freezing_blocks_and_truncating_vgg():
    tower = build_embedding_model(TowerSpec(image_height=32, image_width=32, vgg_blocks=3, freeze_blocks=2))
    backbone = tower.get_layer("vgg16")
    assert backbone.output.shape[-1] == 256  # block3
    frozen = {layer.name for layer in backbone.layers if layer.weights and not layer.trainable}
    assert frozen == {"block1_conv1", "block1_conv2", "block2_conv1", "block2_conv2"}
