"""The embedding tower: backbone -> pooling (per horizontal stripe) -> dense projection -> [BNNeck] -> L2 normalisation.

Input: float RGB images in [0, 255], shape [batch, height, width, 3] (preprocessing is part of
the model). Output: float32 embeddings of shape [batch, embedding_dim] with unit L2 norm.

The tower is built from stock Keras layers and `keras.ops` calls only, no custom layer, so a
saved `.keras` tower loads with `keras.saving.load_model` in any Python process, without this
package being imported (or installed).

Its parts: the backbones in `backbones`, pooling and the feature layer in `pooling`, the
float32 copy of a mixed-precision tower in `float32`.
"""

import zipfile
from pathlib import Path

import keras

from siamese_reid.errors import ReIDError
from siamese_reid.model.backbones import BACKBONES, build_backbone, freeze_blocks
from siamese_reid.model.pooling import feature_layer, pool_stripes
from siamese_reid.model.torchreid_checkpoint import load_torchreid_checkpoint, torchreid_checkpoint_path


def build_embedding_model(model, image_size):
    """Builds the embedding tower.

    Args:
      model: the `ModelConfig` section (backbone, weights, vgg_blocks, last_stride, freeze_blocks,
        pooling, stripes, feature_layer, embedding_dim, bnneck).
      image_size: (height, width) of the input images.

    Returns:
      A functional `keras.Model` named "embedding_tower".
    """
    input_shape = (*image_size, 3)
    # A torchreid .pth checkpoint sets the whole tower (backbone and torchreid's fc layer) once
    # it is built; every other weights file is the backbone's.
    checkpoint = torchreid_checkpoint_path(model.backbone, model.weights)
    backbone_weights = "none" if checkpoint else model.weights
    backbone = build_backbone(model.backbone, backbone_weights, input_shape, model.vgg_blocks, model.last_stride)
    freeze_blocks(backbone, model.backbone, model.freeze_blocks)
    images = keras.Input(input_shape, name="images")
    features = backbone(BACKBONES[model.backbone].preprocess(images))
    pooled = feature_layer(pool_stripes(features, model.pooling, model.stripes), model.feature_layer)
    if model.embedding_dim:
        embedding = keras.layers.Dense(model.embedding_dim, name="projection")(pooled)
    else:
        # No projection: the pooled backbone feature is the embedding (2048-d for ResNet-50), as
        # in the strong baseline, whose BNNeck normalises the pooled feature itself. The layer
        # keeps the name the training model takes the pre-BNNeck feature from.
        embedding = keras.layers.Identity(name="projection")(pooled)
    if model.bnneck:
        # No learned shift: the L2 normalisation that follows should see centred features
        # (Luo et al., Bag of Tricks, https://arxiv.org/abs/1903.07071).
        # momentum 0.9 rather than 0.99: re-ID training sets are small (a few hundred steps),
        # and the moving statistics used at inference must have converged by the end.
        embedding = keras.layers.BatchNormalization(center=False, momentum=0.9, name="bnneck")(embedding)
    # float32 output: distances and losses must not be computed in float16.
    embedding = keras.layers.UnitNormalization(name="l2_normalize", dtype="float32")(embedding)
    tower = keras.Model(images, embedding, name="embedding_tower")
    if checkpoint:
        load_torchreid_checkpoint(tower, checkpoint, model.backbone)
    return tower


def load_embedding_model(path):
    """Loads a saved embedding tower (`.keras`), with a clear error for a bad path or file."""
    path = Path(path)
    if path.is_dir():
        raise ReIDError(f"'{path}' is a folder, not a .keras model file")
    if not path.is_file():
        raise ReIDError(f"model file '{path}' does not exist")
    if path.suffix == ".keras" and not zipfile.is_zipfile(path):
        # Keras would say "File not found" about a file that is there but cut short
        raise ReIDError(
            f"'{path}' is not a loadable Keras model (a .keras file is a zip archive; this one is cut short "
            "or is not a model)"
        )
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as error:
        raise ReIDError(f"'{path}' is not a loadable Keras model ({type(error).__name__}: {error})") from None
    input_shape, output_shape = model.input_shape, model.output_shape
    if not (isinstance(input_shape, tuple) and len(input_shape) == 4 and input_shape[-1] == 3) or not (
        isinstance(output_shape, tuple) and len(output_shape) == 2
    ):
        raise ReIDError(
            f"'{path}' is a Keras model but not an embedding tower: it maps {input_shape} to {output_shape}, "
            "not RGB images [batch, height, width, 3] to embeddings [batch, dim]"
        )
    return model
