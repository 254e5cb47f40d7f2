"""Collapse indicators of triplet training: mean positive and negative distances and the
fraction of active triplets, as Keras metrics on the same pairs the loss mines."""

from keras import ops

from siamese_reid.losses.distances import label_masks, pairwise_distances, triplet_distances
from siamese_reid.losses.triplet import global_batch, hardest_pairs, masked_mean


# Statistics that reveal collapse (all embeddings equal: every distance 0, loss = margin).
def _batch_distance_stats(y_true, y_pred, distance_metric):
    if len(y_pred.shape) == 3:  # explicit triplets
        d_ap, d_an = triplet_distances(y_pred, distance_metric)
        return d_ap, d_an, ops.ones_like(d_ap, dtype="bool"), ops.ones_like(d_an, dtype="bool")
    y_true, y_pred = global_batch(y_true, y_pred)  # the pairs of the whole batch, as the loss mines
    distances = pairwise_distances(y_pred, distance_metric)
    positives, negatives = label_masks(y_true)
    return distances, distances, positives, negatives


def make_triplet_metrics(distance_metric, margin):
    """Returns metric functions: mean positive / negative distance, active-triplet fraction.

    For P x K batches a triplet is active when its hardest negative is closer than the hardest
    positive plus the margin; for explicit triplets when d_an < d_ap + margin.
    """

    def mean_positive_distance(y_true, y_pred):
        d_ap, _, positives, _ = _batch_distance_stats(y_true, y_pred, distance_metric)
        return masked_mean(d_ap, positives)

    def mean_negative_distance(y_true, y_pred):
        _, d_an, _, negatives = _batch_distance_stats(y_true, y_pred, distance_metric)
        return masked_mean(d_an, negatives)

    def active_triplet_fraction(y_true, y_pred):
        if len(y_pred.shape) == 3:
            d_ap, d_an = triplet_distances(y_pred, distance_metric)
            return ops.mean(ops.cast(d_an < d_ap + margin, "float32"))
        distances, _, positives, negatives = _batch_distance_stats(y_true, y_pred, distance_metric)
        hardest_positive, hardest_negative, valid = hardest_pairs(distances, positives, negatives)
        return masked_mean(ops.cast(hardest_negative < hardest_positive + margin, "float32"), valid)

    return [mean_positive_distance, mean_negative_distance, active_triplet_fraction]
