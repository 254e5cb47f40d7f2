import numpy as np
import pytest
import tensorflow as tf

from siamese_reid.config import AugmentConfig
from siamese_reid.data import images, samplers
from siamese_reid.data.pipeline import inference_dataset, pk_dataset, triplet_dataset
from siamese_reid.data.readers import read_market_folder
from siamese_reid.errors import ReIDError

PIDS = np.array([1, 1, 1, 2, 2, 3, 3, 3, 3, 4, 5])
CAMIDS = np.array([1, 2, 1, 1, 1, 1, 2, 3, 3, 1, 2])


def test_triplets_follow_the_rules_and_are_reproducible():
    triplets = samplers.sample_triplets(PIDS, CAMIDS, 200, seed=7, epoch=3)
    anchor, positive, negative = triplets.T
    assert np.all(anchor != positive)
    assert np.all(PIDS[anchor] == PIDS[positive])
    assert np.all(PIDS[anchor] != PIDS[negative])
    # another camera whenever the identity has one: identity 2 only has camera 1
    has_other_camera = np.array([np.any((PIDS == PIDS[a]) & (CAMIDS != CAMIDS[a])) for a in anchor])
    assert np.all(CAMIDS[anchor][has_other_camera] != CAMIDS[positive][has_other_camera])
    assert not np.isin(anchor, np.flatnonzero(PIDS == 4)).any()  # single-image identity never anchors
    np.testing.assert_array_equal(triplets, samplers.sample_triplets(PIDS, CAMIDS, 200, seed=7, epoch=3))
    assert not np.array_equal(triplets, samplers.sample_triplets(PIDS, CAMIDS, 200, seed=7, epoch=4))


def test_pk_batches_have_p_identities_of_k_images():
    batches = samplers.pk_batches(PIDS, identities_per_batch=2, images_per_identity=3, num_batches=50, seed=1)
    for batch in batches:
        groups = PIDS[batch].reshape(2, 3)
        assert np.all(groups == groups[:, :1])  # K images of one identity, contiguous
        assert groups[0, 0] != groups[1, 0]
        assert not np.isin(groups, [4, 5]).any()  # single-image identities cannot form positives
    # identity 2 has 2 < K images: sampled with replacement; identity 3 has 4 >= K: distinct
    for batch in batches:
        threes = batch[PIDS[batch] == 3]
        assert len(threes) in (0, 3) and len(set(threes)) == len(threes)
    np.testing.assert_array_equal(batches, samplers.pk_batches(PIDS, 2, 3, 50, seed=1))
    assert samplers.identities_below(PIDS, 3) == [2, 4, 5]
    assert samplers.singleton_identities(PIDS) == [4, 5]


def test_samplers_refuse_impossible_training_sets():
    with pytest.raises(ReIDError, match="fewer than 2 identities"):
        samplers.sample_triplets(np.array([1, 1, 1]), np.array([1, 2, 3]), 4, seed=0)
    with pytest.raises(ReIDError, match="no training identity has two images"):
        samplers.sample_triplets(np.array([1, 2, 3]), np.array([1, 2, 3]), 4, seed=0)
    with pytest.raises(ReIDError, match="identities_per_batch"):
        samplers.pk_batches(PIDS, 5, 2, 3, seed=0)


SETTINGS = AugmentConfig(
    flip=True,
    pad_crop=True,
    pad=4,
    random_erasing=True,
    erasing_probability=1.0,
    color_jitter=True,
    jitter_strength=0.3,
)


@pytest.mark.parametrize(
    "op",
    [
        lambda image, seed: images.random_flip(image, seed),
        lambda image, seed: images.pad_and_crop(image, seed, 4),
        lambda image, seed: images.color_jitter(image, seed, 0.3),
        lambda image, seed: images.random_erasing(image, seed, 1.0),
        lambda image, seed: images.augment(image, seed, SETTINGS),
    ],
)
def test_augmentations_equal_eagerly_and_inside_dataset_map(op):
    image = tf.constant(np.random.default_rng(0).uniform(0, 255, (24, 12, 3)), tf.float32)
    seeds = [tf.constant([5, i], tf.int64) for i in range(6)]
    eager = [op(image, seed).numpy() for seed in seeds]
    mapped = tf.data.Dataset.from_tensor_slices(tf.stack(seeds)).map(lambda seed: op(image, seed))
    for expected, got in zip(eager, mapped, strict=True):
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    assert any(not np.allclose(eager[0], other) for other in eager[1:])  # the op does something
    assert all(e.shape == (24, 12, 3) for e in eager)


def test_random_erasing_changes_a_rectangle_only():
    image = tf.zeros((32, 16, 3))
    erased = images.random_erasing(image, tf.constant([1, 2], tf.int64), 1.0).numpy()
    changed = np.any(erased != 0, axis=2)
    rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
    assert changed[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].mean() > 0.9


