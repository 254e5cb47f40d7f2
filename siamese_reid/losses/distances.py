"""Distances between embeddings in `keras.ops`, computed in float32: the metrics the triplet
losses and the collapse indicators mine with ("L2", "squared-L2", "angular"), and the label
masks of a batch's positive and negative pairs."""

from collections.abc import Callable
from typing import NamedTuple

from keras import ops

_EPSILON = 1e-12


def _safe_sqrt(squared):
    """sqrt with a finite gradient at 0.

    sqrt has an infinite derivative at 0: take it of a value bounded away from zero and mask
    the exact zeros afterwards, so gradients stay finite for identical embeddings.
    """
    is_zero = ops.cast(squared <= 0.0, "float32")
    return ops.sqrt(squared + is_zero * _EPSILON) * (1.0 - is_zero)


def _unit(embeddings):
    return embeddings / ops.maximum(ops.norm(embeddings, axis=-1, keepdims=True), _EPSILON)


def _pairwise_squared_l2(embeddings):
    squared_norms = ops.sum(ops.square(embeddings), axis=1, keepdims=True)
    squared = squared_norms - 2.0 * ops.matmul(embeddings, ops.transpose(embeddings))
    return ops.maximum(squared + ops.transpose(squared_norms), 0.0)


def _pairwise_angular(embeddings):
    normalized = _unit(embeddings)
    return ops.maximum(1.0 - ops.matmul(normalized, ops.transpose(normalized)), 0.0)


def _paired_squared_l2(first, second):
    return ops.sum(ops.square(first - second), axis=-1)


def _paired_angular(first, second):
    return ops.maximum(1.0 - ops.sum(_unit(first) * _unit(second), axis=-1), 0.0)


class DistanceMetric(NamedTuple):
    """One distance, between all rows of a batch (pairwise) and between paired rows."""

    pairwise: Callable
    paired: Callable


# loss.distance_metric -> DistanceMetric
DISTANCE_METRICS = {
    "L2": DistanceMetric(
        lambda x: _safe_sqrt(_pairwise_squared_l2(x)), lambda a, b: _safe_sqrt(_paired_squared_l2(a, b))
    ),
    "squared-L2": DistanceMetric(_pairwise_squared_l2, _paired_squared_l2),
    "angular": DistanceMetric(_pairwise_angular, _paired_angular),
}


def metric_named(name):
    if name not in DISTANCE_METRICS:
        raise ValueError(f"distance_metric must be one of {list(DISTANCE_METRICS)}, got {name!r}")
    return DISTANCE_METRICS[name]


def pairwise_distances(embeddings, distance_metric="L2"):
    """Distances between all rows of `embeddings` [batch, dim]; returns float32 [batch, batch].

    The diagonal is exactly zero. "angular" is 1 - cosine similarity, clipped at 0.
    """
    metric = metric_named(distance_metric)
    embeddings = ops.cast(embeddings, "float32")
    off_diagonal = 1.0 - ops.eye(ops.shape(embeddings)[0], dtype="float32")
    return metric.pairwise(embeddings) * off_diagonal


def label_masks(y_true):
    # a column against a row by broadcasting: transposing the integer labels would send them
    # to oneDNN, which logs an "E0000 ... supports DT_INT32 only with AVX-512" line on most CPUs
    labels = ops.reshape(y_true, (-1, 1))
    same = ops.equal(labels, ops.reshape(y_true, (1, -1)))
    batch_size = ops.shape(labels)[0]
    not_self = ops.logical_not(ops.cast(ops.eye(batch_size), "bool"))
    positives = ops.logical_and(same, not_self)
    negatives = ops.logical_not(same)
    return positives, negatives


def triplet_distances(y_pred, distance_metric):
    metric = metric_named(distance_metric)
    y_pred = ops.cast(y_pred, "float32")
    anchor, positive, negative = y_pred[:, 0], y_pred[:, 1], y_pred[:, 2]
    return metric.paired(anchor, positive), metric.paired(anchor, negative)
