import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from siamese_reid.config import DemoConfig  # noqa: E402
from siamese_reid.console import show_messages  # noqa: E402
from siamese_reid.data.demo import generate_demo_dataset  # noqa: E402


@pytest.fixture(scope="session")
def project_root():
    """The repository's top folder: config.yaml, the scripts, configs/ and notebooks/."""
    return Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def market_sample_folder(project_root):
    """Where the real Market-1501 sample is kept on a machine that has it (it may be absent)."""
    return project_root.parent / "shared" / "data" / "market1501-sample"


@pytest.fixture(scope="session")
def market_sample(market_sample_folder):
    """The real Market-1501 sample; a test that needs it is skipped where it is absent."""
    if not market_sample_folder.is_dir():
        pytest.skip(f"real Market-1501 sample not present at {market_sample_folder}")
    return market_sample_folder


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    """A small demo dataset in Market-1501 layout (32x16 images)."""
    root = tmp_path_factory.mktemp("demo")
    spec = DemoConfig(
        seed=3,
        num_train_identities=8,
        num_test_identities=6,
        num_cameras=3,
        images_per_camera=2,
        num_distractors=4,
        num_junk=2,
        image_height=32,
        image_width=16,
    )
    generate_demo_dataset(root, spec)
    return root


def _write_random_image(path, size=(16, 8), mode="RGB", seed=0, image_format=None):
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    array = rng.integers(0, 256, size=(size[0], size[1], channels), dtype=np.uint8)
    image = Image.fromarray(array[..., 0] if channels == 1 else array, mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=image_format)
    return array


@pytest.fixture(scope="session")
def write_image():
    """A function (path, size=(height, width), mode, seed, image_format) that writes a seeded
    random image, creating its folders, and returns its pixels as a uint8 array."""
    return _write_random_image


@pytest.fixture(autouse=True)
def float32_policy_for_every_test():
    """Each test starts with Keras' float32 policy, whatever an earlier test set."""
    import keras

    keras.mixed_precision.set_global_policy("float32")
    yield


@pytest.fixture
def shown_messages():
    """The library's messages on stdout, as the entry points show them, for one test only."""
    library = logging.getLogger("siamese_reid")
    level, handlers = library.level, list(library.handlers)
    show_messages()
    yield
    library.setLevel(level)
    library.handlers[:] = handlers


@pytest.fixture
def litert_embeddings():
    """A function (model.tflite path, images) -> what LiteRT's interpreter computes, as a
    deployment runs the exported file (built-in kernels only)."""
    import tensorflow as tf

    def run(model_path, images):
        interpreter = tf.lite.Interpreter(
            str(model_path),
            experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
        interpreter.resize_tensor_input(0, images.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])

    return run
