"""Identity losses of Luo et al.'s strong baseline, in `keras.ops`: cross-entropy with label
smoothing on an identity classifier, and the center loss with its centre update.

Each is a pure function plus a thin `keras.losses.Loss` class, as the triplet losses in
`siamese_reid.losses.triplet`, tested against NumPy written from the definitions.

Reference: Luo et al., Bag of Tricks and A Strong Baseline for Deep Person Re-identification,
https://arxiv.org/abs/1903.07071; reference code https://github.com/michuanhaohao/reid-strong-baseline
"""

import keras
from keras import ops


def label_smoothed_cross_entropy(y_true, y_pred, label_smoothing=0.1):
    """Cross-entropy of each sample's identity logits against smoothed one-hot targets.

    The target of identity i is 1 - epsilon + epsilon / N for the true identity and
    epsilon / N for each other one (N identities), i.e. (1 - epsilon) one_hot + epsilon / N.

    Args:
      y_true: int tensor of shape [batch] or [batch, 1], identities 0..N-1.
      y_pred: float tensor of shape [batch, N], logits.
      label_smoothing: epsilon (0 = plain cross-entropy).

    Returns:
      float32 tensor of shape [batch], one loss per sample (as Keras' own loss functions: the
      class reduces it, which also divides it between replicas under tf.distribute).

    Reference: Szegedy et al., Rethinking the Inception Architecture, https://arxiv.org/abs/1512.00567
    (section 7); Luo et al. 2019 (epsilon = 0.1).
    """
    logits = ops.cast(y_pred, "float32")
    labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")  # Keras hands labels over as float32
    num_identities = logits.shape[-1]
    targets = ops.one_hot(labels, num_identities) * (1.0 - label_smoothing) + label_smoothing / num_identities
    return -ops.sum(targets * ops.log_softmax(logits, axis=-1), axis=-1)


def center_distances(labels, features, centers):
    """Squared euclidean distance of each feature to the centre of its identity.

    Args:
      labels: int tensor of shape [batch], identities 0..N-1.
      features: float tensor of shape [batch, dim].
      centers: float tensor of shape [N, dim].

    Returns:
      float32 tensor of shape [batch].
    """
    labels = ops.cast(ops.reshape(labels, (-1,)), "int32")
    own_centers = ops.take(ops.cast(centers, "float32"), labels, axis=0)
    return ops.sum(ops.square(ops.cast(features, "float32") - own_centers), axis=-1)


def center_loss(labels, features, centers):
    """Center loss: the mean over the batch of ||feature - centre of its identity||^2.

    Wen et al. halve the sum; the strong baseline's reference code (which we follow) takes the
    mean without the 1/2 and weighs it by 0.0005.

    Reference: Wen et al., A Discriminative Feature Learning Approach for Deep Face
    Recognition, ECCV 2016; Luo et al. 2019.
    """
    return ops.mean(center_distances(labels, features, centers))


def center_update(labels, features, centers, learning_rate):
    """The centres after one plain SGD step on `center_loss` with respect to the centres.

    d center_loss / d c_j = -(2 / batch) sum over samples i of identity j of (x_i - c_j), so
    c_j <- c_j + learning_rate * (2 / batch) * sum_i (x_i - c_j); centres of identities absent
    from the batch stay. The strong baseline's reference code updates the centres this way, by
    their own SGD optimizer (learning rate 0.5) on the unweighted center loss, while the
    features get the weighted loss's gradient.

    Args:
      labels: int tensor of shape [batch]; features: [batch, dim]; centers: [N, dim].
      learning_rate: float.

    Returns:
      float32 tensor of shape [N, dim].
    """
    labels = ops.cast(ops.reshape(labels, (-1,)), "int32")
    centers = ops.cast(centers, "float32")
    differences = ops.cast(features, "float32") - ops.take(centers, labels, axis=0)
    sums = ops.segment_sum(differences, labels, num_segments=centers.shape[0])
    batch_size = ops.cast(ops.shape(differences)[0], "float32")
    return centers + learning_rate * 2.0 / batch_size * sums


@keras.saving.register_keras_serializable(package="siamese_reid")
class LabelSmoothedCrossEntropy(keras.losses.Loss):
    """Identity loss on logits with label smoothing (see `label_smoothed_cross_entropy`): the
    mean over the batch with the default reduction.

    `call` returns per-sample losses, not their mean: Keras divides a loss between replicas only
    when it reduces per-sample values itself (a scalar passes unscaled, and each replica's
    gradient would count N times)."""

    def __init__(self, label_smoothing=0.1, name=None, reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name or type(self).__name__, reduction=reduction, dtype=dtype)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        return label_smoothed_cross_entropy(y_true, y_pred, label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "dtype": self.dtype, "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="siamese_reid")
class CenterLoss(keras.losses.Loss):
    """The center loss of a model whose output `y_pred` [batch] is already each sample's squared
    distance to its identity's centre (`center_distances`): the centres are model weights with
    their own update (see siamese_reid.model.training_model.IdentityCenters), so this loss only
    averages over the batch (Keras' reduction, which also divides it between replicas).
    `y_true` is unused."""

    def __init__(self, name=None, reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name or type(self).__name__, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        return ops.cast(y_pred, "float32")

    def get_config(self):
        return {**super().get_config(), "dtype": self.dtype}
