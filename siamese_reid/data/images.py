"""Per-image TensorFlow ops: decode, resize, augment. One image tensor in, one out.

Every op is pure and works both eagerly and inside `Dataset.map` (tests check both). Random
ops take an explicit `seed` tensor of shape [2] and use stateless random functions, so a
pipeline is reproducible from its seed whatever the thread scheduling.
"""

import tensorflow as tf


def decode_image(path, height, width):
    """Reads a JPEG/PNG/BMP/GIF file as float32 RGB in [0, 255], shape [height, width, 3].

    Greyscale is replicated to three channels and alpha is dropped, so every image reaches
    the model as RGB.
    """
    data = tf.io.read_file(path)
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image = tf.image.resize(tf.cast(image, tf.float32), [height, width], antialias=True)
    image.set_shape([height, width, 3])
    return image


def random_flip(image, seed):
    return tf.image.stateless_random_flip_left_right(image, seed)


def pad_and_crop(image, seed, pad):
    """Zero-pads by `pad` pixels on each side and crops back to the original size."""
    height, width = image.shape[0], image.shape[1]
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    return tf.image.stateless_random_crop(padded, [height, width, 3], seed)


def color_jitter(image, seed, strength):
    """Random brightness, contrast and saturation, each up to `strength` relative change."""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    image = image * tf.random.stateless_uniform([], seeds[0], 1 - strength, 1 + strength)
    mean = tf.reduce_mean(image)
    image = (image - mean) * tf.random.stateless_uniform([], seeds[1], 1 - strength, 1 + strength) + mean
    grey = tf.reduce_mean(image, axis=-1, keepdims=True)
    image = (image - grey) * tf.random.stateless_uniform([], seeds[2], 1 - strength, 1 + strength) + grey
    return tf.clip_by_value(image, 0.0, 255.0)


def random_erasing(image, seed, probability, area=(0.02, 0.4), aspect=(0.3, 3.3)):
    """Replaces a random rectangle with noise (Zhong et al., AAAI 2020).

    Reference: Random Erasing Data Augmentation, https://arxiv.org/abs/1708.04896
    """
    height, width = image.shape[0], image.shape[1]
    seeds = tf.random.experimental.stateless_split(seed, 5)
    apply = tf.random.stateless_uniform([], seeds[0]) < probability
    erase_area = tf.random.stateless_uniform([], seeds[1], *area) * height * width
    log_aspect = tf.random.stateless_uniform([], seeds[2], tf.math.log(aspect[0]), tf.math.log(aspect[1]))
    ratio = tf.exp(log_aspect)
    erase_height = tf.clip_by_value(tf.cast(tf.sqrt(erase_area * ratio), tf.int32), 1, height)
    erase_width = tf.clip_by_value(tf.cast(tf.sqrt(erase_area / ratio), tf.int32), 1, width)
    offsets = tf.random.stateless_uniform([2], seeds[3])
    top = tf.cast(offsets[0] * tf.cast(height - erase_height + 1, tf.float32), tf.int32)
    left = tf.cast(offsets[1] * tf.cast(width - erase_width + 1, tf.float32), tf.int32)
    rows = tf.range(height)[:, None]
    cols = tf.range(width)[None, :]
    inside = (rows >= top) & (rows < top + erase_height) & (cols >= left) & (cols < left + erase_width)
    noise = tf.random.stateless_uniform(image.shape, seeds[4], 0.0, 255.0)
    mask = tf.logical_and(inside, apply)[..., None]
    return tf.where(mask, noise, image)


def augment(image, seed, settings):
    """Applies the augmentations switched on in `settings` (an `AugmentConfig`)."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    if settings.flip:
        image = random_flip(image, seeds[0])
    if settings.pad_crop and settings.pad > 0:
        image = pad_and_crop(image, seeds[1], settings.pad)
    if settings.color_jitter and settings.jitter_strength > 0:
        image = color_jitter(image, seeds[2], settings.jitter_strength)
    if settings.random_erasing:
        image = random_erasing(image, seeds[3], settings.erasing_probability)
    return image
