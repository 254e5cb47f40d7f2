"""The embedding tower: backbone -> pooling (per horizontal stripe) -> dense projection -> [BNNeck] -> L2 normalisation.

Input: float RGB images in [0, 255], shape [batch, height, width, 3] (preprocessing is part of
the model). Output: float32 embeddings of shape [batch, embedding_dim] with unit L2 norm.

The tower is built from stock Keras layers and `keras.ops` calls only, no custom layer, so a
saved `.keras` tower loads with `keras.saving.load_model` in any Python process, without this
package being imported (or installed).
"""

import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from siamese_reid.errors import ReIDError
from siamese_reid.model.osnet import BATCH_NORM_MOMENTUM, EPSILON, OSNET_VARIANTS, build_osnet, osnet_block_of_layer
from siamese_reid.model.torchreid_checkpoint import load_torchreid_checkpoint, torchreid_checkpoint_path

# keras.applications' "caffe" preprocessing: BGR channel order, ImageNet mean subtracted.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
# torchreid's (torchvision's) ImageNet normalisation of RGB images scaled to [0, 1].
_IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
_IMAGENET_STD_RGB = (0.229, 0.224, 0.225)


def _per_pixel_affine(images, matrix, offset):
    """images @ matrix + offset on every pixel, as a frozen 1x1 convolution.

    A stock layer whose constants are weights: the saved tower needs no custom code, and ONNX
    conversion keeps them inside the graph (captured constant tensors, as a Normalization
    layer's mean, become extra graph inputs there).
    """
    # Zero initialisers draw no random numbers, so the weights initialised after this layer are
    # the same as without it (a run's seed gives the same model).
    layer = keras.layers.Conv2D(
        3, 1, trainable=False, kernel_initializer="zeros", bias_initializer="zeros", name="preprocess"
    )
    outputs = layer(images)
    layer.set_weights([np.asarray(matrix, "float32").reshape(1, 1, 3, 3), np.asarray(offset, "float32")])
    return outputs


def _caffe_preprocess(images):
    # keras.applications' "caffe" mode: RGB -> BGR, then the ImageNet mean subtracted.
    return _per_pixel_affine(images, np.eye(3)[:, ::-1], -np.asarray(_CAFFE_MEAN_BGR))


def _tf_preprocess(images):
    # keras.applications' "tf" mode: [0, 255] -> [-1, 1].
    return _per_pixel_affine(images, np.eye(3) / 127.5, -np.ones(3))


def _torchreid_preprocess(images):
    # torchreid's ToTensor + Normalize: (x / 255 - mean) / std per RGB channel, as one affine map.
    std = np.asarray(_IMAGENET_STD_RGB)
    return _per_pixel_affine(images, np.diag(1.0 / (255.0 * std)), -np.asarray(_IMAGENET_MEAN_RGB) / std)


def _vgg16_block(layer_name):
    match = re.match(r"block(\d)_", layer_name)
    return int(match.group(1)) if match else None


def _resnet50_block(layer_name):
    # conv1 is the stem, conv2..conv5 the four residual stages: 5 blocks, as VGG16.
    match = re.match(r"(?:conv|pool)(\d)_", layer_name)
    return int(match.group(1)) if match else None


# MobileNetV2's 17 inverted-residual blocks grouped by output resolution (stride 2, 4, 8, 16,
# 32), so that "block N" means the same depth of the network as for VGG16 and ResNet-50.
# (Block 0 is named "expanded_conv" and belongs to the stem stage.)
_MOBILENETV2_STAGE_OF_BLOCK = (
    {1: 2, 2: 2, 3: 3, 4: 3, 5: 3} | {b: 4 for b in range(6, 13)} | {b: 5 for b in range(13, 17)}
)


def _mobilenetv2_block(layer_name):
    if layer_name.startswith(("Conv1", "bn_Conv1", "expanded_conv")):
        return 1
    if layer_name.startswith(("Conv_1", "out_relu")):
        return 5
    match = re.match(r"block_(\d+)_", layer_name)
    return _MOBILENETV2_STAGE_OF_BLOCK[int(match.group(1))] if match else None


