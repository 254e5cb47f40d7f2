import dataclasses
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

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
    with pytest.raises(
        ReIDError,
        match=r"valid names: \['vgg16', 'vgg16_bn', 'resnet50', 'mobilenetv2', 'osnet_x1_0', .*'osnet_ain_x1_0'\]",
    ):
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


def test_vgg16_bn_is_vgg16_with_batch_normalisation_after_every_convolution(tmp_path):
    # configuration D truncated after block 3: 2 + 2 + 3 convolutions of 64, 128 and 256 filters,
    # each followed by batch normalisation and a ReLU, a max pooling closing each block
    tower = tower_of(backbone="vgg16_bn", vgg_blocks=3)
    backbone = tower.get_layer("vgg16_bn")
    convolutions = [layer for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [layer.filters for layer in convolutions] == [64, 64, 128, 128, 256, 256, 256]
    assert not any(layer.use_bias for layer in convolutions)  # the normalisation's offset replaces it
    kinds = [type(layer).__name__ for layer in backbone.layers[1:]]
    assert kinds[:4] == ["Conv2D", "BatchNormalization", "ReLU", "Conv2D"]
    assert kinds.count("BatchNormalization") == 7 and kinds.count("MaxPooling2D") == 3
    assert backbone.output.shape[1:] == (4, 4, 256)  # 32x32 halved three times
    assert tower.predict(images(0), verbose=0).shape == (4, 8)
    normalisation = backbone.get_layer("block1_bn1")
    assert normalisation.momentum == 0.9 and normalisation.epsilon == 1e-5  # PyTorch's 0.1 and 1e-5
    # a weights file of the whole backbone (statistics as if trained, which no fresh build
    # has) loads into a truncated one, as for vgg16; Keras has no ImageNet weights for it
    from siamese_reid.model.backbones import build_backbone

    whole = build_backbone("vgg16_bn", "none", (32, 32, 3), vgg_blocks=5)
    assert whole.output.shape[1:] == (1, 1, 512)
    whole.get_layer("block2_bn1").moving_variance.assign(np.random.default_rng(0).uniform(0.5, 2.0, 128))
    whole.save_weights(tmp_path / "vgg16_bn.weights.h5")
    loaded = tower_of(backbone="vgg16_bn", vgg_blocks=3, weights=str(tmp_path / "vgg16_bn.weights.h5"))
    np.testing.assert_array_equal(
        loaded.get_layer("vgg16_bn").get_layer("block2_bn1").moving_variance.numpy(),
        whole.get_layer("block2_bn1").moving_variance.numpy(),
    )
    with pytest.raises(ReIDError, match="no Keras ImageNet weights for vgg16_bn: use model.weights=none"):
        tower_of(backbone="vgg16_bn", weights="imagenet")


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
        ("vgg16_bn", "block2_bn2", "block3_conv1"),
        ("resnet50", "conv2_block3_3_conv", "conv3_block1_1_conv"),
        ("mobilenetv2", "block_2_project", "block_3_expand"),
    ],
)
def test_freeze_blocks_freezes_the_first_blocks_of_every_backbone(backbone, first_frozen, first_trainable):
    # MobileNetV2 included, whose layers are named block_<n>_... and grouped into five stages.
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
    from siamese_reid.model.backbones import build_backbone, freeze_blocks

    backbone = build_backbone("mobilenetv2", "none", (64, 32, 3))
    with pytest.raises(ReIDError, match="between 0 and 5"):
        freeze_blocks(backbone, "mobilenetv2", 6)


def test_gem_pooling_stays_finite_under_mixed_float16():
    # x^3 of an activation above 40 overflows float16 (max 65504): GeM must compute in float32.
    from siamese_reid.model.pooling import POOLINGS

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        features = keras.ops.cast(np.full((1, 2, 2, 3), 50.0, "float32"), "float16")
        pooled = POOLINGS["gem"](features, "pool")
        tower = tower_of(pooling="gem")
        embeddings = tower(images(0) * 0 + 255.0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(pooled), 50.0, rtol=1e-3)
    assert np.isfinite(keras.ops.convert_to_numpy(embeddings)).all()


