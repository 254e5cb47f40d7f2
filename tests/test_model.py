import dataclasses
import subprocess
import sys

import keras
import numpy as np
import pytest

from siamese_reid.config import ModelConfig
from siamese_reid.errors import ReIDError
from siamese_reid.model import build_embedding_model, build_siamese_model, load_embedding_model

SMALL = ModelConfig(vgg_blocks=2, embedding_dim=8)
SIZE = (32, 32)


def images(seed, batch=4, size=SIZE):
    return np.random.default_rng(seed).uniform(0, 255, (batch, *size, 3)).astype("float32")


def tower_of(**changes):
    return build_embedding_model(dataclasses.replace(SMALL, **changes), SIZE)


def test_embeddings_are_unit_length_float32():
    embeddings = build_embedding_model(SMALL, SIZE).predict(images(0), verbose=0)
    assert embeddings.shape == (4, 8) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)


def test_three_branches_share_one_set_of_variables():
    tower = build_embedding_model(SMALL, SIZE)
    siamese = build_siamese_model(tower)
    assert {id(v) for v in siamese.trainable_variables} == {id(v) for v in tower.trainable_variables}
    assert len(siamese.weights) == len(tower.weights)
    # changing the tower's weights changes all three branches
    before = siamese((images(0), images(0), images(0)), training=False).numpy()
    np.testing.assert_allclose(before[:, 0], before[:, 1], rtol=1e-5)
    np.testing.assert_allclose(before[:, 0], before[:, 2], rtol=1e-5)


def test_batched_and_separate_branches_agree_at_inference():
    tower = build_embedding_model(SMALL, SIZE)
    inputs = (images(0), images(1), images(2))
    batched = build_siamese_model(tower, "batched")(inputs, training=False).numpy()
    separate = build_siamese_model(tower, "separate")(inputs, training=False).numpy()
    np.testing.assert_allclose(batched, separate, atol=1e-5)


def test_siamese_model_saves_and_reloads_without_a_build_call(tmp_path):
    model = build_siamese_model(build_embedding_model(SMALL, SIZE))
    assert model.built and len(model.weights) > 0  # variables exist before any call (BackupAndRestore)
    model.save(tmp_path / "siamese.keras")
    reloaded = keras.saving.load_model(tmp_path / "siamese.keras")
    inputs = (images(0), images(1), images(2))
    np.testing.assert_allclose(reloaded(inputs).numpy(), model(inputs).numpy(), atol=1e-6)


def test_saved_tower_reloads_with_identical_embeddings(tmp_path):
    tower = tower_of(pooling="gem")
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
    with pytest.raises(ReIDError, match=r"valid names: \['vgg16', 'resnet50', 'mobilenetv2'\]"):
        tower_of(backbone="alexnet")


@pytest.mark.parametrize("backbone", ["resnet50", "mobilenetv2"])
def test_other_backbones_build(backbone):
    tower = build_embedding_model(dataclasses.replace(SMALL, backbone=backbone), (64, 32))
    assert tower.predict(images(0, 2, (64, 32)), verbose=0).shape == (2, 8)


def test_imagenet_download_failure_explains_what_to_do(monkeypatch):
    def offline(*args, **kwargs):
        raise Exception(
            "URL fetch failure on https://storage.googleapis.com/...: None -- "
            "[Errno -3] Temporary failure in name resolution"
        )

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr("keras.src.applications.vgg16.file_utils.get_file", offline)
    with pytest.raises(ReIDError, match="could not download ImageNet weights for vgg16.*model.weights=none"):
        tower_of(weights="imagenet")


def test_local_weights_file_is_loaded(tmp_path):
    source = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    source.save_weights(tmp_path / "vgg16_notop.weights.h5")
    tower = build_embedding_model(ModelConfig(weights=str(tmp_path / "vgg16_notop.weights.h5")), SIZE)
    loaded = tower.get_layer("vgg16").get_layer("block1_conv1").kernel.numpy()
    np.testing.assert_array_equal(loaded, source.get_layer("block1_conv1").kernel.numpy())
    with pytest.raises(ReIDError, match="neither 'none', 'imagenet' nor an existing weights file"):
        tower_of(weights=str(tmp_path / "missing.h5"))


