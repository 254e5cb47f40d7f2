"""The strong baseline's identity losses against NumPy written from their definitions."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from siamese_reid.losses.identity import center_distances, center_loss, center_update, label_smoothed_cross_entropy


def reference_label_smoothed_cross_entropy(labels, logits, epsilon):
    """Szegedy et al.'s smoothed targets, one sample at a time: q_k = 1 - eps + eps / N for the
    true class, eps / N for the others; loss = -sum_k q_k log softmax(z)_k."""
    losses = []
    for label, row in zip(labels, logits.astype(np.float64), strict=True):
        num_classes = len(row)
        log_probabilities = row - row.max() - np.log(np.sum(np.exp(row - row.max())))
        loss = 0.0
        for k in range(num_classes):
            target = (1 - epsilon + epsilon / num_classes) if k == label else epsilon / num_classes
            loss -= target * log_probabilities[k]
        losses.append(loss)
    return np.array(losses)


@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_label_smoothed_cross_entropy_matches_reference(epsilon, dtype):
    from siamese_reid.losses.identity import LabelSmoothedCrossEntropy

    rng = np.random.default_rng(11)
    labels = rng.integers(0, 7, 10)
    logits = (3.0 * rng.normal(size=(10, 7))).astype(np.float32)
    cast = tf.cast(logits, dtype)
    expected = reference_label_smoothed_cross_entropy(labels, tf.cast(cast, "float32").numpy(), epsilon)
    got = label_smoothed_cross_entropy(labels, cast, label_smoothing=epsilon)
    assert got.dtype == "float32" and got.shape == (10,)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)
    # labels as Keras hands them to a loss (float32, shape [batch, 1]) give the same values
    again = label_smoothed_cross_entropy(labels[:, None].astype(np.float32), cast, epsilon)
    np.testing.assert_allclose(again.numpy(), got.numpy(), rtol=1e-6)
    # the class averages over the batch
    assert float(LabelSmoothedCrossEntropy(epsilon)(labels, cast)) == pytest.approx(float(np.mean(expected)), rel=1e-5)


def test_label_smoothing_keeps_a_confident_classifier_from_reaching_zero_loss():
    # the point of smoothing: a one-hot-confident prediction is penalised
    labels = np.array([0, 1])
    confident = np.array([[50.0, 0.0, 0.0], [0.0, 50.0, 0.0]], np.float32)
    np.testing.assert_allclose(label_smoothed_cross_entropy(labels, confident, 0.0).numpy(), 0.0, atol=1e-6)
    assert np.all(label_smoothed_cross_entropy(labels, confident, 0.1).numpy() > 1.0)


def reference_center_loss(labels, features, centers):
    """Mean over samples of ||x_i - c_{y_i}||^2 (the reference code's center loss)."""
    return float(np.mean([np.sum((x - centers[y]) ** 2) for x, y in zip(features, labels, strict=True)]))


def center_batch(seed, batch=9, dim=4, num_identities=5):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_identities - 1, batch)  # the last identity is absent from the batch
    return labels, rng.normal(size=(batch, dim)), rng.normal(size=(num_identities, dim))


@pytest.mark.parametrize("seed", [0, 1])
def test_center_loss_matches_reference(seed):
    labels, features, centers = center_batch(seed)
    got = center_loss(labels, features.astype(np.float32), centers.astype(np.float32))
    assert float(got) == pytest.approx(reference_center_loss(labels, features, centers), rel=1e-5)
    per_sample = center_distances(labels, features.astype(np.float32), centers.astype(np.float32))
    expected = [np.sum((x - centers[y]) ** 2) for x, y in zip(features, labels, strict=True)]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(per_sample), expected, rtol=1e-5)


def test_center_update_is_one_sgd_step_on_the_center_loss():
    # The gradient with respect to the centres by central finite differences of the NumPy loss:
    # independent of the closed form in center_update.
    labels, features, centers = center_batch(2)
    gradient = np.zeros_like(centers)
    step = 1e-6
    for index in np.ndindex(centers.shape):
        plus, minus = centers.copy(), centers.copy()
        plus[index] += step
        minus[index] -= step
        gradient[index] = (
            reference_center_loss(labels, features, plus) - reference_center_loss(labels, features, minus)
        ) / (2 * step)
    expected = centers - 0.5 * gradient
    got = keras.ops.convert_to_numpy(center_update(labels, features, centers, learning_rate=0.5))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_array_equal(got[4], centers[4].astype(np.float32))  # absent identity: unchanged
    # every centre of the batch moves towards the mean of its features
    for identity in set(labels.tolist()):
        mean = features[labels == identity].mean(axis=0)
        assert np.linalg.norm(got[identity] - mean) < np.linalg.norm(centers[identity] - mean)


@pytest.mark.parametrize(
    ("loss_class", "kwargs"),
    [("LabelSmoothedCrossEntropy", {"label_smoothing": 0.2}), ("CenterLoss", {})],
)
def test_identity_losses_serialisation_round_trip(loss_class, kwargs):
    import siamese_reid.losses.identity as losses

    loss = getattr(losses, loss_class)(**kwargs)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss) and restored.get_config() == loss.get_config()
    labels = np.array([0, 1, 2, 1])
    y_pred = np.random.default_rng(3).normal(size=(4, 3)).astype(np.float32)
    if loss_class == "CenterLoss":
        y_pred = np.abs(y_pred[:, 0])  # per-sample squared distances: the loss is their mean
        assert float(loss(labels, y_pred)) == pytest.approx(float(np.mean(y_pred)), rel=1e-6)
    assert float(restored(labels, y_pred)) == pytest.approx(float(loss(labels, y_pred)))
