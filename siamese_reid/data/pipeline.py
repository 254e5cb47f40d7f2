"""tf.data datasets built from index arrays that the samplers drew in numpy.

Each element is decoded, resized and augmented in a per-image `Dataset.map` with parallel
calls, then batched and prefetched. The augmentation seed of every image is derived from the
run's seed and the image's position in the stream, so the same seed gives the same batches.
Model-specific preprocessing (mean subtraction, scaling) lives inside the model instead, so a
saved embedding model takes plain RGB images in [0, 255] and cannot be fed the wrong scaling.
"""

import numpy as np
import tensorflow as tf

from siamese_reid.data.images import augment, decode_image


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


def pk_dataset(paths, pids, batches, image_size, augment_settings, seed, start_position=0):
    """Yields (images [P*K, H, W, 3] float32 in [0, 255], pids [P*K]) for each row of `batches`."""
    batch_size = batches.shape[1]
    stream = _image_stream(paths, pids, batches.reshape(-1), image_size, augment_settings, seed, start_position)
    return stream.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def triplet_dataset(paths, pids, triplets, batch_size, image_size, augment_settings, seed, start_position=0):
    """Yields ((anchor, positive, negative), pids of the anchors) batches of `batch_size` triplets.

    Within a batch the images are streamed as all anchors, then all positives, then all
    negatives, so one contiguous batch of 3 * batch_size images splits into the three inputs.
    """
    num_batches = len(triplets) // batch_size
    blocks = triplets[: num_batches * batch_size].reshape(num_batches, batch_size, 3)
    flat = blocks.transpose(0, 2, 1).reshape(-1)
    stream = _image_stream(paths, pids, flat, image_size, augment_settings, seed, start_position)

    def split(images, labels):
        anchor, positive, negative = tf.split(images, 3, axis=0)
        return (anchor, positive, negative), labels[:batch_size]

    return stream.batch(3 * batch_size, drop_remainder=True).map(split).prefetch(tf.data.AUTOTUNE)


def inference_dataset(paths, image_size, batch_size):
    """Yields batches of un-augmented images [batch, H, W, 3] in file order."""
    stream = _image_stream(paths, np.zeros(len(paths)), np.arange(len(paths)), image_size, None, 0)
    return stream.map(lambda image, _: image).batch(batch_size).prefetch(tf.data.AUTOTUNE)
