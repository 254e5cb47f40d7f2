"""OSNet backbones as torchreid 0.2.5 defines them (torchreid/models/osnet.py, osnet_ain.py),
from stock Keras layers only.

Input: images normalised as torchreid does (x / 255, ImageNet mean and std; the embedding tower
adds that step), shape [batch, height, width, 3]. Output: the feature map after `conv5`,
[batch, height / 16, width / 16, channels[3]] (rounded as PyTorch rounds).

Every Keras layer is named after the torchreid module it mirrors (`conv2.0.conv2a.conv1`,
`conv2.0.gate.fc1`), so a torchreid state dict maps onto the backbone by name
(`siamese_reid.model.osnet_weights`). Layers with no torchreid counterpart (explicit padding,
the gate's pooling and product) carry a suffix torchreid never uses.

Instance normalisation is GroupNormalization with one group per channel: statistics over height
and width of each image and channel, biased variance, as nn.InstanceNorm2d without running
statistics (the same in training and inference). Every normalisation uses PyTorch's epsilon
1e-5 (Keras' default is 1e-3), and BatchNormalization PyTorch's momentum 0.1 (Keras 0.9).

Reference: Zhou et al., Omni-Scale Feature Learning for Person Re-Identification, ICCV 2019,
https://arxiv.org/abs/1905.00953; Zhou et al., Learning Generalisable Omni-Scale
Representations for Person Re-Identification, TPAMI 2021, https://arxiv.org/abs/1910.06827
"""

import re
from typing import NamedTuple

import keras

# PyTorch's normalisation constants (nn.BatchNorm2d, nn.InstanceNorm2d defaults).
EPSILON = 1e-5
BATCH_NORM_MOMENTUM = 0.9  # Keras keeps 0.9 of the old statistic: PyTorch's momentum 0.1
# OSBlock: the four streams work at a quarter of the block's output channels, and the
# aggregation gate's hidden layer at a sixteenth of those (torchreid's defaults).
BOTTLENECK_REDUCTION = 4
GATE_REDUCTION = 16
STREAMS = 4

# Block kinds: "plain" (OSBlock), "ibn" (OSBlock with instance normalisation after the residual
# sum, osnet.py's IN=True) and "in_residual" (osnet_ain.py's OSBlockINin: instance normalisation
# of the residual branch, which then has no batch normalisation).
BLOCK_KINDS = ("plain", "ibn", "in_residual")


class OSNetSpec(NamedTuple):
    """One OSNet architecture.

    Attributes:
      channels: output channels of the stem and of the three stages.
      blocks: the kinds of the two blocks of each of the three stages.
      stem_instance_norm: the 7x7 stem normalises each image (IBN and AIN) instead of the batch.
      layout: "osnet" (osnet.py: the downsampling transition is the third module of stages 2
        and 3, streams named conv2a..conv2d) or "osnet_ain" (osnet_ain.py: transitions `pool2`,
        `pool3`, streams `conv2.T.layers.D`). The networks differ only in their names.
    """

    channels: tuple[int, int, int, int]
    blocks: tuple[tuple[str, str], tuple[str, str], tuple[str, str]]
    stem_instance_norm: bool
    layout: str


_WIDTHS = {
    "x1_0": (64, 256, 384, 512),
    "x0_75": (48, 192, 288, 384),
    "x0_5": (32, 128, 192, 256),
    "x0_25": (16, 64, 96, 128),
}
_PLAIN = (("plain", "plain"),) * 3

# model.backbone -> architecture: the torchreid 0.2.5 functions of the same names.
OSNET_VARIANTS = {
    **{f"osnet_{width}": OSNetSpec(channels, _PLAIN, False, "osnet") for width, channels in _WIDTHS.items()},
    "osnet_ibn_x1_0": OSNetSpec(_WIDTHS["x1_0"], (("ibn", "ibn"), *_PLAIN[1:]), True, "osnet"),
    "osnet_ain_x1_0": OSNetSpec(
        _WIDTHS["x1_0"],
        (("in_residual", "in_residual"), ("plain", "in_residual"), ("in_residual", "plain")),
        True,
        "osnet_ain",
    ),
}


