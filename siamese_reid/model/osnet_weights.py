"""torchreid OSNet weights onto a Keras OSNet tower.

A torchreid state dict (names -> numpy arrays in PyTorch layouts) maps onto the tower by name:
the backbone's Keras layers carry torchreid's module names (`siamese_reid.model.osnet`), and the
tower's torchreid feature layer (`model.feature_layer: torchreid`) is torchreid's `fc`.
Reading the checkpoint file (and stripping a DataParallel `module.` prefix) is the caller's job.
"""

import keras
import numpy as np

from siamese_reid.model.osnet import OSNET_VARIANTS

# torchreid's training-only identity classifier: a tower holds no classifier (as a checkpoint of
# this package's own training), so these keys are dropped.
CLASSIFIER_PREFIX = "classifier."
# torchreid's fully connected feature layer (Linear, BatchNorm1d) -> the tower's layer names.
_FEATURE_LAYER_NAMES = {"fc.0": "feature_fc", "fc.1": "feature_bn"}

# PyTorch layout -> Keras layout, as the axes np.transpose takes.
_CONV_AXES = (2, 3, 1, 0)  # [out, in, kh, kw] -> [kh, kw, in, out]
_DEPTHWISE_AXES = (2, 3, 0, 1)  # [channels, 1, kh, kw] -> [kh, kw, channels, 1]
_LINEAR_AXES = (1, 0)  # [out, in] -> [in, out]
_SAME_AXES = (0,)  # vectors
# BatchNorm's step counter: in the state dicts of PyTorch >= 0.4.1, and no weight of a Keras
# layer: accepted, not required.
_NO_WEIGHT = None


def _parameters(layer):
    """[(torchreid parameter suffix, axes)] of `layer`, in the order of `layer.get_weights()`,
    followed by the suffixes that are in the state dict but hold no Keras weight (axes None);
    [] for a layer without weights."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return [("weight", _DEPTHWISE_AXES)]
    if isinstance(layer, keras.layers.Conv2D):
        return [("weight", _CONV_AXES)] + ([("bias", _SAME_AXES)] if layer.use_bias else [])
    if isinstance(layer, keras.layers.Dense):
        return [("weight", _LINEAR_AXES), ("bias", _SAME_AXES)]
    if isinstance(layer, keras.layers.BatchNormalization):
        names = ("weight", "bias", "running_mean", "running_var")
        return [(name, _SAME_AXES) for name in names] + [("num_batches_tracked", _NO_WEIGHT)]
    if isinstance(layer, keras.layers.GroupNormalization):
        return [("weight", _SAME_AXES), ("bias", _SAME_AXES)]
    if layer.weights:
        raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) has weights no torchreid parameter maps to")
    return []


def _osnet_layers(tower):
    """{torchreid module name: Keras layer} of the tower's OSNet backbone and feature layer."""
    backbones = [layer for layer in tower.layers if layer.name in OSNET_VARIANTS]
    if len(backbones) != 1:
        raise ValueError(
            f"model {tower.name!r} has no OSNet backbone (a layer named one of {list(OSNET_VARIANTS)}): "
            "torchreid OSNet weights load only into an OSNet tower"
        )
    modules = {layer.name: layer for layer in backbones[0].layers if _parameters(layer)}
    for module, layer_name in _FEATURE_LAYER_NAMES.items():
        if layer_name in {layer.name for layer in tower.layers}:
            modules[module] = tower.get_layer(layer_name)
    return modules


def _names(keys, limit=8):
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _check_keys(required, optional, state_dict):
    given = {key for key in state_dict if not key.startswith(CLASSIFIER_PREFIX)}
    missing, unexpected = required - given, given - required - optional
    if not missing and not unexpected:
        return
    problems = []
    if missing:
        problems.append(f"missing keys: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_names(unexpected)}")
    if any(key.startswith("fc.") for key in unexpected):
        hint = " (a checkpoint with torchreid's fc layer needs model.feature_layer: torchreid)"
    elif any(key.startswith("fc.") for key in missing):
        hint = " (the checkpoint has no fc layer: set model.feature_layer: none)"
    else:
        hint = " (is model.backbone the checkpoint's architecture?)"
    raise ValueError("the state dict does not match this OSNet tower: " + "; ".join(problems) + hint)


def load_torchreid_state_dict(tower, state_dict):
    """Sets `tower`'s OSNet backbone and torchreid feature layer from a torchreid state dict.

    Every tensor is checked before any weight is set: on an error the tower is unchanged.
    Layers torchreid has no counterpart for (this package's projection and BNNeck, if the model
    section asks for them) keep their weights. Keys of torchreid's `classifier` are ignored.

    Args:
      tower: an embedding tower built with an OSNet `model.backbone` (the variant the checkpoint
        was trained as), and `model.feature_layer: torchreid` if the checkpoint has `fc.*` keys.
      state_dict: torchreid parameter and buffer name (`conv2.0.conv1.conv.weight`) -> numpy
        array in PyTorch's layout (convolutions [out, in, kh, kw], linear [out, in]).

    Raises:
      ValueError: naming the missing and unexpected keys, or the first tensor whose shape differs.
    """
    modules = _osnet_layers(tower)
    keys = [(f"{module}.{suffix}", axes) for module, layer in modules.items() for suffix, axes in _parameters(layer)]
    _check_keys(
        {key for key, axes in keys if axes is not _NO_WEIGHT},
        {key for key, axes in keys if axes is _NO_WEIGHT},
        state_dict,
    )
    new_weights = []
    for module, layer in modules.items():
        arrays = []
        weighted = [(suffix, axes) for suffix, axes in _parameters(layer) if axes is not _NO_WEIGHT]
        for (suffix, axes), current in zip(weighted, layer.get_weights(), strict=True):
            key = f"{module}.{suffix}"
            array = np.asarray(state_dict[key], dtype=np.float32)
            torch_shape = tuple(current.shape[axis] for axis in np.argsort(axes))
            if array.shape != torch_shape:
                raise ValueError(
                    f"state dict tensor {key!r} has shape {array.shape}, this tower needs {torch_shape} "
                    "(is model.backbone the checkpoint's architecture and width?)"
                )
            arrays.append(np.transpose(array, axes))
        new_weights.append((layer, arrays))
    for layer, arrays in new_weights:
        layer.set_weights(arrays)