def stripe_means_reference(feature_map, stripes):
    """Per-stripe spatial means, concatenated top to bottom, with the rows shared out as
    PyTorch's AdaptiveAvgPool2d((stripes, 1)) does: stripe i spans floor(i H / n) to
    ceil((i + 1) H / n)."""
    height = feature_map.shape[1]
    pieces = []
    for i in range(stripes):
        start, end = int(np.floor(i * height / stripes)), int(np.ceil((i + 1) * height / stripes))
        pieces.append(feature_map[:, start:end].mean(axis=(1, 2)))
    return np.concatenate(pieces, axis=1)


@pytest.mark.parametrize("stripes", [1, 3, 8, 12])
def test_stripes_pool_each_horizontal_band_apart_as_adaptive_pooling_does(stripes):
    # 32x32 input, 2 VGG blocks: an 8x8x128 feature map; 3 stripes overlap by a row (0-3, 2-6, 5-8),
    # 12 stripes repeat rows.
    tower = tower_of(stripes=stripes)
    feature_map = (tower.get_layer("stripe_1") if stripes > 1 else tower.get_layer("pool")).input
    probe = keras.Model(tower.input, [feature_map, tower.get_layer("pool").output])
    features, pooled = probe.predict(images(7), verbose=0)
    assert features.shape[1:] == (8, 8, 128)
    np.testing.assert_allclose(pooled, stripe_means_reference(features, stripes), rtol=1e-5, atol=1e-6)
    assert tuple(tower.get_layer("projection").kernel.shape) == (stripes * 128, 8)


def test_a_backbone_leaving_fewer_rows_than_stripes_still_builds():
    # ResNet-50 at 64x32 leaves a 2x1 map: the default 4 stripes repeat its rows (stripes=12 on
    # 8 rows above checks the values).
    tower = build_embedding_model(ModelConfig(backbone="resnet50", stripes=4, embedding_dim=8), (64, 32))
    assert tower.get_layer("pool").output.shape == (None, 4 * 2048)


def test_saved_tower_loads_with_plain_keras_in_a_fresh_process(tmp_path):
    # The README's loading line, as a user runs it: no `import siamese_reid` first. GeM and
    # stripes are keras.ops calls and stock layers: nothing custom to register.
    tower = tower_of(pooling="gem", stripes=3)
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


# ---------------------------------------------------------------------------------------------
# Last stride 1 (ResNet-50)


@pytest.fixture(scope="module")
def resnet50_weights_file(tmp_path_factory):
    """A local no-top ResNet-50 weights file (random, as ImageNet weights cannot be downloaded)."""
    keras.utils.set_random_seed(7)
    path = tmp_path_factory.mktemp("weights") / "resnet50_notop.weights.h5"
    source = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(256, 128, 3))
    source.save_weights(path)
    return path, {w.path: w.numpy() for w in source.weights}