def _vgg16(input_shape, weights, vgg_blocks):
    base = keras.applications.VGG16(include_top=False, weights=weights, input_shape=input_shape)
    # Truncating after block N keeps the first N blocks exactly as in VGG16 (and their
    # pretrained weights): on a CPU, fewer blocks trade depth for speed.
    last = base.get_layer(f"block{vgg_blocks}_pool")
    return keras.Model(base.input, last.output, name="vgg16")


def _resnet50(input_shape, weights):
    return keras.applications.ResNet50(include_top=False, weights=weights, input_shape=input_shape)


def _mobilenetv2(input_shape, weights):
    return keras.applications.MobileNetV2(include_top=False, weights=weights, input_shape=input_shape)


def _osnet(variant):
    """The builder of one OSNet variant, with the signature of the keras.applications ones."""

    def build(input_shape, weights):
        if weights == "imagenet":
            raise ReIDError(
                f"there are no Keras ImageNet weights for {variant} (torchreid's are PyTorch files): use "
                "model.weights=none, a .weights.h5 file of this backbone, or import a torchreid checkpoint "
                "(docs/osnet.md)"
            )
        backbone = build_osnet(OSNET_VARIANTS[variant], input_shape, name=variant)
        if weights is not None:
            backbone.load_weights(weights)
        return backbone

    return build


class Backbone(NamedTuple):
    """How to build one backbone, preprocess its input, and number its blocks."""

    build: Callable
    preprocess: Callable
    block_of_layer: Callable


# model.backbone -> Backbone
BACKBONES = {
    "vgg16": Backbone(_vgg16, _caffe_preprocess, _vgg16_block),
    "resnet50": Backbone(_resnet50, _caffe_preprocess, _resnet50_block),
    "mobilenetv2": Backbone(_mobilenetv2, _tf_preprocess, _mobilenetv2_block),
    **{variant: Backbone(_osnet(variant), _torchreid_preprocess, osnet_block_of_layer) for variant in OSNET_VARIANTS},
}

# model.feature_layer: the layers between pooling and the projection. "torchreid" is the fully
# connected layer torchreid's OSNet ends with (fc_dims=[512]: Linear, BatchNorm1d, ReLU), which a
# converted torchreid checkpoint needs to give torchreid's features.
FEATURE_LAYERS = ("none", "torchreid")
TORCHREID_FEATURE_DIM = 512


def feature_layer(pooled, kind):
    """[batch, channels] -> [batch, channels] ("none") or [batch, 512] ("torchreid")."""
    if kind == "none":
        return pooled
    if kind != "torchreid":
        raise ReIDError(f"unknown feature layer {kind!r}; valid names: {list(FEATURE_LAYERS)}")
    # torchreid's initialisation (Linear: N(0, 0.01), zero bias) and PyTorch's BatchNorm1d constants.
    features = keras.layers.Dense(
        TORCHREID_FEATURE_DIM, kernel_initializer=keras.initializers.RandomNormal(0.0, 0.01), name="feature_fc"
    )(pooled)
    features = keras.layers.BatchNormalization(epsilon=EPSILON, momentum=BATCH_NORM_MOMENTUM, name="feature_bn")(
        features
    )
    return keras.layers.ReLU(name="feature_relu")(features)


def _gem_pooling(features, power=3.0, epsilon=1e-6):
    """Generalised-mean pooling (mean of x^p)^(1/p) over space, in float32.

    Computed in float32 whatever the precision policy: x^3 overflows float16 above x = 40.

    Reference: Radenović et al., Fine-tuning CNN Image Retrieval with No Human Annotation,
    https://arxiv.org/abs/1711.02512
    """
    features = ops.maximum(ops.cast(features, "float32"), epsilon)
    return ops.power(ops.mean(ops.power(features, power), axis=(1, 2)), 1.0 / power)


# model.pooling -> function of (the backbone's feature map, a layer name) -> [batch, channels]
POOLINGS = {
    "avg": lambda features, name: keras.layers.GlobalAveragePooling2D(name=name)(features),
    "max": lambda features, name: keras.layers.GlobalMaxPooling2D(name=name)(features),
    "gem": lambda features, name: _gem_pooling(features),
}


