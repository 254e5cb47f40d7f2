"""OSNet backbones against torchreid 0.2.5, without PyTorch: the reference numbers (parameter
counts, state-dict names and shapes, features of random and real images) were written by torchreid
itself (tools/make_torchreid_fixture.py) into tests/fixtures/torchreid_osnet/."""

import dataclasses
import functools
import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from siamese_reid.config import ModelConfig, load_config
from siamese_reid.errors import ReIDError
from siamese_reid.model import build_embedding_model
from siamese_reid.model.osnet import OSNET_VARIANTS, build_osnet
from siamese_reid.model.osnet_weights import load_torchreid_state_dict

FIXTURES = Path(__file__).parent / "fixtures" / "torchreid_osnet"
STRUCTURE = json.loads((FIXTURES / "structure.json").read_text())
WIDTH_X0_25 = (16, 64, 96, 128)
# torchreid's own OSNet: global average pooling and its fc layer, no projection, no BNNeck.
TORCHREID_HEAD = ModelConfig(stripes=1, pooling="avg", feature_layer="torchreid", embedding_dim=0, bnneck=False)
SMALL_SIZE = (64, 32)


@functools.cache
def torchreid_like_tower(backbone, image_size=SMALL_SIZE):
    return build_embedding_model(dataclasses.replace(TORCHREID_HEAD, backbone=backbone), image_size)


def embed(model, images):
    # an eager call: tracing predict() over OSNet's ~700 layers costs more than the call itself
    return keras.ops.convert_to_numpy(model(images, training=False))


def trainable_parameters(model):
    return sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)


