"""The float32 copy of a tower trained under a mixed-precision policy: what checkpoints,
scoring and exports use."""

import keras


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
