"""From the backbone's feature map to one feature vector: pooling, per horizontal stripe, and
the optional feature layer before the projection.

Stock Keras layers and `keras.ops` calls only: a saved tower loads without this package.
"""

import keras
from keras import ops

from siamese_reid.errors import ReIDError
from siamese_reid.model.osnet import BATCH_NORM_MOMENTUM, EPSILON

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
    https://arxiv.org/abs/1711.09349; here the stripes share one projection, without refined
    part pooling; PCB's per-part classifiers are the training option loss.stripe_id_weight).
    Rows are shared out as PyTorch's adaptive pooling does: stripe i covers rows floor(i H / n)
    to ceil((i + 1) H / n), so any height works, also one of fewer rows than stripes (rows then
    repeat: a backbone that leaves one row, as ResNet-50 does at 32 pixels high, gives global
    pooling n times over, not an error; the per-stripe identity losses refuse such a map).
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
