"""tf.data datasets built from index arrays that the samplers drew in numpy.

Each element is decoded, resized and augmented in a per-image `Dataset.map` with parallel
calls, then batched and prefetched. The augmentation seed of every image is derived from the
run's seed and the image's position in the stream, so the same seed gives the same batches.
Model-specific preprocessing (mean subtraction, scaling) lives inside the model instead, so a
saved embedding model takes plain RGB images in [0, 255] and cannot be fed the wrong scaling.
"""

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from siamese_reid.data import samplers
from siamese_reid.data.images import augment, decode_image
from siamese_reid.data.splits import contiguous_labels


def _image_stream(paths, labels, flat_indices, image_size, augment_settings, seed, start_position=0):
    """A dataset of (image, label) for `flat_indices` in order, augmented if settings given.

    `start_position` is the stream position of the first index: a run resumed at epoch E
    passes E's position so every image gets the augmentation it would have had unresumed.
    """
    paths = tf.constant(np.asarray(paths, dtype=str))
    labels = tf.constant(np.asarray(labels, dtype=np.int32))
    height, width = image_size
    positions = tf.data.Dataset.range(start_position, start_position + len(flat_indices))
    indices = tf.data.Dataset.from_tensor_slices(np.asarray(flat_indices, dtype=np.int64))

    def load(position, index):
        image = decode_image(tf.gather(paths, index), height, width)
        if augment_settings is not None:
            image = augment(image, tf.stack([tf.constant(seed, tf.int64), position]), augment_settings)
        return image, tf.gather(labels, index)

    return tf.data.Dataset.zip(positions, indices).map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def pk_dataset(paths, labels, batches, image_size, augment_settings, seed, start_position=0):
    """Yields (images [P*K, H, W, 3] float32 in [0, 255], labels [P*K]) for each row of `batches`."""
    batch_size = batches.shape[1]
    stream = _image_stream(paths, labels, batches.reshape(-1), image_size, augment_settings, seed, start_position)
    return stream.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def triplet_dataset(paths, labels, triplets, batch_size, image_size, augment_settings, seed, start_position=0):
    """Yields ((anchor, positive, negative), labels of the anchors) batches of `batch_size` triplets.

    Within a batch the images are streamed as all anchors, then all positives, then all
    negatives, so one contiguous batch of 3 * batch_size images splits into the three inputs.
    """
    num_batches = len(triplets) // batch_size
    blocks = triplets[: num_batches * batch_size].reshape(num_batches, batch_size, 3)
    flat = blocks.transpose(0, 2, 1).reshape(-1)
    stream = _image_stream(paths, labels, flat, image_size, augment_settings, seed, start_position)

    def split(images, labels):
        anchor, positive, negative = tf.split(images, 3, axis=0)
        return (anchor, positive, negative), labels[:batch_size]

    return stream.batch(3 * batch_size, drop_remainder=True).map(split).prefetch(tf.data.AUTOTUNE)


def inference_dataset(paths, image_size, batch_size):
    """Yields batches of un-augmented images [batch, H, W, 3] in file order."""
    stream = _image_stream(paths, np.zeros(len(paths)), np.arange(len(paths)), image_size, None, 0)
    return stream.map(lambda image, _: image).batch(batch_size).prefetch(tf.data.AUTOTUNE)


class TrainingImages(NamedTuple):
    """The training split as arrays: what the samplers draw from and the stream decodes."""

    paths: list
    pids: np.ndarray
    camids: np.ndarray
    labels: np.ndarray  # int32 0..N-1


def _pk_stream(images, training, augment_settings, image_size, epochs, steps):
    # P x K sampling draws by identity only: camids are not used.
    batches = np.concatenate(
        [
            samplers.pk_batches(
                images.pids, training.identities_per_batch, training.images_per_identity, steps, training.seed, epoch
            )
            for epoch in epochs
        ]
    )
    start = epochs.start * steps * batches.shape[1]  # images streamed before the first epoch
    return pk_dataset(images.paths, images.labels, batches, image_size, augment_settings, training.seed, start)


def _triplet_stream(images, training, augment_settings, image_size, epochs, steps):
    count = steps * training.triplet_batch_size
    triplets = np.concatenate(
        [samplers.sample_triplets(images.pids, images.camids, count, training.seed, epoch) for epoch in epochs]
    )
    start = epochs.start * count * 3
    return triplet_dataset(
        images.paths,
        images.labels,
        triplets,
        training.triplet_batch_size,
        image_size,
        augment_settings,
        training.seed,
        start,
    )


# training.sampler -> the stream of its batches
SAMPLERS = {"pk": _pk_stream, "triplet": _triplet_stream}


def images_per_batch(training):
    """Images in one training batch: P x K, or 3 per triplet."""
    if training.sampler == "pk":
        return training.identities_per_batch * training.images_per_identity
    return 3 * training.triplet_batch_size


def steps_per_epoch(training, num_train_images):
    """`training.steps_per_epoch`, or (when 0) as many batches as one pass over the images."""
    if training.steps_per_epoch:
        return training.steps_per_epoch
    return max(1, num_train_images // images_per_batch(training))


def training_dataset(train, training, augment_settings, image_size, start_epoch, steps):
    """The tf.data stream of every training batch from `start_epoch` to the last epoch.

    Batches of each epoch are drawn from (seed, epoch) and each image's augmentation from its
    position in the stream, so a run resumed at `start_epoch` sees exactly the batches and
    augmentations an uninterrupted run would. Labels are the identities relabelled 0..N-1.

    Args:
      train: list of `Sample` (real identities only: see `splits.person_samples`).
      training: the `TrainingConfig` section (sampler, batch shape, seed, epochs).
      augment_settings: the `AugmentConfig` section.
      image_size: (height, width).
      start_epoch: first epoch streamed (0-based).
      steps: batches per epoch.
    """
    pids = np.array([s.pid for s in train], dtype=np.int64)
    images = TrainingImages(
        paths=[s.path for s in train],
        pids=pids,
        camids=np.array([s.camid for s in train]),
        labels=contiguous_labels(pids)[0],
    )
    epochs = range(start_epoch, training.epochs)
    return SAMPLERS[training.sampler](images, training, augment_settings, image_size, epochs, steps)
