"""Triplet losses in `keras.ops`, with tensorflow-addons' names, arguments and semantics.

`triplet_semihard_loss`, `triplet_hard_loss` and their classes follow tensorflow-addons 0.23
(`tfa.losses`): same argument names and defaults (margin=1.0, distance_metric="L2"), same
mining rules, `y_true` of shape [batch] or [batch, 1]. Where tensorflow-addons misbehaves we
deliberately differ (tests pin each case):

* A batch in which no anchor has both a positive and a negative returns 0, not NaN
  (tfa's semi-hard loss divides by a zero count of positive pairs).
* Anchors without a positive or without a negative form no triplet and are left out of the
  mean (tfa's hard loss counts them with a positive distance of 0 or a negative distance equal
  to the row maximum, which drags the loss towards the margin).
* The euclidean distance has a finite gradient at zero distance.
* Distances and losses are computed in float32 (as tensorflow-addons does for float16 and
  bfloat16), and the soft margin uses a stable softplus instead of log1p(exp(x)), which is
  infinite once x > 88.
* Under a `tf.distribute` strategy with several replicas, the loss classes mine in the global
  batch (the embeddings of every replica), not in each replica's share (tfa mines per replica:
  tensorflow/tensorflow#47344), and the loss and its gradient are those of one device.

Reference: Schroff et al., FaceNet (semi-hard), https://arxiv.org/abs/1503.03832;
Hermans et al., In Defense of the Triplet Loss (batch hard), https://arxiv.org/abs/1703.07737.
"""

import keras
from keras import ops

from siamese_reid.errors import ReIDError
from siamese_reid.losses.distances import label_masks, metric_named, pairwise_distances, triplet_distances


def masked_mean(values, mask):
    mask = ops.cast(mask, "float32")
    return ops.sum(values * mask) / ops.maximum(ops.sum(mask), 1.0)


def hardest_pairs(distances, positives, negatives):
    """Batch-hard mining: for every anchor, the distance to its farthest positive and to its
    closest negative, and whether it has both (a triplet exists)."""
    hardest_positive = ops.max(ops.where(positives, distances, -1.0), axis=1)
    hardest_negative = ops.min(ops.where(negatives, distances, ops.max(distances) + 1.0), axis=1)
    valid = ops.logical_and(ops.any(positives, axis=1), ops.any(negatives, axis=1))
    return hardest_positive, hardest_negative, valid


def triplet_hard_loss(y_true, y_pred, margin=1.0, soft=False, distance_metric="L2"):
    """Batch-hard triplet loss: hardest positive and hardest negative for every anchor.

    Args:
      y_true: int tensor of shape [batch] or [batch, 1], identity labels.
      y_pred: float tensor of shape [batch, embedding_dim].
      margin: hinge margin (ignored when `soft`).
      soft: use softplus(d_ap - d_an) instead of max(d_ap - d_an + margin, 0).
      distance_metric: "L2", "squared-L2" or "angular".

    Returns:
      float32 scalar: the mean over anchors that have a positive and a negative.
    """
    distances = pairwise_distances(y_pred, distance_metric)
    hardest_positive, hardest_negative, valid = hardest_pairs(distances, *label_masks(y_true))
    difference = hardest_positive - hardest_negative
    losses = ops.softplus(difference) if soft else ops.relu(difference + margin)
    return masked_mean(losses, valid)


def triplet_semihard_loss(y_true, y_pred, margin=1.0, distance_metric="L2"):
    """Semi-hard triplet loss over every (anchor, positive) pair in the batch.

    For each pair the negative is the closest one farther than the positive; if none is
    farther, the farthest negative. Loss = mean over pairs of max(d_ap - d_an + margin, 0).

    Args: as `triplet_hard_loss`, without `soft`.
    """
    distances = pairwise_distances(y_pred, distance_metric)
    positives, negatives = label_masks(y_true)
    # [anchor, positive, negative] cube: negatives farther than the positive of the pair.
    d_an = distances[:, None, :]
    d_ap = distances[:, :, None]
    is_negative = negatives[:, None, :]
    farther = ops.logical_and(is_negative, d_an > d_ap)
    large = ops.max(distances) + 1.0
    semihard = ops.min(ops.where(farther, d_an, large), axis=2)
    hardest_fallback = ops.max(ops.where(negatives, distances, -1.0), axis=1, keepdims=True)
    chosen = ops.where(ops.any(farther, axis=2), semihard, hardest_fallback)
    losses = ops.relu(distances - chosen + margin)
    valid = ops.logical_and(positives, ops.any(negatives, axis=1, keepdims=True))
    return masked_mean(losses, valid)