def erased_rectangle(original, erased):
    """(top, left, height, width) of the changed pixels, checked to form one full rectangle."""
    changed = np.any(erased != original, axis=2)
    if not changed.any():
        return None
    rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
    assert changed[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
    assert changed.sum() == len(rows) * len(cols)
    return rows.min(), cols.min(), len(rows), len(cols)


def test_random_erasing_with_the_mean_fills_the_imagenet_mean_pixel_eagerly_and_in_dataset_map():
    # a non-integer noise image: no original pixel equals the mean by chance
    image = tf.constant(np.random.default_rng(1).uniform(0.5, 254.5, (64, 32, 3)), tf.float32)
    seeds = tf.stack([tf.constant([9, i], tf.int64) for i in range(12)])
    eager = [images.random_erasing(image, seed, 1.0, fill="mean").numpy() for seed in seeds]
    mapped = list(tf.data.Dataset.from_tensor_slices(seeds).map(lambda s: images.random_erasing(image, s, 1.0, "mean")))
    mean = np.array([0.485, 0.456, 0.406], np.float32) * 255  # the reference code's PIXEL_MEAN
    for erased, from_map in zip(eager, mapped, strict=True):
        np.testing.assert_array_equal(from_map.numpy(), erased)
        top, left, height, width = erased_rectangle(image.numpy(), erased)
        region = erased[top : top + height, left : left + width]
        np.testing.assert_allclose(region, np.broadcast_to(mean, region.shape), rtol=1e-6)
    assert len({erased_rectangle(image.numpy(), e) for e in eager}) > 6  # rectangles vary with the seed


def reference_erasing_rectangles(height, width, draws, seed, probability=0.5):
    """The strong baseline's RandomErasing, as its definition reads: with `probability`, up to
    100 attempts of area ~ U(0.02, 0.4) x image area, aspect ~ U(0.3, 1/0.3), h = round(sqrt(
    area x aspect)), w = round(sqrt(area / aspect)), kept when h < height and w < width."""
    rng = np.random.default_rng(seed)
    rectangles = []
    for _ in range(draws):
        if rng.uniform() >= probability:
            rectangles.append(None)
            continue
        for _attempt in range(100):
            area = rng.uniform(0.02, 0.4) * height * width
            aspect = rng.uniform(0.3, 1 / 0.3)
            h, w = round(np.sqrt(area * aspect)), round(np.sqrt(area / aspect))
            if h < height and w < width:
                rectangles.append((h, w))
                break
        else:
            rectangles.append(None)
    return rectangles


def kolmogorov_smirnov_statistic(sample_a, sample_b):
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs,
    evaluated at every observed value (Smirnov 1939)."""
    sample_a, sample_b = np.sort(sample_a), np.sort(sample_b)
    values = np.concatenate([sample_a, sample_b])
    cdf_a = np.searchsorted(sample_a, values, side="right") / len(sample_a)
    cdf_b = np.searchsorted(sample_b, values, side="right") / len(sample_b)
    return np.max(np.abs(cdf_a - cdf_b))


def ks_critical_value(size_a, size_b, alpha):
    """Large-sample critical value of the two-sample KS statistic: c(alpha) * sqrt((n + m) / (n m))
    with c(alpha) = sqrt(-ln(alpha / 2) / 2) (1.628 at alpha = 0.01)."""
    return np.sqrt(-np.log(alpha / 2) / 2) * np.sqrt((size_a + size_b) / (size_a * size_b))


def test_kolmogorov_smirnov_reference_separates_distributions():
    rng = np.random.default_rng(0)
    same = kolmogorov_smirnov_statistic(rng.uniform(size=300), rng.uniform(size=3000))
    shifted = kolmogorov_smirnov_statistic(rng.uniform(size=300), rng.uniform(0.2, 1.2, size=3000))
    assert same < ks_critical_value(300, 3000, 0.01) < shifted
    assert kolmogorov_smirnov_statistic([1.0, 2.0], [3.0, 4.0]) == 1.0


def test_random_erasing_rectangles_follow_the_reference_distribution():
    height, width = 24, 12  # tall and small: the "fits strictly inside" rule rejects draws
    image = tf.constant(np.random.default_rng(2).uniform(0.5, 254.5, (height, width, 3)), tf.float32)
    seeds = tf.stack([tf.constant([4, i], tf.int64) for i in range(600)])
    erased = tf.data.Dataset.from_tensor_slices(seeds).map(lambda s: images.random_erasing(image, s, 0.5, "mean"))
    ours = [erased_rectangle(image.numpy(), e.numpy()) for e in erased]
    reference = reference_erasing_rectangles(height, width, 20_000, seed=0)
    assert np.mean([r is not None for r in ours]) == pytest.approx(0.5, abs=0.07)  # 600 draws: sd 0.02
    ours = [r for r in ours if r is not None]
    reference = [r for r in reference if r is not None]
    assert all(h < height and w < width for _, _, h, w in ours)
    assert all(top + h <= height and left + w <= width for top, left, h, w in ours)
    for statistic in (lambda h, w: h * w, lambda h, w: h / w):
        ours_values = [statistic(h, w) for _, _, h, w in ours]
        reference_values = [statistic(h, w) for h, w in reference]
        assert kolmogorov_smirnov_statistic(ours_values, reference_values) < ks_critical_value(
            len(ours_values), len(reference_values), alpha=0.01
        )
    # corners are uniform over where the rectangle fits: both extremes occur
    assert min(top for top, _, _, _ in ours) == 0 and any(top + h == height for top, _, h, _ in ours)


@pytest.mark.parametrize(
    ("name", "mode", "image_format"),
    [("a.jpg", "RGB", "JPEG"), ("b.png", "RGBA", "PNG"), ("c.bmp", "RGB", "BMP"), ("d.png", "L", "PNG")],
)
def test_every_format_reaches_the_model_as_rgb(tmp_path, name, mode, image_format, write_image):
    path = tmp_path / name
    array = write_image(path, size=(20, 10), mode=mode, image_format=image_format)
    decoded = images.decode_image(str(path), 20, 10).numpy()
    assert decoded.shape == (20, 10, 3)
    if image_format in ("PNG", "BMP"):  # lossless: exact pixels
        expected = np.repeat(array, 3, axis=2) if mode == "L" else array[..., :3]
        np.testing.assert_allclose(decoded, expected, atol=1e-3)


def test_pk_and_triplet_datasets_deliver_the_sampled_images(tiny_demo):
    samples, _ = read_market_folder(tiny_demo / "bounding_box_train")
    paths, pids = [s.path for s in samples], np.array([s.pid for s in samples])
    camids = np.array([s.camid for s in samples])
    batches = samplers.pk_batches(pids, 2, 2, 3, seed=0)
    dataset = pk_dataset(paths, pids, batches, (32, 16), None, seed=0)
    for (batch_images, batch_labels), indices in zip(dataset, batches, strict=True):
        assert batch_images.shape == (4, 32, 16, 3)
        np.testing.assert_array_equal(batch_labels.numpy(), pids[indices])
        np.testing.assert_allclose(batch_images[1].numpy(), images.decode_image(paths[indices[1]], 32, 16).numpy())
    triplets = samplers.sample_triplets(pids, camids, 6, seed=0)
    (anchor, positive, negative), labels = next(iter(triplet_dataset(paths, pids, triplets, 3, (32, 16), SETTINGS, 0)))
    assert anchor.shape == positive.shape == negative.shape == (3, 32, 16, 3)
    np.testing.assert_array_equal(labels.numpy(), pids[triplets[:3, 0]])
    again = next(iter(triplet_dataset(paths, pids, triplets, 3, (32, 16), SETTINGS, 0)))
    np.testing.assert_array_equal(again[0][2].numpy(), negative.numpy())  # augmentation is seeded


def test_inference_dataset_keeps_order(tiny_demo):
    samples = read_market_folder(tiny_demo / "query")[0][:5]
    batches = list(inference_dataset([s.path for s in samples], (32, 16), 2))
    assert [b.shape[0] for b in batches] == [2, 2, 1]
    np.testing.assert_allclose(batches[2][0].numpy(), images.decode_image(samples[4].path, 32, 16).numpy())


@pytest.mark.parametrize("sampler", ["pk", "triplet"])
def test_resumed_stream_equals_the_tail_of_the_uninterrupted_one(tiny_demo, sampler):
    import dataclasses

    from siamese_reid.config import TrainingConfig
    from siamese_reid.data.pipeline import training_dataset

    samples, _ = read_market_folder(tiny_demo / "bounding_box_train")
    samples = [s for s in samples if s.pid > 0]
    training = dataclasses.replace(
        TrainingConfig(), sampler=sampler, identities_per_batch=2, images_per_identity=2, triplet_batch_size=2, epochs=3
    )
    full = list(training_dataset(samples, training, SETTINGS, (32, 32), start_epoch=0, steps=2))
    resumed = list(training_dataset(samples, training, SETTINGS, (32, 32), start_epoch=2, steps=2))
    assert len(full) == 6 and len(resumed) == 2
    for expected, got in zip(full[4:], resumed, strict=True):
        for a, b in zip(tf.nest.flatten(expected), tf.nest.flatten(got), strict=True):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
