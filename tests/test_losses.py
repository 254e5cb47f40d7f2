"""Triplet losses against slow NumPy loops over every triplet (the tensorflow-addons semantics)."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from siamese_reid.losses import (
    TripletBatchAllLoss,
    TripletHardLoss,
    TripletMarginLoss,
    TripletSemiHardLoss,
    make_triplet_metrics,
    triplet_batch_all_loss,
    triplet_hard_loss,
    triplet_margin_loss,
    triplet_semihard_loss,
)

METRICS = ["L2", "squared-L2", "angular"]


def distance(a, b, metric):
    if metric == "angular":
        return max(1.0 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), 0.0)
    squared = float(np.sum((a - b) ** 2))
    return squared if metric == "squared-L2" else np.sqrt(squared)


def softplus(x):
    return np.log1p(np.exp(-abs(x))) + max(x, 0.0)


def reference_hard(labels, embeddings, margin, soft, metric):
    losses = []
    for a in range(len(labels)):
        pos = [
            distance(embeddings[a], embeddings[p], metric)
            for p in range(len(labels))
            if p != a and labels[p] == labels[a]
        ]
        neg = [distance(embeddings[a], embeddings[n], metric) for n in range(len(labels)) if labels[n] != labels[a]]
        if pos and neg:
            diff = max(pos) - min(neg)
            losses.append(softplus(diff) if soft else max(diff + margin, 0.0))
    return float(np.mean(losses)) if losses else 0.0


def reference_semihard(labels, embeddings, margin, metric):
    losses = []
    for a, p in itertools.permutations(range(len(labels)), 2):
        if labels[a] != labels[p]:
            continue
        neg = [distance(embeddings[a], embeddings[n], metric) for n in range(len(labels)) if labels[n] != labels[a]]
        if not neg:
            continue
        d_ap = distance(embeddings[a], embeddings[p], metric)
        farther = [d for d in neg if d > d_ap]
        chosen = min(farther) if farther else max(neg)
        losses.append(max(d_ap - chosen + margin, 0.0))
    return float(np.mean(losses)) if losses else 0.0


def reference_batch_all(labels, embeddings, margin, soft, metric):
    losses = []
    n = len(labels)
    for a, p, q in itertools.product(range(n), repeat=3):
        if a != p and labels[a] == labels[p] and labels[q] != labels[a]:
            diff = distance(embeddings[a], embeddings[p], metric) - distance(embeddings[a], embeddings[q], metric)
            value = softplus(diff) if soft else max(diff + margin, 0.0)
            if value > 1e-16:
                losses.append(value)
    return float(np.mean(losses)) if losses else 0.0


def random_batch(seed, batch=12, dim=6, num_labels=4, normalise=True):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_labels, batch)
    embeddings = rng.normal(size=(batch, dim)).astype(np.float32)
    if normalise:
        embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    return labels, embeddings


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("margin", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hard_and_semihard_and_batch_all_match_reference(metric, margin, seed):
    labels, embeddings = random_batch(seed, normalise=seed != 2)
    for soft in (False, True):
        got = float(triplet_hard_loss(labels, embeddings, margin=margin, soft=soft, distance_metric=metric))
        assert got == pytest.approx(reference_hard(labels, embeddings, margin, soft, metric), abs=1e-5)
        got = float(triplet_batch_all_loss(labels, embeddings, margin=margin, soft=soft, distance_metric=metric))
        assert got == pytest.approx(reference_batch_all(labels, embeddings, margin, soft, metric), abs=1e-5)
    got = float(triplet_semihard_loss(labels, embeddings, margin=margin, distance_metric=metric))
    assert got == pytest.approx(reference_semihard(labels, embeddings, margin, metric), abs=1e-5)


@pytest.mark.parametrize("metric", METRICS)
def test_explicit_triplet_loss_matches_reference(metric):
    rng = np.random.default_rng(4)
    triplets = rng.normal(size=(9, 3, 5)).astype(np.float32)
    for soft in (False, True):
        expected = np.mean(
            [
                (softplus if soft else lambda x: max(x + 0.5, 0.0))(
                    distance(t[0], t[1], metric) - distance(t[0], t[2], metric)
                )
                for t in triplets
            ]
        )
        got = float(triplet_margin_loss(None, triplets, margin=0.5, soft=soft, distance_metric=metric))
        assert got == pytest.approx(expected, abs=1e-5)


def test_labels_of_shape_batch_by_one_are_accepted():
    labels, embeddings = random_batch(5)
    for loss in (triplet_hard_loss, triplet_semihard_loss, triplet_batch_all_loss):
        assert float(loss(labels[:, None], embeddings)) == pytest.approx(float(loss(labels, embeddings)))


@pytest.mark.parametrize("loss", [triplet_hard_loss, triplet_semihard_loss, triplet_batch_all_loss])
def test_no_positive_pair_or_single_identity_gives_zero_not_nan(loss):
    _, embeddings = random_batch(6, batch=5)
    all_different = np.arange(5)
    all_same = np.zeros(5, dtype=int)
    assert float(loss(all_different, embeddings)) == 0.0
    assert float(loss(all_same, embeddings)) == 0.0


@pytest.mark.parametrize("loss", [triplet_hard_loss, triplet_semihard_loss, triplet_batch_all_loss])
@pytest.mark.parametrize("metric", METRICS)
def test_gradient_is_finite_at_zero_distance(loss, metric):
    embeddings = tf.Variable(np.tile(np.array([[0.6, 0.8, 0.0]], np.float32), (6, 1)))  # all identical
    labels = np.array([0, 0, 1, 1, 2, 2])
    with tf.GradientTape() as tape:
        value = loss(labels, embeddings, margin=0.3, distance_metric=metric)
    gradient = tape.gradient(value, embeddings)
    assert np.isfinite(float(value))
    assert np.all(np.isfinite(gradient.numpy()))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_soft_margin_does_not_overflow_in_low_precision(dtype):
    # Far-apart positives and identical negatives: d_ap - d_an is large; exp() of it overflows
    # float16 (max 65504) in tensorflow-addons' log1p(exp(x)).
    embeddings = np.array([[0.0, 0.0], [300.0, 0.0], [0.0, 0.0], [0.0, 0.0]], np.float32)
    labels = np.array([0, 0, 1, 1])
    value = triplet_hard_loss(labels, tf.cast(embeddings, dtype), soft=True, distance_metric="squared-L2")
    assert np.isfinite(float(value))
    expected = reference_hard(labels, embeddings.astype(np.float64), 1.0, True, "squared-L2")
    assert float(value) == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize(
    ("loss_class", "kwargs"),
    [
        (TripletHardLoss, {"margin": 0.2, "soft": True, "distance_metric": "angular"}),
        (TripletSemiHardLoss, {"margin": 0.7, "distance_metric": "squared-L2"}),
        (TripletBatchAllLoss, {"margin": 0.4}),
        (TripletMarginLoss, {"margin": 0.1, "soft": False}),
    ],
)
def test_serialisation_round_trip(loss_class, kwargs):
    loss = loss_class(**kwargs)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is loss_class
    assert restored.get_config() == loss.get_config()
    labels, embeddings = random_batch(7)
    y_pred = embeddings.reshape(4, 3, 6) if loss_class is TripletMarginLoss else embeddings
    assert float(restored(labels, y_pred)) == pytest.approx(float(loss(labels, y_pred)))


def test_tensorflow_addons_defaults_and_import_path():
    from siamese_reid.losses import TripletHardLoss as Hard
    from siamese_reid.losses import TripletSemiHardLoss as SemiHard

    hard, semihard = Hard(), SemiHard()
    assert (hard.margin, hard.soft, hard.distance_metric, hard.name) == (1.0, False, "L2", "TripletHardLoss")
    assert (semihard.margin, semihard.distance_metric) == (1.0, "L2")
    assert "soft" not in semihard.get_config()


@pytest.mark.parametrize("loss_class", [TripletHardLoss, TripletSemiHardLoss, TripletBatchAllLoss, TripletMarginLoss])
def test_config_keeps_every_constructor_argument_and_keras_own(loss_class):
    # Keras recipe: one attribute per argument, get_config chained to super(); `dtype` and
    # `reduction` are kept as given.
    loss = loss_class(margin=0.25, distance_metric="angular", name="mine", reduction="sum", dtype="float64")
    config = loss.get_config()
    assert config["name"] == "mine" and config["reduction"] == "sum" and config["margin"] == 0.25
    assert config["distance_metric"] == "angular"
    assert "float64" in str(config["dtype"])
    restored = loss_class.from_config(config)
    assert restored.get_config() == config
    assert restored.margin == loss.margin and restored.reduction == "sum"


def test_identities_above_two_to_the_24_stay_apart(write_image):
    # Keras casts y_true to float32, where 2**24 and 2**24 + 1 are the same number: training
    # labels are relabelled 0..N-1 before they reach the loss.
    import tempfile
    from pathlib import Path

    from siamese_reid.config import AugmentConfig, TrainingConfig
    from siamese_reid.data.pipeline import training_dataset
    from siamese_reid.data.readers import Sample

    with tempfile.TemporaryDirectory() as folder:
        big = 2**24
        samples = []
        for index, pid in enumerate([big, big, big + 1, big + 1]):
            path = Path(folder) / f"{index}.png"
            write_image(path, size=(32, 32), image_format="PNG", seed=index)
            samples.append(Sample(str(path), pid, 1 + index % 2))
        training = TrainingConfig(identities_per_batch=2, images_per_identity=2, epochs=1)
        augment = AugmentConfig(flip=False, pad_crop=False, color_jitter=False)
        images, labels = next(iter(training_dataset(samples, training, augment, (32, 32), 0, 1)))
    labels = labels.numpy()
    assert labels.dtype == np.int32 and sorted(set(labels.tolist())) == [0, 1]
    # anchors of identity 2**24 see 2**24 + 1 as a negative, so the loss is the true one
    embeddings = np.array([[1.0, 0.0], [0.9, 0.1], [0.95, 0.05], [0.0, 1.0]], np.float32)
    true_pids = np.where(labels == 0, big, big + 1)
    expected = reference_hard(true_pids, embeddings.astype(np.float64), 0.3, False, "L2")
    got = float(TripletHardLoss(margin=0.3)(labels, embeddings))
    assert got == pytest.approx(expected, rel=1e-5)
    merged = float(TripletHardLoss(margin=0.3)(true_pids, embeddings))  # what float32 labels did
    assert merged != pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("loss_class", [TripletHardLoss, TripletSemiHardLoss, TripletBatchAllLoss])
def test_compiles_by_class_and_trains(loss_class):
    keras.utils.set_random_seed(0)
    labels, _ = random_batch(8, batch=32, num_labels=4)
    rng = np.random.default_rng(0)
    inputs = (rng.normal(size=(4, 8))[labels] + 0.5 * rng.normal(size=(32, 8))).astype(np.float32)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), keras.layers.UnitNormalization()])
    model.compile(
        optimizer=keras.optimizers.Adam(0.05), loss=loss_class(margin=0.5), metrics=make_triplet_metrics("L2", 0.5)
    )
    history = model.fit(inputs, labels, batch_size=32, epochs=15, verbose=0, shuffle=False)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert {"active_triplet_fraction", "mean_positive_distance", "mean_negative_distance"} <= set(history.history)


def test_collapse_statistics_on_collapsed_embeddings():
    labels = np.array([0, 0, 1, 1])
    collapsed = np.tile(np.array([[1.0, 0.0]], np.float32), (4, 1))
    positive, negative, active = make_triplet_metrics("L2", 0.3)
    assert float(positive(labels, collapsed)) == 0.0
    assert float(negative(labels, collapsed)) == 0.0
    assert float(active(labels, collapsed)) == 1.0