def _conv_initializer():
    # torchreid's kaiming_normal_(mode="fan_out", nonlinearity="relu"): N(0, 2 / fan_out), with
    # fan_out = output channels x kernel area for a Keras kernel [kh, kw, in, out] as for PyTorch.
    return keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")


def _depthwise_initializer():
    # PyTorch's fan_out of a depthwise weight [channels, 1, kh, kw] is channels x kernel area;
    # Keras' depthwise kernel is [kh, kw, channels, 1], whose *fan_in* is that product.
    return keras.initializers.VarianceScaling(2.0, "fan_in", "untruncated_normal")


def _normalization(channels, instance, name):
    if instance:
        return keras.layers.GroupNormalization(groups=channels, epsilon=EPSILON, name=name)
    return keras.layers.BatchNormalization(epsilon=EPSILON, momentum=BATCH_NORM_MOMENTUM, name=name)


def _conv_norm(x, filters, name, kernel=1, stride=1, instance=False, relu=True, norm=True):
    """torchreid's ConvLayer / Conv1x1 / Conv1x1Linear: convolution (padding kernel // 2 on every
    side, as PyTorch pads), normalisation, optional ReLU.

    Keras' "same" padding puts the odd pixel of a strided convolution at the bottom and right,
    PyTorch pads evenly: the 7x7 stride-2 stem would see a shifted image. Explicit padding keeps
    the sampling grid PyTorch's.
    """
    if kernel > 1:
        x = keras.layers.ZeroPadding2D(kernel // 2, name=f"{name}.pad")(x)
    x = keras.layers.Conv2D(
        filters, kernel, strides=stride, use_bias=False, kernel_initializer=_conv_initializer(), name=f"{name}.conv"
    )(x)
    if norm:
        x = _normalization(filters, instance, f"{name}.bn")(x)
    return keras.layers.ReLU(name=f"{name}.relu")(x) if relu else x


def _light_conv(x, channels, name):
    """torchreid's LightConv3x3: 1x1 convolution (linear), depthwise 3x3, BN, ReLU."""
    pointwise = keras.layers.Conv2D(
        channels, 1, use_bias=False, kernel_initializer=_conv_initializer(), name=f"{name}.conv1"
    )
    depthwise = keras.layers.DepthwiseConv2D(
        3, padding="same", use_bias=False, depthwise_initializer=_depthwise_initializer(), name=f"{name}.conv2"
    )
    x = depthwise(pointwise(x))
    x = _normalization(channels, False, f"{name}.bn")(x)
    return keras.layers.ReLU(name=f"{name}.relu")(x)


def _stream_names(name, layout):
    """The torchreid names of the LightConv3x3 layers of each of the four streams."""
    if layout == "osnet":
        # conv2a is one LightConv3x3; conv2b, conv2c, conv2d are Sequentials of 2, 3, 4 of them
        return [[f"{name}.conv2a"]] + [
            [f"{name}.conv2{'abcd'[stream]}.{depth}" for depth in range(stream + 1)] for stream in range(1, STREAMS)
        ]
    return [[f"{name}.conv2.{stream}.layers.{depth}" for depth in range(stream + 1)] for stream in range(STREAMS)]


class _AggregationGate:
    """torchreid's ChannelGate: one small network (global average pooling, 1x1 conv, ReLU,
    1x1 conv, sigmoid) shared by the four streams, whose output scales each stream's channels.
    The two convolutions are created once and called on every stream, so they share weights."""

    def __init__(self, channels, name):
        self.name = name
        self.hidden = keras.layers.Conv2D(
            channels // GATE_REDUCTION, 1, activation="relu", kernel_initializer=_conv_initializer(), name=f"{name}.fc1"
        )
        self.gate = keras.layers.Conv2D(
            channels, 1, activation="sigmoid", kernel_initializer=_conv_initializer(), name=f"{name}.fc2"
        )

    def __call__(self, stream, index):
        pooled = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{self.name}.pool_{index}")(stream)
        weights = self.gate(self.hidden(pooled))
        return keras.layers.Multiply(name=f"{self.name}.scale_{index}")([stream, weights])


def _os_block(x, out_channels, kind, name, layout):
    """torchreid's OSBlock / OSBlockINin: four streams of 1..4 lightweight 3x3 convolutions
    (receptive fields 3, 5, 7, 9), aggregated by a shared channel gate, plus the residual."""
    in_channels = x.shape[-1]
    mid_channels = out_channels // BOTTLENECK_REDUCTION
    squeezed = _conv_norm(x, mid_channels, f"{name}.conv1")
    gate = _AggregationGate(mid_channels, f"{name}.gate")
    gated = []
    for index, stream_names in enumerate(_stream_names(name, layout)):
        stream = squeezed
        for layer_name in stream_names:
            stream = _light_conv(stream, mid_channels, layer_name)
        gated.append(gate(stream, index))
    aggregated = keras.layers.Add(name=f"{name}.aggregate")(gated)
    residual = _conv_norm(aggregated, out_channels, f"{name}.conv3", relu=False, norm=kind != "in_residual")
    if kind == "in_residual":
        residual = _normalization(out_channels, True, f"{name}.IN")(residual)
    shortcut = x
    if in_channels != out_channels:
        shortcut = _conv_norm(x, out_channels, f"{name}.downsample", relu=False)
    out = keras.layers.Add(name=f"{name}.add")([residual, shortcut])
    if kind == "ibn":
        out = _normalization(out_channels, True, f"{name}.IN")(out)
    return keras.layers.ReLU(name=f"{name}.relu")(out)


def _transition(x, name):
    """1x1 conv + BN + ReLU, then 2x2 average pooling: halves the feature map between stages."""
    x = _conv_norm(x, x.shape[-1], name)
    return keras.layers.AveragePooling2D(2, name=f"{name}.avgpool")(x)


def build_osnet(spec, input_shape, name="osnet"):
    """Builds the OSNet feature extractor `spec` describes (no pooling, no fc layer).

    Args:
      spec: an `OSNetSpec`, e.g. OSNET_VARIANTS["osnet_x1_0"].
      input_shape: (height, width, 3) of the normalised images.
      name: the Keras model's name.

    Returns:
      A functional `keras.Model` mapping [batch, height, width, 3] to the `conv5` feature map.
    """
    images = keras.Input(input_shape, name="normalized_images")
    x = _conv_norm(images, spec.channels[0], "conv1", kernel=7, stride=2, instance=spec.stem_instance_norm)
    # Zero padding is PyTorch's -inf padding here: the ReLU before makes every value >= 0.
    x = keras.layers.ZeroPadding2D(1, name="maxpool.pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="maxpool")(x)
    for stage, (out_channels, kinds) in enumerate(zip(spec.channels[1:], spec.blocks, strict=True)):
        stage_name = f"conv{stage + 2}"
        for index, kind in enumerate(kinds):
            x = _os_block(x, out_channels, kind, f"{stage_name}.{index}", spec.layout)
        if stage < 2:
            # osnet.py: Sequential(Conv1x1, AvgPool2d) appended to the stage; osnet_ain.py: pool2, pool3
            x = _transition(x, f"{stage_name}.{len(kinds)}.0" if spec.layout == "osnet" else f"pool{stage + 2}.0")
    x = _conv_norm(x, spec.channels[3], "conv5")
    return keras.Model(images, x, name=name)


def osnet_block_of_layer(layer_name):
    """The block (1..5) of a backbone layer for model.freeze_blocks: the stem (conv1, maxpool),
    the three stages with their downsampling transitions, and conv5."""
    if layer_name.startswith("maxpool"):
        return 1
    match = re.match(r"(?:conv|pool)(\d)\.", layer_name)
    return int(match.group(1)) if match else None
