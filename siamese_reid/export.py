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
import numpy as np
import tensorflow as tf

from siamese_reid.errors import ReIDError

INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"


def _image_spec(tower):
    _, height, width, channels = tower.input_shape
    return tf.TensorSpec([None, height, width, channels], tf.float32, name=INPUT_NAME)


def _write_savedmodel(tower, target):
    # An ExportArchive rather than model.export: it names the signature's input and output
    # ("images" -> "embeddings") instead of Keras' generic "output_0".
    archive = keras.export.ExportArchive()
    archive.track(tower)
    archive.add_endpoint(
        name="serving_default",
        fn=lambda images: {OUTPUT_NAME: tower(images, training=False)},
        input_signature=[_image_spec(tower)],
    )
    archive.write_out(str(target), verbose=False)


def _write_onnx(tower, target):
    target.mkdir()
    try:
        tower.export(str(target / "model.onnx"), format="onnx", input_signature=[_image_spec(tower)], verbose=False)
    except ImportError as error:
        raise ReIDError(f"ONNX export needs the optional packages of `pip install siamese-reid[onnx]` ({error})") from None


def _write_litert(tower, target):
    target.mkdir()
    try:
        tower.export(str(target / "model.tflite"), format="litert", input_signature=[_image_spec(tower)], verbose=False)
    except ImportError as error:
        raise ReIDError(f"LiteRT export needs its optional packages ({error})") from None


# --format -> writer(tower, target folder that does not exist yet)
EXPORT_FORMATS = {"savedmodel": _write_savedmodel, "onnx": _write_onnx, "litert": _write_litert}


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
        raise ReIDError(f"'{output_dir}' already exists: choose another --output or remove it yourself")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    try:
        EXPORT_FORMATS[export_format](tower, staging / "export")
        os.replace(staging / "export", output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # our own temporary folder only
    return output_dir


def load_savedmodel_embedder(path):
    """A function images -> embeddings (numpy) from an exported SavedModel."""
    loaded = tf.saved_model.load(str(path))
    serve = loaded.signatures["serving_default"]

    def embed(images):
        return serve(**{INPUT_NAME: tf.constant(np.asarray(images, dtype=np.float32))})[OUTPUT_NAME].numpy()

    return embed