def pool_stripes(features, pooling, stripes):
    """Pools each of `stripes` horizontal stripes of the feature map, top to bottom, and
    concatenates them: [batch, stripes x channels]. One stripe is plain global pooling.

    Global pooling forgets where on the body a feature was (a red top and a red pair of trousers
    pool alike); stripes keep that, which matters most when the training set is too small to
    learn it (Sun et al., Beyond Part Models: Person Retrieval with Refined Part Pooling,
    https://arxiv.org/abs/1711.09349; here the stripes share one projection, without PCB's
    per-part classifiers or refined part pooling). Rows are shared out as PyTorch's adaptive pooling does:
    stripe i covers rows floor(i H / n) to ceil((i + 1) H / n), so any height works, also one of
    fewer rows than stripes (rows then repeat: a backbone that leaves one row, as ResNet-50 does
    at 32 pixels high, gives global pooling n times over, not an error).
    Stock layers only (Cropping2D, Concatenate): a saved tower loads without this package.
    """
    if stripes == 1:
        return POOLINGS[pooling](features, "pool")
    height = features.shape[1]
    pooled = []
    for index in range(stripes):
        top, bottom = index * height // stripes, -(-(index + 1) * height // stripes)
        stripe = keras.layers.Cropping2D(((top, height - bottom), (0, 0)), name=f"stripe_{index + 1}")(features)
        pooled.append(POOLINGS[pooling](stripe, f"pool_stripe_{index + 1}"))
    return keras.layers.Concatenate(name="pool")(pooled)


def resolve_weights(weights):
    """Maps the config value to keras.applications' `weights` argument."""
    if weights in (None, "none", "random"):
        return None
    if weights == "imagenet":
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ReIDError(f"model.weights '{weights}' is neither 'none', 'imagenet' nor an existing weights file")
    return str(path)


def build_backbone(backbone_name, weights, input_shape, vgg_blocks=5, last_stride=2):
    """Returns the keras.applications backbone; explains a failed ImageNet download.

    `last_stride=1` (ResNet-50 only) rebuilds its last stage without downsampling: see
    `with_last_stride_one`.
    """
    if backbone_name not in BACKBONES:
        raise ReIDError(f"unknown backbone {backbone_name!r}; valid names: {list(BACKBONES)}")
    if last_stride not in (1, 2):
        raise ReIDError(f"last_stride must be 1 or 2, got {last_stride!r}")
    if last_stride == 1 and backbone_name not in LAST_STAGE_STRIDED_LAYERS:
        raise ReIDError(
            f"last_stride 1 is implemented for {list(LAST_STAGE_STRIDED_LAYERS)} only, not {backbone_name}: "
            "set model.last_stride to 2"
        )
    weights = resolve_weights(weights)
    try:
        # vgg_blocks truncates VGG16 only: the other builders take no such argument
        options = {"vgg_blocks": vgg_blocks} if backbone_name == "vgg16" else {}
        backbone = BACKBONES[backbone_name].build(input_shape, weights, **options)
    except Exception as error:  # keras raises bare Exception types for failed downloads
        if weights == "imagenet" and _looks_like_download_failure(error):
            raise ReIDError(
                f"could not download ImageNet weights for {backbone_name} ({type(error).__name__}). "
                "Either place the no-top weights file in ~/.keras/models/ (the file name Keras "
                "prints above) or set model.weights to a local weights file path, or use "
                "model.weights=none for random initialisation"
            ) from None
        if weights not in (None, "imagenet"):
            raise ReIDError(f"could not load weights file '{weights}': {error}") from None
        raise
    return with_last_stride_one(backbone, backbone_name) if last_stride == 1 else backbone


# The convolutions that downsample at the entry of the last stage (conv5_block1's main path and
# its shortcut; keras.applications puts ResNet v1's stride on the 1x1 convolutions).
LAST_STAGE_STRIDED_LAYERS = {"resnet50": ("conv5_block1_1_conv", "conv5_block1_0_conv")}


