"""The embedding tower: backbone -> pooling -> dense projection -> [BNNeck] -> L2 normalisation.

Input: float RGB images in [0, 255], shape [batch, height, width, 3] (preprocessing is part of
the model). Output: float32 embeddings of shape [batch, embedding_dim] with unit L2 norm.
"""

import dataclasses
from pathlib import Path

import keras

from siamese_reid.errors import ReIDError
from siamese_reid.model.layers import BackbonePreprocess, GeneralizedMeanPooling


@dataclasses.dataclass(frozen=True)
class TowerSpec:
    """Everything that decides the tower's architecture and initial weights."""

    backbone: str = "vgg16"
    weights: str = "none"
    image_height: int = 128
    image_width: int = 64
    vgg_blocks: int = 5
    freeze_blocks: int = 0
    pooling: str = "avg"
    embedding_dim: int = 128
    bnneck: bool = True


def _vgg16(input_shape, weights, spec):
    base = keras.applications.VGG16(include_top=False, weights=weights, input_shape=input_shape)
    # Truncating after block N keeps the first N blocks exactly as in VGG16 (and their
    # pretrained weights): on a CPU, fewer blocks trade depth for speed.
    last = base.get_layer(f"block{spec.vgg_blocks}_pool")
    return keras.Model(base.input, last.output, name="vgg16"), "caffe"


def _resnet50(input_shape, weights, spec):
    return keras.applications.ResNet50(include_top=False, weights=weights, input_shape=input_shape), "caffe"


def _mobilenetv2(input_shape, weights, spec):
    return keras.applications.MobileNetV2(include_top=False, weights=weights, input_shape=input_shape), "tf"


BACKBONES = {"vgg16": _vgg16, "resnet50": _resnet50, "mobilenetv2": _mobilenetv2}


def _resolve_weights(weights):
    """Maps the config value to keras.applications' `weights` argument."""
    if weights in (None, "none", "random"):
        return None
    if weights == "imagenet":
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ReIDError(f"model.weights '{weights}' is neither 'none', 'imagenet' nor an existing weights file")
    return str(path)


def build_backbone(spec):
    """Returns (backbone model, preprocessing mode); explains a failed ImageNet download."""
    if spec.backbone not in BACKBONES:
        raise ReIDError(f"unknown backbone {spec.backbone!r}; valid names: {sorted(BACKBONES)}")
    weights = _resolve_weights(spec.weights)
    input_shape = (spec.image_height, spec.image_width, 3)
    try:
        return BACKBONES[spec.backbone](input_shape, weights, spec)
    except Exception as error:  # keras raises bare Exception types for failed downloads
        if weights == "imagenet" and _looks_like_download_failure(error):
            raise ReIDError(
                f"could not download ImageNet weights for {spec.backbone} ({type(error).__name__}). "
                "Either place the no-top weights file in ~/.keras/models/ (the file name Keras "
                "prints above) or set model.weights to a local weights file path, or use "
                "model.weights=none for random initialisation"
            ) from None
        if weights not in (None, "imagenet"):
            raise ReIDError(f"could not load weights file '{weights}': {error}") from None
        raise


def _looks_like_download_failure(error):
    text = f"{type(error).__name__} {error}".lower()
    return any(word in text for word in ("url", "fetch", "download", "connection", "resolve", "http"))


def _freeze_blocks(backbone, num_blocks):
    """Freezes the first `num_blocks` convolution blocks (VGG16 block names, ResNet stages)."""
    if num_blocks <= 0:
        return
    prefixes = tuple(f"block{i}_" for i in range(1, num_blocks + 1)) + tuple(
        f"conv{i}_" for i in range(1, num_blocks + 1)
    )
    for layer in backbone.layers:
        if layer.name.startswith(prefixes):
            layer.trainable = False


POOLINGS = {
    "avg": lambda: keras.layers.GlobalAveragePooling2D(name="pool"),
    "max": lambda: keras.layers.GlobalMaxPooling2D(name="pool"),
    "gem": lambda: GeneralizedMeanPooling(name="pool"),
}


def build_embedding_model(spec):
    """Builds the embedding tower described by `spec` (a `TowerSpec`)."""
    backbone, preprocess_mode = build_backbone(spec)
    _freeze_blocks(backbone, spec.freeze_blocks)
    images = keras.Input((spec.image_height, spec.image_width, 3), name="images")
    features = backbone(BackbonePreprocess(preprocess_mode, name="preprocess")(images))
    pooled = POOLINGS[spec.pooling]()(features)
    embedding = keras.layers.Dense(spec.embedding_dim, name="projection")(pooled)
    if spec.bnneck:
        # No learned shift: the L2 normalisation that follows should see centred features
        # (Luo et al., Bag of Tricks, https://arxiv.org/abs/1903.07071).
        # momentum 0.9 rather than 0.99: re-ID training sets are small (a few hundred steps),
        # and the moving statistics used at inference must have converged by the end.
        embedding = keras.layers.BatchNormalization(center=False, momentum=0.9, name="bnneck")(embedding)
    # float32 output: distances and losses must not be computed in float16.
    embedding = keras.layers.UnitNormalization(name="l2_normalize", dtype="float32")(embedding)
    return keras.Model(images, embedding, name="embedding_tower")


def load_embedding_model(path):
    """Loads a saved embedding tower (`.keras`), with a clear error for a bad path or file."""
    path = Path(path)
    if not path.is_file():
        raise ReIDError(f"model file '{path}' does not exist")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:
        raise ReIDError(f"'{path}' is not a loadable Keras model ({type(error).__name__}: {error})") from None
