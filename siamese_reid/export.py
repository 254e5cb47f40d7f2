"""Export a trained embedding tower for deployment: SavedModel (core), ONNX and LiteRT (extras).

Every format takes float32 RGB images in [0, 255], shape [batch, height, width, 3], any batch
size, and returns unit-length embeddings [batch, embedding_dim]. Preprocessing (channel order,
mean subtraction) is part of the tower, so nothing must be normalised before or after: the
"normalised twice" mismatch of other toolkits cannot happen.
"""

import os
import shutil
import tempfile
from pathlib import Path

import keras
import tensorflow as tf

from siamese_reid.errors import ReIDError
from siamese_reid.files import create_folder
from siamese_reid.model.float32 import float32_copy

INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"


def _image_spec(tower):
    _, height, width, channels = tower.input_shape
    return tf.TensorSpec([None, height, width, channels], tf.float32, name=INPUT_NAME)


def _write_savedmodel(tower, target):
    # An ExportArchive rather than model.export: it names the signature's input and output
    # ("images" -> "embeddings") instead of Keras' generic "output_0".
    _, height, width, _ = tower.input_shape

    def serve(images):
        # Images of any size are resized to the training size as the training pipeline does
        # (bilinear, antialiased): a photo fed at its own size gets the same embedding as
        # through this package, instead of a silently different one.
        resized = tf.image.resize(images, [height, width], antialias=True)
        return {OUTPUT_NAME: tower(resized, training=False)}

    archive = keras.export.ExportArchive()
    archive.track(tower)
    archive.add_endpoint(
        name="serving_default",
        fn=serve,
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name=INPUT_NAME)],
    )
    archive.write_out(str(target), verbose=False)


def _keras_export(keras_format, file_name, install_hint):
    """A writer through Keras' own `model.export` (its converters are optional extras)."""

    def write(tower, target):
        target.mkdir()
        try:
            tower.export(
                str(target / file_name), format=keras_format, input_signature=[_image_spec(tower)], verbose=False
            )
        except ImportError as error:
            raise ReIDError(f"{keras_format} export needs {install_hint} ({error})") from None

    return write


# --format -> writer(tower, target folder that does not exist yet)
EXPORT_FORMATS = {
    "savedmodel": _write_savedmodel,
    "onnx": _keras_export("onnx", "model.onnx", 'the onnx extra: pip install -e ".[onnx]"'),
    "litert": _keras_export("litert", "model.tflite", "TensorFlow's LiteRT converter"),
}


def export_model(tower, export_format, output_dir):
    """Writes `tower` in `export_format` to `output_dir`, which must not exist yet.

    The export is written to a temporary folder beside `output_dir` and renamed into place
    when complete: an interrupted or failed export leaves nothing half-written.

    Returns:
      The output folder.
    """
    if export_format not in EXPORT_FORMATS:
        raise ReIDError(f"unknown export format {export_format!r}; valid names: {list(EXPORT_FORMATS)}")
    output_dir = Path(output_dir)
    if output_dir.exists():
        raise ReIDError(f"'{output_dir}' already exists: choose another output folder or remove it yourself")
    create_folder(output_dir.parent, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    try:
        # float32 whatever the training precision: a bfloat16 graph needs bf16 kernels where it
        # is served, and LiteRT refuses it without the Flex delegate.
        EXPORT_FORMATS[export_format](float32_copy(tower), staging / "export")
        os.replace(staging / "export", output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # our own temporary folder only
    return output_dir
