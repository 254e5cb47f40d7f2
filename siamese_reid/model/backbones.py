"""The backbones of the embedding tower: VGG16, ResNet-50, MobileNetV2 (keras.applications),
VGG16 with batch normalisation, and OSNet, each with the preprocessing its weights expect and
a numbering of its blocks; weights resolved, the last stride, frozen blocks.
"""

import re
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np

from siamese_reid.errors import ReIDError
from siamese_reid.model.osnet import BATCH_NORM_MOMENTUM, EPSILON, OSNET_VARIANTS, build_osnet, osnet_block_of_layer

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


# VGG16's convolution blocks: (filters, convolutions) of blocks 1 to 5.
_VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


def _vgg16_bn(input_shape, weights, vgg_blocks):
    """VGG16 with batch normalisation after every convolution (Simonyan & Zisserman's
    configuration D, in torchvision vgg16_bn's order: convolution, normalisation, ReLU),
    truncated after `vgg_blocks` blocks.

    Trained from random initialisation, plain VGG16's 13 ReLU convolutions start slowly; batch
    normalisation keeps each layer's inputs at a scale the learning rate suits. Layers are named
    as in keras.applications' VGG16 (block<b>_conv<c>, block<b>_pool, plus block<b>_bn<c>), so
    freeze_blocks numbers them the same way. The convolutions have no bias (torchvision's do: the
    normalisation's offset makes it redundant), and the normalisation keeps 0.9 of its running
    statistics per step, as the package's other normalisations (PyTorch's momentum 0.1): Keras'
    default 0.99 would still weigh the initial statistics after an epoch of a small re-ID set.
    Keras has no ImageNet weights for it. As `_vgg16`, all five blocks are built, so a weights
    file of the whole backbone loads, then the first `vgg_blocks` are kept.
    """
    if weights == "imagenet":
        raise ReIDError(
            "there are no Keras ImageNet weights for vgg16_bn: use model.weights=none (what it is for: "
            "training from random initialisation), a .weights.h5 file of this backbone, or backbone vgg16"
        )
    images = keras.Input(input_shape, name="input_layer")
    features = images
    for block, (filters, convolutions) in enumerate(_VGG16_BLOCKS, start=1):
        for convolution in range(1, convolutions + 1):
            # no bias: the batch normalisation's offset that follows takes its place
            features = keras.layers.Conv2D(
                filters, 3, padding="same", use_bias=False, name=f"block{block}_conv{convolution}"
            )(features)
            features = keras.layers.BatchNormalization(
                epsilon=EPSILON, momentum=BATCH_NORM_MOMENTUM, name=f"block{block}_bn{convolution}"
            )(features)
            features = keras.layers.ReLU(name=f"block{block}_relu{convolution}")(features)
        features = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(features)
    backbone = keras.Model(images, features, name="vgg16_bn")
    if weights is not None:
        backbone.load_weights(weights)
    return keras.Model(images, backbone.get_layer(f"block{vgg_blocks}_pool").output, name="vgg16_bn")


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
    # torchvision's input normalisation (any fixed one suits random initialisation)
    "vgg16_bn": Backbone(_vgg16_bn, _torchreid_preprocess, _vgg16_block),
    "resnet50": Backbone(_resnet50, _caffe_preprocess, _resnet50_block),
    "mobilenetv2": Backbone(_mobilenetv2, _tf_preprocess, _mobilenetv2_block),
    **{variant: Backbone(_osnet(variant), _torchreid_preprocess, osnet_block_of_layer) for variant in OSNET_VARIANTS},
}


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

    `last_stride=1` removes the backbone's last downsampling (`WITHOUT_LAST_DOWNSAMPLING`).
    """
    if backbone_name not in BACKBONES:
        raise ReIDError(f"unknown backbone {backbone_name!r}; valid names: {list(BACKBONES)}")
    if last_stride not in (1, 2):
        raise ReIDError(f"last_stride must be 1 or 2, got {last_stride!r}")
    if last_stride == 1 and backbone_name not in WITHOUT_LAST_DOWNSAMPLING:
        raise ReIDError(
            f"last_stride 1 is implemented for {list(WITHOUT_LAST_DOWNSAMPLING)} only, not {backbone_name}: "
            "set model.last_stride to 2"
        )
    weights = resolve_weights(weights)
    try:
        # vgg_blocks truncates the VGG16s only: the other builders take no such argument
        options = {"vgg_blocks": vgg_blocks} if backbone_name in ("vgg16", "vgg16_bn") else {}
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
    return WITHOUT_LAST_DOWNSAMPLING[backbone_name](backbone) if last_stride == 1 else backbone


# The convolutions that downsample at the entry of the last stage (conv5_block1's main path and
# its shortcut; keras.applications puts ResNet v1's stride on the 1x1 convolutions).
RESNET50_LAST_STAGE_STRIDED_LAYERS = ("conv5_block1_1_conv", "conv5_block1_0_conv")


def with_last_stride_one(backbone):
    """The same ResNet-50 with stride 1 in its last stage: a feature map twice as tall and wide
    (16x8 instead of 8x4 at 256x128) for the same weights.

    keras.applications fixes the stride, so the network is cloned with those layers' strides set
    to 1, and the weights copied over: a stride changes no weight shape. The clone is made of
    the same stock layers, so a saved tower still loads without this package.

    Reference: Luo et al., Bag of Tricks and A Strong Baseline for Deep Person
    Re-identification, https://arxiv.org/abs/1903.07071 (section "Last Stride").
    """

    def clone_layer(layer):
        config = layer.get_config()
        if layer.name in RESNET50_LAST_STAGE_STRIDED_LAYERS:
            config["strides"] = (1, 1)
        return layer.__class__.from_config(config)

    images = keras.Input(backbone.input_shape[1:], name=backbone.layers[0].name)
    rebuilt = keras.models.clone_model(backbone, input_tensors=images, clone_function=clone_layer)
    rebuilt.set_weights(backbone.get_weights())
    return rebuilt


def without_last_pooling(backbone):
    """A (truncated) VGG16 ending before its last block's max-pooling, VGG's last downsampling:
    a feature map twice as tall and wide (16x8 instead of 8x4 with blocks 1-4 at 128x64) from the
    same convolutions and weights. Both VGG builders end at `block{vgg_blocks}_pool`, so the cut
    is at the input of their last layer."""
    return keras.Model(backbone.input, backbone.layers[-1].input, name=backbone.name)


# model.backbone -> how `last_stride=1` removes its last downsampling, keeping every weight
WITHOUT_LAST_DOWNSAMPLING = {
    "resnet50": with_last_stride_one,
    "vgg16": without_last_pooling,
    "vgg16_bn": without_last_pooling,
}


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