def test_last_stride_one_doubles_the_feature_map_with_the_same_weights(resnet50_weights_file):
    from siamese_reid.model.backbones import build_backbone

    path, source_weights = resnet50_weights_file
    strided = build_backbone("resnet50", str(path), (256, 128, 3))
    unstrided = build_backbone("resnet50", str(path), (256, 128, 3), last_stride=1)
    assert strided.output.shape[1:3] == (8, 4)
    assert unstrided.output.shape[1:3] == (16, 8)
    assert [w.shape for w in unstrided.weights] == [w.shape for w in strided.weights]
    for weight in unstrided.weights:  # every weight is the file's
        np.testing.assert_array_equal(weight.numpy(), source_weights[weight.path])
    # With stride 1 the last stage's first 1x1 convolution computes on every position instead of
    # every second one: the stride-2 output is the stride-1 output subsampled.
    batch = images(0, 1, (256, 128))

    def last_stage_input(model):
        return keras.Model(model.input, model.get_layer("conv5_block1_1_conv").output).predict(batch, verbose=0)

    dense, strided_output = last_stage_input(unstrided), last_stage_input(strided)
    assert dense.shape[1:3] == (16, 8) and strided_output.shape[1:3] == (8, 4)
    np.testing.assert_allclose(dense[:, ::2, ::2], strided_output, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backbone_name", ["vgg16", "vgg16_bn"])
def test_vgg_last_stride_one_ends_before_the_last_pooling_with_the_same_weights(backbone_name):
    from siamese_reid.model.backbones import build_backbone

    keras.utils.set_random_seed(3)
    strided = build_backbone(backbone_name, None, (128, 64, 3), vgg_blocks=4)
    unstrided = build_backbone(backbone_name, None, (128, 64, 3), vgg_blocks=4, last_stride=1)
    assert strided.output.shape[1:] == (8, 4, 512)
    assert unstrided.output.shape[1:] == (16, 8, 512)
    unstrided.set_weights(strided.get_weights())  # the same weights fit: no layer was added
    batch = images(0, 2, (128, 64))
    dense, pooled = unstrided.predict(batch, verbose=0), strided.predict(batch, verbose=0)
    # The strided map is the unstrided one max-pooled over 2x2 windows, written out here.
    windows = dense.reshape(2, 8, 2, 4, 2, 512).max(axis=(2, 4))
    np.testing.assert_allclose(windows, pooled, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backbone", ["mobilenetv2", "osnet_x0_25"])
def test_last_stride_one_is_refused_for_other_backbones(backbone):
    with pytest.raises(ReIDError, match=f"last_stride 1 is implemented for .* only, not {backbone}"):
        tower_of(backbone=backbone, last_stride=1)


# ---------------------------------------------------------------------------------------------
# BNNeck, ID classifier and identity centres: the P x K training model around the tower


def bnneck_tower():
    """A small tower whose BNNeck has non-trivial scale and moving statistics."""
    keras.utils.set_random_seed(3)
    tower = build_embedding_model(SMALL, SIZE)
    randomise_batch_norm(tower.get_layer("bnneck"), np.random.default_rng(4))
    return tower


def randomise_batch_norm(layer, rng):
    """Non-trivial scale and moving statistics for a BatchNorm without shift (gamma, mean, variance)."""
    gamma, mean, variance = (w.numpy() for w in layer.weights)
    layer.set_weights(
        [rng.uniform(0.5, 2.0, gamma.shape), rng.normal(size=mean.shape), rng.uniform(0.5, 2, variance.shape)]
    )


def numpy_batch_norm(layer, features):
    """Inference batch normalisation from the layer's weights: (x - mean) / sqrt(var + eps) * gamma."""
    weights = {w.path.split("/")[-1]: w.numpy() for w in layer.weights}
    assert "beta" not in weights  # no learned shift, as the BNNeck
    return (features - weights["moving_mean"]) / np.sqrt(weights["moving_variance"] + layer.epsilon) * weights["gamma"]


def projection_of(tower, batch):
    return keras.Model(tower.input, tower.get_layer("projection").output).predict(batch, verbose=0)


def test_bnneck_triplet_sees_the_pre_bn_feature_id_the_post_bn_feature_inference_the_normalised_one():
    from siamese_reid.model.training_model import build_pk_training_model

    tower = bnneck_tower()
    model = build_pk_training_model(tower, 5, "pre_bnneck", id_loss=True)
    batch = images(5)
    outputs = model.predict(batch, verbose=0)
    projection = projection_of(tower, batch)
    after_bn = numpy_batch_norm(tower.get_layer("bnneck"), projection)
    np.testing.assert_allclose(outputs["triplet"], projection, rtol=1e-5, atol=1e-5)
    classifier = model.get_layer("classifier")
    assert len(classifier.weights) == 1  # no bias, as in the reference code
    np.testing.assert_allclose(outputs["id"], after_bn @ classifier.kernel.numpy(), rtol=1e-4, atol=1e-6)
    expected = after_bn / np.linalg.norm(after_bn, axis=1, keepdims=True)
    np.testing.assert_allclose(tower.predict(batch, verbose=0), expected, rtol=1e-4, atol=1e-5)
    assert tower.get_layer("bnneck").center is False  # no learned shift (the reference freezes it at 0)


def test_the_triplet_loss_is_computed_on_the_pre_bn_feature():
    from siamese_reid.losses import TripletHardLoss, triplet_hard_loss
    from siamese_reid.model.training_model import build_pk_training_model

    tower = bnneck_tower()
    model = build_pk_training_model(tower, 5, "pre_bnneck", id_loss=True)
    model.compile(loss={"triplet": TripletHardLoss(margin=0.3), "id": "sparse_categorical_crossentropy"})
    batch, labels = images(6), np.array([0, 0, 1, 1])
    losses = model.evaluate(batch, {"triplet": labels, "id": labels}, verbose=0, return_dict=True)
    on_projection = float(triplet_hard_loss(labels, projection_of(tower, batch), margin=0.3))
    on_embedding = float(triplet_hard_loss(labels, tower.predict(batch, verbose=0), margin=0.3))
    assert losses["triplet_loss"] == pytest.approx(on_projection, rel=1e-4)
    assert losses["triplet_loss"] != pytest.approx(on_embedding, rel=1e-2)


def test_identity_centres_move_by_one_sgd_step_per_batch_as_defined():
    from siamese_reid.losses.identity import CenterLoss
    from siamese_reid.model.training_model import build_pk_training_model

    tower = bnneck_tower()
    model = build_pk_training_model(tower, 4, "pre_bnneck", id_loss=False, center_loss=True)
    # learning rate 0: the tower stays, so the features of the step are known in advance
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss={"triplet": "mse", "center": CenterLoss()})
    centers = model.get_layer("identity_centers").centers
    before = centers.numpy().copy()
    batch, labels = images(7), np.array([2, 2, 0, 2])
    features = projection_of(tower, batch).astype(np.float64)
    logs = model.train_on_batch((batch, labels), {"triplet": features, "center": labels}, return_dict=True)
    expected_loss = np.mean([np.sum((features[i] - before[labels[i]]) ** 2) for i in range(4)])
    assert logs["center_loss"] == pytest.approx(expected_loss, rel=1e-4)
    expected = before.astype(np.float64).copy()
    for identity in range(4):  # c_j <- c_j + 0.5 x (2 / batch) x sum over its samples of (x_i - c_j)
        members = features[labels == identity]
        expected[identity] += 0.5 * 2 / 4 * np.sum(members - before[identity], axis=0)
    np.testing.assert_allclose(centers.numpy(), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(centers.numpy()[[1, 3]], before[[1, 3]])  # absent identities stay


def test_the_saved_tower_holds_no_classifier_or_centres_and_loads_with_plain_keras(tmp_path):
    from siamese_reid.checkpoints import EmbeddingCheckpoint
    from siamese_reid.losses import TripletHardLoss
    from siamese_reid.losses.identity import CenterLoss, LabelSmoothedCrossEntropy
    from siamese_reid.model.training_model import build_pk_training_model, fit_batches

    tower = bnneck_tower()
    model = build_pk_training_model(tower, 3, "pre_bnneck", id_loss=True, center_loss=True)
    model.compile(
        optimizer="adam",
        loss={"triplet": TripletHardLoss(0.3), "id": LabelSmoothedCrossEntropy(0.1), "center": CenterLoss()},
    )
    import tensorflow as tf

    labels = np.array([0, 0, 1, 1, 2, 2], np.int32)
    dataset = fit_batches(tf.data.Dataset.from_tensors((images(8, 6), labels)).repeat(2), model)
    checkpoint = EmbeddingCheckpoint(tower, tmp_path)
    model.fit(dataset, epochs=1, steps_per_epoch=2, callbacks=[checkpoint], verbose=0, shuffle=False)
    saved = keras.saving.load_model(tmp_path / "last.keras")
    names = [w.path for w in saved.weights]
    assert not [name for name in names if "classifier" in name or "centers" in name]
    assert len(saved.weights) == len(tower.weights)
    assert {w.path for w in model.weights} - {w.path for w in tower.weights} == {
        "classifier/kernel",
        "identity_centers/centers",
    }
    batch = images(9)
    np.testing.assert_allclose(saved.predict(batch, verbose=0), tower.predict(batch, verbose=0), atol=1e-6)


def test_identity_centres_take_the_global_batch_step_across_replicas(tmp_path, project_root):
    # Two replicas each see half of the batch; the "mean" aggregation of the centres must give
    # the step on the whole batch. In a fresh process: logical devices are set before TF starts.
    script = """
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import dataclasses, keras
from siamese_reid.config import ModelConfig
from siamese_reid.losses.identity import CenterLoss, center_update
from siamese_reid.model import build_embedding_model
from siamese_reid.model.training_model import build_pk_training_model
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    tower = build_embedding_model(ModelConfig(vgg_blocks=2, embedding_dim=8), (32, 32))
    model = build_pk_training_model(tower, 4, "pre_bnneck", id_loss=False, center_loss=True)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss={"triplet": "mse", "center": CenterLoss()})
centers = model.get_layer("identity_centers").centers
before = np.array(centers.numpy())
images = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
labels = np.array([0, 0, 1, 1, 2, 2, 3, 3], "int32")
features = keras.Model(tower.input, tower.get_layer("projection").output).predict(images, verbose=0)
dataset = tf.data.Dataset.from_tensors((images, labels)).map(
    lambda x, y: ((x, y), {"triplet": tf.zeros((8, 8)), "center": y}))
model.fit(dataset, epochs=1, steps_per_epoch=1, verbose=0)
expected = keras.ops.convert_to_numpy(center_update(labels, features, before, 0.5))
np.testing.assert_allclose(np.array(centers.numpy()), expected, rtol=1e-4, atol=1e-5)
assert np.abs(expected - before).max() > 0.1
print("global step")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=project_root, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "global step" in result.stdout


def test_embedding_dim_zero_means_no_projection_the_pooled_feature_goes_through_the_bnneck(tmp_path):
    # The strong baseline normalises the pooled backbone feature itself (2048-d for ResNet-50).
    config = ModelConfig(vgg_blocks=2, stripes=1, embedding_dim=0, bnneck=True)
    tower = build_embedding_model(config, SIZE)
    assert tower.output_shape == (None, 128)  # VGG16 block 2 has 128 channels
    assert not [layer for layer in tower.layers if isinstance(layer, keras.layers.Dense)]
    batch = images(3)
    pooled = keras.Model(tower.input, tower.get_layer("projection").input).predict(batch, verbose=0)
    np.testing.assert_allclose(projection_of(tower, batch), pooled)
    after_bn = numpy_batch_norm(tower.get_layer("bnneck"), pooled)
    expected = after_bn / np.linalg.norm(after_bn, axis=1, keepdims=True)
    np.testing.assert_allclose(tower.predict(batch, verbose=0), expected, rtol=1e-4, atol=1e-5)
    tower.save(tmp_path / "tower.keras")
    reloaded = keras.saving.load_model(tmp_path / "tower.keras", compile=False)
    np.testing.assert_allclose(reloaded.predict(batch, verbose=0), tower.predict(batch, verbose=0), atol=1e-6)


def test_a_one_dimensional_embedding_is_refused():
    from siamese_reid.config import load_config

    with pytest.raises(ReIDError, match="embedding_dim' must be 0"):
        load_config(None, ["model.embedding_dim=1"])


def test_a_mixed_precision_tower_is_saved_and_exported_as_its_float32_copy(tmp_path):
    from siamese_reid.export import export_model
    from siamese_reid.model.float32 import all_layers, float32_copy

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(0)
        tower = build_embedding_model(SMALL, SIZE)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert tower.get_layer("projection").dtype_policy.compute_dtype == "bfloat16"
    copy = float32_copy(tower)
    layers = list(all_layers(copy))
    assert any(isinstance(layer, keras.Model) for layer in layers)  # the backbone's layers too
    assert {layer.dtype_policy.compute_dtype for layer in layers} == {"float32"}
    for original, copied in zip(tower.weights, copy.weights, strict=True):
        np.testing.assert_array_equal(original.numpy(), copied.numpy())
    batch = images(1)
    # the same network: bfloat16 rounding apart (about 3 significant digits)
    np.testing.assert_allclose(copy.predict(batch, verbose=0), tower.predict(batch, verbose=0), atol=3e-2)
    assert float32_copy(copy) is copy
    # the export is the float32 copy: LiteRT refuses a bfloat16 graph ("FlexConv2D failed to prepare")
    output = export_model(tower, "litert", tmp_path / "litert")
    interpreter = tf.lite.Interpreter(model_path=str(output / "model.tflite"))
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], batch.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], batch)
    interpreter.invoke()
    exported = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(exported, copy.predict(batch, verbose=0), atol=1e-5)


@pytest.mark.parametrize("pooling", ["gem", "avg"])
def test_the_float32_copy_of_a_mixed_precision_tower_computes_as_the_float32_tower(pooling):
    # GeM pooling is keras.ops calls, not layers: the copy clones them too, without the dtype
    # they do not take (a GeM run under the default precision "auto" is scored on the copy).
    from siamese_reid.model.float32 import float32_copy

    keras.utils.set_random_seed(0)
    reference = tower_of(pooling=pooling)  # built under float32
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        tower = tower_of(pooling=pooling)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    tower.set_weights(reference.get_weights())
    batch = images(2)
    copy = float32_copy(tower)
    np.testing.assert_allclose(copy.predict(batch, verbose=0), reference.predict(batch, verbose=0), atol=1e-6)


def test_the_float32_mirror_follows_the_trained_towers_weights():
    # What scoring and checkpoints use during a bfloat16 run: it must see each epoch's weights.
    from siamese_reid.model.float32 import Float32Mirror

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        tower = tower_of()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    mirror = Float32Mirror(tower)
    first = mirror.current()
    kernel = tower.get_layer("projection").kernel
    kernel.assign(kernel.numpy() + 1.0)
    assert mirror.current() is first  # one copy, refreshed
    np.testing.assert_array_equal(first.get_layer("projection").kernel.numpy(), kernel.numpy())
    assert first.get_layer("projection").dtype_policy.compute_dtype == "float32"
    float32_tower = tower_of()
    assert Float32Mirror(float32_tower).current() is float32_tower


def numpy_label_smoothed_cross_entropy(labels, logits, epsilon):
    """Mean over the batch of -sum_k q_k log softmax(logits)_k, q = (1 - eps) one-hot + eps / N."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    targets = np.full(logits.shape, epsilon / logits.shape[1])
    targets[np.arange(len(labels)), labels] += 1 - epsilon
    return float(np.mean(-(targets * log_softmax).sum(axis=1)))


STRIPE_HEADS = ["model.vgg_blocks=2", "model.embedding_dim=8", "loss.triplet_feature=pre_bnneck", "loss.id_weight=1"]


def stripe_training_model(pooling="avg", height=32, stripe_id_weight=0.8, stripes=4):
    """The training model a config with per-stripe ID losses asks for (5 identities), the heads'
    moving statistics randomised. vgg_blocks=2: a (height / 4) x 8 map."""
    from siamese_reid.config import load_config
    from siamese_reid.model.building import build_tower, model_to_fit

    overrides = [f"model.pooling={pooling}", f"model.stripes={stripes}", f"loss.stripe_id_weight={stripe_id_weight}"]
    config = load_config(None, STRIPE_HEADS + overrides + [f"data.image_height={height}", "data.image_width=32"])
    tower = build_tower(config)
    model, loss = model_to_fit(tower, config, 5)
    rng = np.random.default_rng(11)
    for index in range(1, stripes + 1):
        randomise_batch_norm(model.get_layer(f"stripe_bnneck_{index}"), rng)
    return tower, model, loss


def numpy_pool(rows, pooling):
    """Pooling of [batch, rows, width, channels] over space, from its definition."""
    if pooling == "avg":
        return rows.mean(axis=(1, 2))
    cubes = np.maximum(rows.astype(np.float64), 1e-6) ** 3  # GeM, p = 3 (Radenovic et al.)
    return cubes.mean(axis=(1, 2)) ** (1 / 3)


@pytest.mark.parametrize(("pooling", "height"), [("avg", 32), ("gem", 36)])
def test_each_stripe_has_its_own_classifier_on_its_own_rows(pooling, height):
    # PCB (Sun et al.): stripe i's logits are its own rows' pooled feature through its own BN and
    # classifier. Rows as adaptive pooling shares them: floor(i H / n) to ceil((i + 1) H / n);
    # at 36 pixels the map has 9 rows and neighbouring stripes share one.
    tower, model, _ = stripe_training_model(pooling, height)
    batch = images(12, size=(height, 32))
    feature_map = keras.Model(tower.input, tower.get_layer("stripe_1").input).predict(batch, verbose=0)
    rows = feature_map.shape[1]
    assert rows == height // 4
    outputs = model.predict(batch, verbose=0)
    for index in range(1, 5):
        top, bottom = (index - 1) * rows // 4, -(-index * rows // 4)
        pooled = numpy_pool(feature_map[:, top:bottom], pooling)
        normalised = numpy_batch_norm(model.get_layer(f"stripe_bnneck_{index}"), pooled)
        classifier = model.get_layer(f"stripe_classifier_{index}")
        assert len(classifier.weights) == 1  # no bias
        np.testing.assert_allclose(
            outputs[f"stripe_id_{index}"], normalised @ classifier.kernel.numpy(), rtol=1e-4, atol=1e-5
        )
    # the heads train the tower but are not part of it: a checkpoint of the tower holds none of them
    extra = {w.path for w in model.weights} - {w.path for w in tower.weights}
    assert {path.split("/")[0] for path in extra} == {"classifier"} | {
        f"stripe_{part}_{index}" for part in ("bnneck", "classifier") for index in range(1, 5)
    }


def test_the_stripe_losses_are_averaged_then_weighted():
    from siamese_reid.model.training_model import compile_arguments

    _, model, loss = stripe_training_model(stripe_id_weight=0.8)
    arguments = compile_arguments(loss, model)
    model.compile(**arguments)
    assert [arguments["loss_weights"][f"stripe_id_{index}"] for index in range(1, 5)] == [0.2] * 4
    batch, labels = images(13, 6), np.array([0, 0, 3, 3, 4, 4])
    logs = model.evaluate(batch, {name: labels for name in model.output}, verbose=0, return_dict=True)
    outputs = model.predict(batch, verbose=0)
    stripe_losses = [
        numpy_label_smoothed_cross_entropy(labels, outputs[f"stripe_id_{index}"], 0.1) for index in range(1, 5)
    ]
    for index, expected in enumerate(stripe_losses, start=1):
        assert logs[f"stripe_id_{index}_loss"] == pytest.approx(expected, rel=1e-4)
    total = logs["triplet_loss"] + logs["id_loss"] + 0.8 * np.mean(stripe_losses)
    assert logs["loss"] == pytest.approx(total, rel=1e-4)


@pytest.mark.parametrize("pooling", ["avg", "gem"])
def test_a_globally_pooled_tower_has_no_stripes_to_classify(pooling):
    from siamese_reid.model.training_model import build_pk_training_model

    with pytest.raises(ValueError, match="2 or more stripes"):
        build_pk_training_model(tower_of(stripes=1, pooling=pooling), 5, "pre_bnneck", stripe_id_loss=True)


def test_more_stripes_than_rows_is_refused_rather_than_training_copies():
    # 8 rows for 10 stripes: pool_stripes would repeat rows, and two classifiers learn the same
    with pytest.raises(ReIDError, match="leaves 8 rows for 10 stripes"):
        stripe_training_model(stripes=10)