def triplet_batch_all_loss(y_true, y_pred, margin=1.0, soft=False, distance_metric="L2"):
    """Batch-all triplet loss: mean over the active (non-zero) valid triplets.

    Reference: Hermans et al. 2017, the "BA≠0" variant (averaging over all triplets, most of
    which are inactive late in training, shrinks the gradient towards zero).
    """
    distances = pairwise_distances(y_pred, distance_metric)
    positives, negatives = label_masks(y_true)
    difference = distances[:, :, None] - distances[:, None, :]
    losses = ops.softplus(difference) if soft else ops.relu(difference + margin)
    valid = ops.logical_and(positives[:, :, None], negatives[:, None, :])
    active = ops.logical_and(valid, losses > 1e-16)
    return masked_mean(losses, active)


def triplet_margin_loss(y_true, y_pred, margin=1.0, soft=False, distance_metric="L2"):
    """Loss on explicit triplets: `y_pred` is [batch, 3, dim] (anchor, positive, negative).

    `y_true` is ignored (it carries the anchor identities for bookkeeping only).
    """
    del y_true
    d_ap, d_an = triplet_distances(y_pred, distance_metric)
    difference = d_ap - d_an
    losses = ops.softplus(difference) if soft else ops.relu(difference + margin)
    return ops.mean(losses)


def _replicas_in_sync():
    """The replica context of a `tf.distribute` step with more than one replica, else None."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    return context if context is not None and context.num_replicas_in_sync > 1 else None


def _all_gather(context, values):
    """The rows of `values` of every replica, in replica order.

    An all-reduce (sum) of zero-padded copies, each replica's rows at its own offset, rather
    than `ReplicaContext.all_gather`, which fails inside `fit` under MultiWorkerMirroredStrategy
    ("destinations can not be empty": its merge_call needs tensors placed on a device). The
    gradient is the one all_gather has: the sum of every replica's gradient, of which each
    replica keeps the rows of its own input. Exact: every sum adds zeros to one value.
    """
    import tensorflow as tf

    dtype, values = values.dtype, tf.cast(values, "float32")  # labels too: exact below 2**24
    replica, num_replicas = context.replica_id_in_sync_group, context.num_replicas_in_sync
    size = tf.cast(tf.shape(values)[0], "float32")
    sizes = tf.cast(context.all_reduce("sum", tf.one_hot(replica, num_replicas) * size), "int32")
    before, after = tf.reduce_sum(sizes[:replica]), tf.reduce_sum(sizes[replica + 1 :])
    padding = tf.concat([[[before, after]], tf.zeros([tf.rank(values) - 1, 2], "int32")], axis=0)
    return tf.cast(context.all_reduce("sum", tf.pad(values, padding)), dtype)


def global_batch(y_true, y_pred):
    """Every replica's labels and embeddings, in replica order (the batch itself on one device)."""
    context = _replicas_in_sync()
    if context is None:
        return y_true, y_pred
    return _all_gather(context, y_true), _all_gather(context, y_pred)


def _loss_on_global_batch(loss_function, y_true, y_pred, **arguments):
    """`loss_function` of the global batch, as this replica's share of the loss to minimise.

    Every replica computes the same loss L of the gathered batch and returns L / N (N replicas).
    The gradient of `all_gather` sums the incoming gradients of all replicas and gives each
    replica the rows of its own embeddings, so each replica's gradient is that of L through its
    own images, and their sum (the optimizer all-reduces gradients by SUM) is the gradient one
    device computes on the whole batch. Keras itself divides a loss by N only when it reduces
    per-example values (`scale_loss_for_distribution`); it leaves a scalar as it is, yet
    multiplies the logged loss by N (`unscale_loss_for_distribution`), so without this division
    the step and the logged loss were N times too large. With it the logged loss is L.
    """
    context = _replicas_in_sync()
    loss = loss_function(*global_batch(y_true, y_pred), **arguments)
    return loss if context is None else loss / context.num_replicas_in_sync