def random_state_dict(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return {
        key: rng.integers(0, 100, shape) if key.endswith("num_batches_tracked") else rng.normal(size=shape)
        for key, shape in shapes.items()
    }


def test_the_fixture_holds_the_issues_parameter_counts():
    # The two counts the issue quotes, as a check on the fixture itself.
    assert STRUCTURE["osnet_x1_0"]["parameters"] == 2_169_508
    assert STRUCTURE["osnet_x0_25"]["parameters"] == 201_864
    assert set(OSNET_VARIANTS) == set(STRUCTURE) - {"torchreid_version"}


@pytest.mark.parametrize("variant", list(OSNET_VARIANTS))
def test_every_variant_has_torchreids_parameter_count(variant):
    # torchreid counts fc 512 + BatchNorm1d in and its classifier out; moving statistics are
    # buffers there and non-trainable weights here, the frozen preprocessing is no parameter.
    assert trainable_parameters(torchreid_like_tower(variant)) == STRUCTURE[variant]["parameters"]


@pytest.mark.parametrize("variant", list(OSNET_VARIANTS))
def test_every_tensor_of_torchreids_state_dict_lands_in_its_layer_transposed(variant):
    tower = torchreid_like_tower(variant)
    state = random_state_dict(STRUCTURE[variant]["state_dict"])
    load_torchreid_state_dict(tower, state)  # raises on any missing, unexpected or misshapen key
    backbone = tower.get_layer(variant)
    np.testing.assert_allclose(
        backbone.get_layer("conv1.conv").get_weights()[0], state["conv1.conv.weight"].transpose(2, 3, 1, 0)
    )
    depthwise = next(name for name in state if name.endswith("conv2.weight") and state[name].shape[1] == 1)
    np.testing.assert_allclose(
        backbone.get_layer(depthwise.removesuffix(".weight")).get_weights()[0], state[depthwise].transpose(2, 3, 0, 1)
    )
    gamma, beta, mean, variance = tower.get_layer("feature_bn").get_weights()
    np.testing.assert_allclose(mean, state["fc.1.running_mean"], rtol=1e-6)
    np.testing.assert_allclose(variance, state["fc.1.running_var"], rtol=1e-6)
    np.testing.assert_allclose(tower.get_layer("feature_fc").get_weights()[0], state["fc.0.weight"].T, rtol=1e-6)


def reference(name):
    data = np.load(FIXTURES / f"{name}.npz")
    state = {key.removeprefix("state/"): data[key] for key in data.files if key.startswith("state/")}
    return state, data


# fixture -> (model.backbone, OSNet architecture, model.feature_layer)
REFERENCES = {
    "osnet_x0_25": ("osnet_x0_25", OSNET_VARIANTS["osnet_x0_25"], "torchreid"),
    "osnet_ibn_x0_25": ("osnet_ibn_x1_0", OSNET_VARIANTS["osnet_ibn_x1_0"]._replace(channels=WIDTH_X0_25), "none"),
    "osnet_ain_x0_25": ("osnet_ain_x1_0", OSNET_VARIANTS["osnet_ain_x1_0"]._replace(channels=WIDTH_X0_25), "none"),
}


def ported_tower(name, image_size, monkeypatch):
    """The tower of fixture `name` at `image_size`, with torchreid's weights; returns (tower,
    the torchreid feature model: images -> the feature before L2 normalisation, fixture data)."""
    backbone, spec, feature_layer = REFERENCES[name]
    # The IBN and AIN fixtures are those architectures at width x0.25 (torchreid defines them at
    # x1.0 only): the variant's name is kept, its widths replaced, for this test only.
    monkeypatch.setitem(OSNET_VARIANTS, backbone, spec)
    model = dataclasses.replace(TORCHREID_HEAD, backbone=backbone, feature_layer=feature_layer)
    tower = build_embedding_model(model, image_size)
    state, data = reference(name)
    load_torchreid_state_dict(tower, state)
    features = keras.Model(tower.input, tower.get_layer("projection").output)
    return tower, features, data


@pytest.mark.parametrize("name", list(REFERENCES))
def test_ported_weights_give_torchreids_features_of_random_images(name, monkeypatch):
    # 100x52 images: odd feature-map sizes after the stem test PyTorch's padding and rounding.
    _, data = reference(name)
    images = data["random_images"].astype("float32")
    tower, features, _ = ported_tower(name, images.shape[1:3], monkeypatch)
    expected = data["random_features"]
    np.testing.assert_allclose(embed(features, images), expected, atol=1e-4, rtol=0)
    normalised = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(embed(tower, images), normalised, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", list(REFERENCES))
def test_ported_weights_give_torchreids_features_of_market_images(name, monkeypatch, market_sample):
    # The crops are read by path (never stored in the repository), at their own 128x64.
    _, data = reference(name)
    paths = [market_sample / "query" / file_name for file_name in data["real_image_names"]]
    images = np.stack([np.asarray(Image.open(path).convert("RGB")) for path in paths]).astype("float32")
    _, features, _ = ported_tower(name, images.shape[1:3], monkeypatch)
    np.testing.assert_allclose(embed(features, images), data["real_features"], atol=1e-4, rtol=0)


def test_instance_normalisation_is_per_image_and_channel_in_training_and_inference():
    # nn.InstanceNorm2d(affine=True): mean and biased variance over height and width, epsilon 1e-5.
    backbone = build_osnet(OSNET_VARIANTS["osnet_ibn_x1_0"]._replace(channels=WIDTH_X0_25), (32, 16, 3))
    layer = backbone.get_layer("conv2.0.IN")
    rng = np.random.default_rng(0)
    gamma, beta = rng.uniform(0.5, 1.5, 64), rng.normal(size=64)
    layer.set_weights([gamma, beta])
    x = rng.normal(2.0, 3.0, (3, 5, 4, 64)).astype("float32")
    mean, variance = x.mean(axis=(1, 2), keepdims=True), x.var(axis=(1, 2), keepdims=True)
    expected = (x - mean) / np.sqrt(variance + 1e-5) * gamma + beta
    for training in (True, False):
        np.testing.assert_allclose(layer(x, training=training).numpy(), expected, atol=1e-4)
    # an image's result does not depend on the rest of its batch
    np.testing.assert_allclose(layer(x[:1], training=True).numpy(), expected[:1], atol=1e-4)


def test_port_errors_name_the_keys_and_leave_the_tower_unchanged():
    tower = torchreid_like_tower("osnet_x0_25")
    state = random_state_dict(STRUCTURE["osnet_x0_25"]["state_dict"])
    before = [weight.copy() for weight in tower.get_weights()]

    missing = {key: value for key, value in state.items() if key != "conv3.0.gate.fc2.bias"}
    with pytest.raises(ValueError, match=r"missing keys: conv3\.0\.gate\.fc2\.bias"):
        load_torchreid_state_dict(tower, missing)
    with pytest.raises(ValueError, match=r"unexpected keys: conv2\.0\.IN\.weight"):
        load_torchreid_state_dict(tower, state | {"conv2.0.IN.weight": np.ones(64)})
    misshapen = state | {"conv4.1.conv3.conv.weight": np.ones((128, 16, 1, 1))}
    with pytest.raises(
        ValueError, match=r"'conv4\.1\.conv3\.conv\.weight' has shape \(128, 16, 1, 1\).*\(128, 32, 1, 1\)"
    ):
        load_torchreid_state_dict(tower, misshapen)
    for got, original in zip(tower.get_weights(), before, strict=True):
        np.testing.assert_array_equal(got, original)

    # BatchNorm's step counters (absent before PyTorch 0.4.1) are optional, the classifier
    # (training-only in torchreid, as here) is dropped
    without_counters = {key: value for key, value in state.items() if not key.endswith("num_batches_tracked")}
    load_torchreid_state_dict(tower, without_counters)
    load_torchreid_state_dict(
        tower, state | {"classifier.weight": np.ones((751, 512)), "classifier.bias": np.ones(751)}
    )
    without_fc = build_embedding_model(
        dataclasses.replace(TORCHREID_HEAD, backbone="osnet_x0_25", feature_layer="none"), SMALL_SIZE
    )
    with pytest.raises(ValueError, match="unexpected keys: fc.0.bias.*model.feature_layer: torchreid"):
        load_torchreid_state_dict(without_fc, state)
    with pytest.raises(ValueError, match="missing keys: .*conv1.bn.running_mean.*architecture"):
        load_torchreid_state_dict(
            torchreid_like_tower("osnet_ain_x1_0"), random_state_dict(STRUCTURE["osnet_x1_0"]["state_dict"])
        )
    vgg = build_embedding_model(ModelConfig(vgg_blocks=1, embedding_dim=8), (32, 32))
    with pytest.raises(ValueError, match="no OSNet backbone"):
        load_torchreid_state_dict(vgg, state)


def test_config_accepts_the_osnet_names_and_the_feature_layer():
    config = load_config(None, ["model.backbone=osnet_ain_x1_0", "model.feature_layer=torchreid"])
    assert config.model.backbone == "osnet_ain_x1_0" and config.model.feature_layer == "torchreid"
    with pytest.raises(ReIDError, match="did you mean 'osnet_x0_25'"):
        load_config(None, ["model.backbone=osnet_x0_2"])
    with pytest.raises(ReIDError, match="model.feature_layer"):
        load_config(None, ["model.feature_layer=fc512"])
    with pytest.raises(ReIDError, match="no Keras ImageNet weights for osnet_x0_25"):
        build_embedding_model(
            dataclasses.replace(TORCHREID_HEAD, backbone="osnet_x0_25", weights="imagenet"), SMALL_SIZE
        )


def test_freeze_blocks_freezes_the_stem_and_the_first_stages_with_their_transitions():
    model = dataclasses.replace(TORCHREID_HEAD, backbone="osnet_ain_x1_0", freeze_blocks=2)
    backbone = build_embedding_model(model, SMALL_SIZE).get_layer("osnet_ain_x1_0")
    frozen = {layer.name for layer in backbone.layers if not layer.trainable}
    assert {"conv1.conv", "conv1.bn", "conv2.1.gate.fc1", "pool2.0.conv"} <= frozen
    assert not any(name.startswith(("conv3", "pool3", "conv4", "conv5")) for name in frozen)


def test_head_options_work_on_top_and_the_saved_tower_loads_with_plain_keras(tmp_path):
    model = ModelConfig(
        backbone="osnet_ain_x1_0", pooling="gem", stripes=2, feature_layer="torchreid", embedding_dim=16
    )
    tower = build_embedding_model(model, SMALL_SIZE)
    images = np.random.default_rng(1).uniform(0, 255, (3, *SMALL_SIZE, 3)).astype("float32")
    expected = embed(tower, images)
    assert expected.shape == (3, 16)
    tower.save(tmp_path / "osnet.keras")
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "expected.npy", expected)
    script = (
        "import keras, numpy as np, sys\n"
        "model = keras.saving.load_model('osnet.keras')\n"
        "got = model.predict(np.load('images.npy'), verbose=0)\n"
        "np.testing.assert_allclose(got, np.load('expected.npy'), atol=1e-6)\n"
        "assert 'siamese_reid' not in sys.modules\n"
        "print('loaded')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "loaded" in result.stdout, result.stderr[-2000:]


def test_the_float32_copy_of_a_mixed_precision_osnet_tower_computes_as_the_float32_tower():
    # What checkpoints and exports hold after a bfloat16 run (precision "auto" picks it on CPUs
    # with AVX512_BF16): the clone must keep the gate's two convolutions shared by four streams.
    from siamese_reid.model.float32 import float32_copy

    model = ModelConfig(backbone="osnet_ain_x1_0", embedding_dim=16)
    keras.utils.set_random_seed(0)
    reference = build_embedding_model(model, SMALL_SIZE)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        tower = build_embedding_model(model, SMALL_SIZE)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    tower.set_weights(reference.get_weights())
    copy = float32_copy(tower)
    assert len(copy.weights) == len(reference.weights)
    images = np.random.default_rng(4).uniform(0, 255, (2, *SMALL_SIZE, 3)).astype("float32")
    np.testing.assert_allclose(embed(copy, images), embed(reference, images), atol=1e-6)


@pytest.fixture(scope="module")
def small_osnet_tower():
    """An AIN tower (batch and instance normalisation) with this package's default head."""
    return build_embedding_model(ModelConfig(backbone="osnet_ain_x1_0", embedding_dim=16), SMALL_SIZE)


def test_savedmodel_export_matches_the_keras_tower_without_the_package(small_osnet_tower, tmp_path):
    from siamese_reid.export import export_model

    images = np.random.default_rng(2).uniform(0, 255, (2, *SMALL_SIZE, 3)).astype("float32")
    export_model(small_osnet_tower, "savedmodel", tmp_path / "savedmodel")
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "expected.npy", embed(small_osnet_tower, images))
    script = (
        "import sys; sys.modules['siamese_reid'] = None  # as if the package were not installed\n"
        "import numpy as np, tensorflow as tf\n"
        "serve = tf.saved_model.load('savedmodel').signatures['serving_default']\n"
        "got = serve(images=tf.constant(np.load('images.npy')))['embeddings'].numpy()\n"
        "np.testing.assert_allclose(got, np.load('expected.npy'), atol=1e-5)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


def test_litert_and_onnx_exports_match_the_keras_tower(small_osnet_tower, tmp_path, litert_embeddings):

    from siamese_reid.export import export_model

    images = np.random.default_rng(3).uniform(0, 255, (2, *SMALL_SIZE, 3)).astype("float32")
    expected = embed(small_osnet_tower, images)
    export_model(small_osnet_tower, "litert", tmp_path / "litert")
    got = litert_embeddings(tmp_path / "litert" / "model.tflite", images)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    onnxruntime = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    export_model(small_osnet_tower, "onnx", tmp_path / "onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "model.onnx"))
    np.testing.assert_allclose(session.run(None, {"images": images})[0], expected, atol=1e-5)


TRAINING = [
    "data.image_height=64",
    "data.image_width=32",
    "model.embedding_dim=16",
    "training.epochs=1",
    "training.steps_per_epoch=3",
    "training.warmup_epochs=0",
    "training.identities_per_batch=4",
    "training.images_per_identity=2",
    "evaluation.every_n_epochs=0",
    "evaluation.num_examples=0",
    "evaluation.flip_test=false",
]


# About 3 minutes per variant on 2 shared cores (tracing the training step of ~700 layers).
@pytest.mark.slow
@pytest.mark.parametrize("variant", list(OSNET_VARIANTS))
def test_every_variant_trains_through_the_package(variant, tiny_demo, tmp_path, project_root):
    from siamese_reid import experiment
    from siamese_reid.model.building import build_tower

    settings = TRAINING + [f"model.backbone={variant}", f"data.root={tiny_demo}", "training.precision=float32"]
    config = load_config(project_root / "config.yaml", settings)
    metrics, run_dir = experiment.train(config, tmp_path)
    history = np.genfromtxt(run_dir / "history.csv", delimiter=",", names=True)
    assert np.isfinite(history["loss"]).all() and 0.0 <= metrics["mAP"] <= 1.0
    keras.utils.set_random_seed(config.training.seed)  # the run's initial weights
    initial = build_tower(config).get_layer(variant)
    trained = keras.saving.load_model(run_dir / "last.keras").get_layer(variant)
    for name in ("conv1.conv", "conv2.0.gate.fc1", "conv5.bn"):  # the gradient reached the stem
        before, after = initial.get_layer(name).get_weights()[0], trained.get_layer(name).get_weights()[0]
        assert not np.allclose(before, after), name