def test_freezing_blocks_and_truncating_vgg():
    tower = tower_of(vgg_blocks=3, freeze_blocks=2)
    backbone = tower.get_layer("vgg16")
    assert backbone.output.shape[-1] == 256  # block3
    frozen = {layer.name for layer in backbone.layers if layer.weights and not layer.trainable}
    assert frozen == {"block1_conv1", "block1_conv2", "block2_conv1", "block2_conv2"}


@pytest.mark.parametrize(
    ("backbone", "first_frozen", "first_trainable"),
    [
        ("vgg16", "block2_conv2", "block3_conv1"),
        ("resnet50", "conv2_block3_3_conv", "conv3_block1_1_conv"),
        ("mobilenetv2", "block_2_project", "block_3_expand"),
    ],
)
def test_freeze_blocks_freezes_the_first_blocks_of_every_backbone(backbone, first_frozen, first_trainable):
    # MobileNetV2 used to freeze nothing, silently.
    tower = build_embedding_model(ModelConfig(backbone=backbone, vgg_blocks=5, freeze_blocks=2), (64, 32))
    base = next(layer for layer in tower.layers if isinstance(layer, keras.Model))
    layers = {layer.name: layer for layer in base.layers}
    assert not layers[first_frozen].trainable and layers[first_trainable].trainable
    frozen = [layer for layer in base.layers if layer.weights and not layer.trainable]
    trainable = [layer for layer in base.layers if layer.weights and layer.trainable]
    assert frozen and trainable
    # every frozen layer comes before every trainable one in the network
    order = [layer.name for layer in base.layers]
    assert max(order.index(layer.name) for layer in frozen) < min(order.index(layer.name) for layer in trainable)


def test_freeze_blocks_beyond_the_backbone_names_the_valid_range():
    from siamese_reid.model.embedding import build_backbone, freeze_blocks

    backbone = build_backbone("mobilenetv2", "none", (64, 32, 3))
    with pytest.raises(ReIDError, match="between 0 and 5"):
        freeze_blocks(backbone, "mobilenetv2", 6)


def test_gem_pooling_stays_finite_under_mixed_float16():
    # x^3 of an activation above 40 overflows float16 (max 65504): GeM must compute in float32.
    from siamese_reid.model.embedding import POOLINGS

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        features = keras.ops.cast(np.full((1, 2, 2, 3), 50.0, "float32"), "float16")
        pooled = POOLINGS["gem"](features)
        tower = tower_of(pooling="gem")
        embeddings = tower(images(0) * 0 + 255.0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(pooled), 50.0, rtol=1e-3)
    assert np.isfinite(keras.ops.convert_to_numpy(embeddings)).all()


def test_saved_tower_loads_with_plain_keras_in_a_fresh_process(tmp_path):
    # The README's loading line, as a user runs it: no `import siamese_reid` first.
    tower = tower_of(pooling="gem")
    tower.save(tmp_path / "last.keras")
    np.save(tmp_path / "images.npy", images(5))
    np.save(tmp_path / "expected.npy", tower.predict(images(5), verbose=0))
    script = (
        "import keras, numpy as np\n"
        f"model = keras.saving.load_model({str(tmp_path / 'last.keras')!r})\n"
        f"got = model.predict(np.load({str(tmp_path / 'images.npy')!r}), verbose=0)\n"
        f"np.testing.assert_allclose(got, np.load({str(tmp_path / 'expected.npy')!r}), atol=1e-6)\n"
        "import sys; assert 'siamese_reid' not in sys.modules\n"
        "print('loaded')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "loaded" in result.stdout


def test_a_keras_model_that_is_not_an_embedding_tower_is_refused(tmp_path):
    classifier = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(10)])
    images_to_images = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(3, 1)])
    vectors = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8)])
    for name, model in (("images", images_to_images), ("vectors", vectors)):
        model.save(tmp_path / f"{name}.keras")
        with pytest.raises(ReIDError, match="not an embedding tower"):
            load_embedding_model(tmp_path / f"{name}.keras")
    classifier.save(tmp_path / "classifier.keras")  # images -> [batch, 10]: usable as a tower
    assert load_embedding_model(tmp_path / "classifier.keras").output_shape == (None, 10)
