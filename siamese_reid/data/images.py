"""Per-image TensorFlow ops: decode, resize, augment. One image tensor in, one out.

Every op is pure and works both eagerly and inside `Dataset.map` (tests check both). Random
ops take an explicit `seed` tensor of shape [2] and use stateless random functions, so a
pipeline is reproducible from its seed whatever the thread scheduling.
"""

import tensorflow as tf

from siamese_reid.data.orientation import apply_orientation, exif_orientation, is_transposed


def decode_image(path, height, width):
    """Reads a JPEG/PNG/BMP/GIF file as float32 RGB in [0, 255], shape [height, width, 3].

    A JPEG is turned upright by its EXIF orientation, as a viewer shows it (phones store
    portrait photos sideways with a tag that says so); the image scan has already made other
    formats upright. Greyscale is replicated to three channels and alpha is dropped, so every
    image reaches the model as RGB.
    """
    data = tf.io.read_file(path)
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    orientation = exif_orientation(data)
    # resized before it is turned, which is cheaper (a phone photo has millions of pixels) and
    # the same: a picture stored transposed is resized to the transposed size
    stored_size = tf.where(is_transposed(orientation), [width, height], [height, width])
    image = tf.image.resize(tf.cast(image, tf.float32), stored_size, antialias=True)
    image = apply_orientation(image, orientation)
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


# ImageNet's mean pixel in [0, 255] RGB: (0.485, 0.456, 0.406) x 255, the PIXEL_MEAN of the
# strong baseline's reference code. That code erases after normalising the image, writing the
# values 0.485, 0.456, 0.406 into the normalised tensor, i.e. pixels of mean x (1 + std), about
# (152, 142, 127); its RandomErasing's own default, (0.4914, 0.4822, 0.4465), is CIFAR-10's mean
# and is not used for re-ID. We deviate on purpose and write the mean pixel itself (Zhong et
# al.'s "RE-M" fill), which the model's mean subtraction turns into about 0.
IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)


def _noise_fill(image, seed):
    return tf.random.stateless_uniform(image.shape, seed, 0.0, 255.0)


def _mean_fill(image, seed):
    return tf.broadcast_to(tf.constant(IMAGENET_MEAN_RGB, image.dtype), image.shape)


# augment.erasing_fill -> what fills the erased rectangle: uniform noise in [0, 255] (Zhong
# et al.'s RE-R) or the ImageNet mean pixel (their RE-M, which Luo et al.'s strong baseline uses).
ERASING_FILLS = {"random": _noise_fill, "mean": _mean_fill}


def random_erasing(image, seed, probability, fill="random", area=(0.02, 0.4), min_aspect=0.3, attempts=100):
    """With `probability`, replaces a random rectangle of the image with `fill`.

    The rectangle follows the definition (and the strong baseline's reference code): a target
    area uniform in `area` x the image area, an aspect ratio (height / width) uniform in
    [min_aspect, 1 / min_aspect], height and width rounded; a draw that does not fit strictly
    inside the image is redrawn, up to `attempts` times (then the image is left unchanged); the
    top-left corner is uniform over the positions where it fits. The attempts are drawn at once
    and the first that fits is used, so the op stays a pure function of `seed`.

    Args:
      image: float tensor of shape [height, width, 3] in [0, 255].
      seed: int tensor of shape [2] (stateless random ops).
      probability: chance that the image is erased at all.
      fill: a key of `ERASING_FILLS`.

    Reference: Zhong et al., Random Erasing Data Augmentation, https://arxiv.org/abs/1708.04896
    (Algorithm 1); Luo et al., Bag of Tricks, https://arxiv.org/abs/1903.07071
    """
    height, width = image.shape[0], image.shape[1]
    seeds = tf.random.experimental.stateless_split(seed, 6)
    target_area = tf.random.stateless_uniform([attempts], seeds[1], *area) * height * width
    aspect = tf.random.stateless_uniform([attempts], seeds[2], min_aspect, 1.0 / min_aspect)
    # tf.round rounds half to even, as Python's round in the reference does.
    erase_heights = tf.cast(tf.round(tf.sqrt(target_area * aspect)), tf.int32)
    erase_widths = tf.cast(tf.round(tf.sqrt(target_area / aspect)), tf.int32)
    fits = (erase_heights < height) & (erase_widths < width)
    first = tf.argmax(tf.cast(fits, tf.int32))
    erase_height, erase_width = erase_heights[first], erase_widths[first]
    apply = (tf.random.stateless_uniform([], seeds[0]) < probability) & tf.reduce_any(fits)
    corner = tf.random.stateless_uniform([2], seeds[3])
    # An integer uniform over 0..(size - erased size), both ends included (random.randint).
    top = tf.cast(corner[0] * tf.cast(height - erase_height + 1, tf.float32), tf.int32)
    left = tf.cast(corner[1] * tf.cast(width - erase_width + 1, tf.float32), tf.int32)
    rows = tf.range(height)[:, None]
    cols = tf.range(width)[None, :]
    inside = (rows >= top) & (rows < top + erase_height) & (cols >= left) & (cols < left + erase_width)
    mask = tf.logical_and(inside, apply)[..., None]
    return tf.where(mask, ERASING_FILLS[fill](image, seeds[4]), image)


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
        image = random_erasing(image, seeds[3], settings.erasing_probability, settings.erasing_fill)
    return image