class _TripletLoss(keras.losses.Loss):
    """Shared plumbing of the loss classes, in the Keras recipe: one attribute per constructor
    argument, `get_config` chained to `super()`. Every loss function already reduces the batch
    to one scalar, so `reduction` only matters for "none" (which returns that scalar too)."""

    def __init__(self, margin=1.0, distance_metric="L2", name=None, reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name or type(self).__name__, reduction=reduction, dtype=dtype)
        metric_named(distance_metric)  # fail at construction, not at the first batch
        self.margin = margin
        self.distance_metric = distance_metric

    def _loss_arguments(self):
        """The keyword arguments of `loss_function`, which are the constructor's besides Keras' own."""
        return {"margin": self.margin, "distance_metric": self.distance_metric}

    def call(self, y_true, y_pred):
        return _loss_on_global_batch(self.loss_function, y_true, y_pred, **self._loss_arguments())

    def get_config(self):
        # keras.losses.Loss.get_config leaves out dtype, which the constructor takes: add it.
        return {**super().get_config(), "dtype": self.dtype, **self._loss_arguments()}


class _SoftMarginTripletLoss(_TripletLoss):
    """A triplet loss with a soft-margin variant: `soft` uses softplus(d_ap - d_an) instead of
    the hinge."""

    def __init__(
        self, margin=1.0, soft=False, distance_metric="L2", name=None, reduction="sum_over_batch_size", dtype=None
    ):
        super().__init__(margin=margin, distance_metric=distance_metric, name=name, reduction=reduction, dtype=dtype)
        self.soft = soft

    def _loss_arguments(self):
        return {**super()._loss_arguments(), "soft": self.soft}


@keras.saving.register_keras_serializable(package="siamese_reid")
class TripletHardLoss(_SoftMarginTripletLoss):
    """Batch-hard triplet loss (see `triplet_hard_loss`); tfa.losses.TripletHardLoss API."""

    loss_function = staticmethod(triplet_hard_loss)


@keras.saving.register_keras_serializable(package="siamese_reid")
class TripletSemiHardLoss(_TripletLoss):
    """Semi-hard triplet loss (see `triplet_semihard_loss`); tfa.losses.TripletSemiHardLoss API.

    Semi-hard mining has no soft-margin variant, hence no `soft` argument.
    """

    loss_function = staticmethod(triplet_semihard_loss)


@keras.saving.register_keras_serializable(package="siamese_reid")
class TripletBatchAllLoss(_SoftMarginTripletLoss):
    """Batch-all triplet loss over active triplets (see `triplet_batch_all_loss`)."""

    loss_function = staticmethod(triplet_batch_all_loss)


@keras.saving.register_keras_serializable(package="siamese_reid")
class TripletMarginLoss(_SoftMarginTripletLoss):
    """Hinge or soft-margin loss on explicit (anchor, positive, negative) embeddings."""

    loss_function = staticmethod(triplet_margin_loss)


# loss.name -> loss class
LOSSES = {
    "batch_hard": TripletHardLoss,
    "semihard": TripletSemiHardLoss,
    "batch_all": TripletBatchAllLoss,
    "triplet": TripletMarginLoss,
}
# The losses that mine the triplets of a P x K batch: what `loss.name` chooses. "triplet" (on
# explicit triplets) is the triplet sampler's own, chosen with it.
BATCH_LOSSES = ("batch_hard", "semihard", "batch_all")


def build_loss(name, margin, soft, distance_metric):
    """The loss object for `name` (a key of LOSSES) from plain arguments."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {list(LOSSES)}")
    if name == "semihard":
        if soft:
            raise ReIDError("the semihard loss has no soft-margin variant: soft (loss.soft) must be false")
        return TripletSemiHardLoss(margin=margin, distance_metric=distance_metric)
    return LOSSES[name](margin=margin, soft=soft, distance_metric=distance_metric)
