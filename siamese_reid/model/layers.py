"""Small custom layers, serialisable so that a saved embedding tower re-loads on its own."""

import keras
from keras import ops

# Per-backbone input preprocessing, the same as keras.applications' preprocess_input.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="siamese_reid")
class BackbonePreprocess(keras.layers.Layer):
    """Maps RGB images in [0, 255] to what the backbone was trained on.

    mode "caffe" (VGG16, ResNet50): RGB -> BGR and ImageNet mean subtraction;
    mode "tf" (MobileNetV2): scale to [-1, 1].
    """

    def __init__(self, mode, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("caffe", "tf"):
            raise ValueError(f"mode must be 'caffe' or 'tf', got {mode!r}")
        self.mode = mode

    def call(self, images):
        if self.mode == "tf":
            return images / 127.5 - 1.0
        bgr = ops.flip(images, axis=-1)
        return bgr - ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype=images.dtype)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="siamese_reid")
class GeneralizedMeanPooling(keras.layers.Layer):
    """GeM pooling: (mean(x^p))^(1/p) over space; p=1 is average, p->inf is max pooling.

    Reference: Radenović et al., Fine-tuning CNN Image Retrieval with No Human Annotation,
    https://arxiv.org/abs/1711.02512
    """

    def __init__(self, power=3.0, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.power = power
        self.epsilon = epsilon

    def call(self, features):
        clipped = ops.maximum(features, self.epsilon)
        pooled = ops.mean(ops.power(clipped, self.power), axis=(1, 2))
        return ops.power(pooled, 1.0 / self.power)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "power": self.power, "epsilon": self.epsilon}
