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


# (listed identity, camera) of each image, per list file; val holds more images of the
# training identities, as in the release.
MSMT17_SPEC = {
    "list_train.txt": [(0, 1), (0, 2), (1, 3), (1, 15), (2, 7), (2, 7)],
    "list_val.txt": [(0, 4), (2, 9)],
    "list_query.txt": [(0, 2), (1, 5)],
    "list_gallery.txt": [(0, 1), (0, 11), (1, 6), (1, 5), (2, 8)],
}
MSMT17_FOLDERS = {"MSMT17_V1": ("train", "test"), "MSMT17_V2": ("mask_train_v2", "mask_test_v2")}


@pytest.fixture(scope="session")
def msmt17_folders():
    """{release: (training image folder, test image folder)} of the MSMT17 releases."""
    return MSMT17_FOLDERS


@pytest.fixture
def write_msmt17(write_image):
    """A function (release folder, version) that writes an MSMT17 release folder: images in
    <image folder>/<identity>/ and the four lists.

    The function returns {list file name: [(absolute path, listed identity, camera)]}, in list order.
    """

    def write(release, version):
        train_folder, test_folder = MSMT17_FOLDERS[version]
        written = {}
        for list_name, entries in MSMT17_SPEC.items():
            folder = train_folder if list_name in ("list_train.txt", "list_val.txt") else test_folder
            lines, written[list_name] = [], []
            for index, (pid, camid) in enumerate(entries):
                # the real name: identity_index_camera_date+time_frame_n, e.g. 0000_000_01_0303morning_0008_0.jpg
                frame = f"{len(lines) + 8:04d}_{index % 3}"
                relative = f"{pid:04d}/{pid:04d}_{index:03d}_{camid:02d}_0303morning_{frame}.jpg"
                if list_name == "list_val.txt":
                    relative = relative.replace("morning", "noon")  # other files of the same people
                write_image(release / folder / relative, seed=index)
                lines.append(f"{relative} {pid}\n")
                written[list_name].append((str((release / folder / relative).resolve()), pid, camid))
            (release / list_name).write_text("".join(lines))
        return written

    return write


@pytest.fixture
def fast_settings():
    """Small, fast settings for training end to end: 3 VGG blocks on 32x32 inputs."""
    return [
        "data.image_height=32",
        "data.image_width=32",
        "model.vgg_blocks=3",
        "model.embedding_dim=32",
        "evaluation.num_examples=2",
        "evaluation.flip_test=false",
        "training.warmup_epochs=1",
    ]


@pytest.fixture(scope="session")
def run_train(project_root):
    """A function (output folder, config overrides, run name="run") that trains as train.py
    does and returns (metrics, run folder)."""
    from siamese_reid import experiment
    from siamese_reid.config import load_config

    def train(output_dir, settings, name="run"):
        config = load_config(project_root / "config.yaml", [*settings, f"output.run_name={name}"])
        return experiment.train(config, output_dir)

    return train


@pytest.fixture
def run_stopped_in(tmp_path, run_train):
    """A function (module, name, config overrides) that trains a run in `tmp_path` stopped by a
    Ctrl-C inside `module.name`, and returns the folder it kept, with `module.name` restored."""
    from siamese_reid.errors import RunInterrupted

    def interrupted(*arguments, **keywords):
        raise KeyboardInterrupt

    def train(module, name, settings):
        with pytest.MonkeyPatch.context() as patch, pytest.raises(RunInterrupted) as caught:
            patch.setattr(module, name, interrupted)
            run_train(tmp_path, settings)
        return caught.value.run_dir

    return train


@pytest.fixture(scope="session")
def command_line(project_root):
    """A function (script, *arguments, timeout=300) that runs `python SCRIPT ARGS...` from the
    project root, as a user types it, and returns the finished process."""
    import subprocess
    import sys

    def run(script, *arguments, timeout=300):
        command = [sys.executable, script, *map(str, arguments)]
        return subprocess.run(command, cwd=project_root, capture_output=True, text=True, timeout=timeout)

    return run