def with_last_stride_one(backbone, backbone_name):
    """The same backbone with stride 1 in its last stage: a feature map twice as tall and wide
    (16x8 instead of 8x4 at 256x128) for the same weights.

    keras.applications fixes the stride, so the network is cloned with those layers' strides set
    to 1, and the weights copied over: a stride changes no weight shape. The clone is made of
    the same stock layers, so a saved tower still loads without this package.

    Reference: Luo et al., Bag of Tricks and A Strong Baseline for Deep Person
    Re-identification, https://arxiv.org/abs/1903.07071 (section "Last Stride").
    """
    strided = LAST_STAGE_STRIDED_LAYERS[backbone_name]

    def clone_layer(layer):
        config = layer.get_config()
        if layer.name in strided:
            config["strides"] = (1, 1)
        return layer.__class__.from_config(config)

    images = keras.Input(backbone.input_shape[1:], name=backbone.layers[0].name)
    rebuilt = keras.models.clone_model(backbone, input_tensors=images, clone_function=clone_layer)
    rebuilt.set_weights(backbone.get_weights())
    return rebuilt


def _looks_like_download_failure(error):
    text = f"{type(error).__name__} {error}".lower()
    return any(word in text for word in ("url", "fetch", "download", "connection", "resolve", "http"))


def freeze_blocks(backbone, backbone_name, num_blocks):
    """Freezes the first `num_blocks` blocks of `backbone` (5 blocks for every backbone:
    VGG16's convolution blocks, ResNet-50's stem and 4 stages, MobileNetV2's 5 resolution
    stages; a truncated VGG16 has as many as it keeps). Returns the frozen layers' names."""
    block_of_layer = BACKBONES[backbone_name].block_of_layer
    num_available = max(filter(None, (block_of_layer(layer.name) for layer in backbone.layers)))
    if not 0 <= num_blocks <= num_available:
        raise ReIDError(
            f"model.freeze_blocks must be between 0 and {num_available} for this {backbone_name}, got {num_blocks}"
        )
    frozen = []
    for layer in backbone.layers:
        block = block_of_layer(layer.name)
        if block is not None and block <= num_blocks:
            layer.trainable = False
            frozen.append(layer.name)
    return frozen


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


def float32_copy(tower):
    """A copy of `tower` that computes in float32, with the same weights.

    A tower trained under a mixed-precision policy computes in bfloat16 or float16; saved or
    exported like that, it needs bf16 kernels wherever it runs (LiteRT refuses it without the
    Flex delegate). Checkpoints and exports hold this float32 copy: the weights are float32
    variables under every policy, so nothing is lost. A float32 tower is returned as it is.
    """
    if all(layer.dtype_policy.compute_dtype == "float32" for layer in all_layers(tower)):
        return tower

    def clone_layer(layer):
        config = layer.get_config()
        # keras.ops calls in the graph (GeM pooling's) are cloned too; they are operations, not
        # layers, and take no dtype: they compute in their inputs' dtype.
        if isinstance(layer, keras.layers.Layer):
            config["dtype"] = "float32"
        return layer.__class__.from_config(config)

    # Cloned from an uncompiled view: cloning a compiled model also rebuilds its loss and
    # metrics, which are this package's functions and need not be part of a tower.
    view = keras.Model(tower.inputs, tower.outputs, name=tower.name)
    copy = keras.models.clone_model(view, clone_function=clone_layer, recursive=True)
    copy.set_weights(tower.get_weights())
    return copy


def all_layers(model):
    """Every layer of `model`, those of nested models (the backbone) included."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from all_layers(layer)


class Float32Mirror:
    """The float32 copy of a tower (`float32_copy`), made once, at the first call, and given
    the tower's current weights at every call after: what scoring and checkpoints use during a
    mixed-precision run. For a float32 tower it is the tower itself."""

    def __init__(self, tower):
        self.tower = tower
        self._copy = None

    def current(self):
        if self._copy is None:
            self._copy = float32_copy(self.tower)
        elif self._copy is not self.tower:
            self._copy.set_weights(self.tower.get_weights())
        return self._copy


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
