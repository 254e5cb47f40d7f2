"""EXIF orientation of a JPEG, read and applied with TensorFlow ops (per element, in-graph).

Phones store the pixels as the sensor read them and record in the EXIF Orientation tag
(0x0112) how a viewer must turn them; TensorFlow's decoders ignore the tag, so a portrait
photo would reach the model lying on its side. These ops find the tag where Pillow does (the
first APP1 segment that starts with "Exif\\0\\0", before the image data) and apply its
transform, so they run on the tf.data hot path of any caller, with no Python in the graph.

An EXIF block that cannot be read (truncated, offsets outside its segment, a tag of the wrong
type, a value outside 1..8) counts as orientation 1, the pixels as stored: a bad block never
stops a run. Other formats with an orientation (PNG's eXIf chunk, TIFF) are made upright
by the image scan, which converts them with Pillow (see scan.py).

Reference: CIPA DC-008-2019 (Exif 2.32), 4.6.4 A "Orientation" and 4.5.2 (TIFF structure);
ITU-T T.81 (JPEG), B.1.1 (markers and segment lengths).
"""

import tensorflow as tf

# The segments before the Exif one are at most 64 KiB each: four of them are read, which is
# the whole file for most re-ID crops, and a 5 MB photo is not copied for its header.
HEADER_BYTES = 4 * 65538
# Markers walked before giving up (a real JPEG has a handful before its image data).
MAX_SEGMENTS = 64
ORIENTATION_TAG = 0x0112
_START_OF_SCAN, _END_OF_IMAGE, _APP1 = 0xDA, 0xD9, 0xE1
_EXIF_SIGNATURE = (0x45, 0x78, 0x69, 0x66, 0x00, 0x00)  # "Exif\0\0"
_SHORT, _LONG = 3, 4  # TIFF field types


class _Bytes:
    """The file's first bytes as int64 values; reads past the end give 0 (validity is checked
    by the callers against segment bounds, so no read can fail)."""

    def __init__(self, data):
        header = tf.strings.substr(data, 0, HEADER_BYTES)
        values = tf.cast(tf.io.decode_raw(header, tf.uint8), tf.int64)
        self.size = tf.size(values, out_type=tf.int64)
        self.values = tf.concat([values, tf.zeros([8], tf.int64)], axis=0)

    def at(self, positions, width=1, little_endian=False):
        """Unsigned integers of `width` bytes at `positions` (any shape), big-endian unless said."""
        offsets = tf.range(width, dtype=tf.int64)
        indices = tf.clip_by_value(tf.expand_dims(positions, -1) + offsets, 0, self.size + 7)
        weights = tf.bitwise.left_shift(tf.constant(1, tf.int64), 8 * offsets)
        weights = tf.where(little_endian, weights, tf.reverse(weights, [0]))
        return tf.reduce_sum(tf.gather(self.values, indices) * weights, axis=-1)


def _exif_segment(data_bytes):
    """(start of the TIFF header, end of its segment) of the first Exif APP1 segment, or (-1, -1)."""

    def step(position, tiff_start, segment_end, done):
        is_marker = (position + 4 <= data_bytes.size) & (data_bytes.at(position) == 0xFF)
        marker = data_bytes.at(position + 1)
        length = data_bytes.at(position + 2, 2)
        signature = data_bytes.at(position + 4 + tf.range(6, dtype=tf.int64))
        is_exif = is_marker & (marker == _APP1) & (length >= 8) & tf.reduce_all(signature == _EXIF_SIGNATURE)
        fill_byte = marker == 0xFF  # markers may be preceded by any number of 0xFF
        ends = ~is_marker | (marker == _START_OF_SCAN) | (marker == _END_OF_IMAGE) | (~fill_byte & (length < 2))
        found_start = tf.where(is_exif, position + 10, tiff_start)
        found_end = tf.where(is_exif, tf.minimum(position + 2 + length, data_bytes.size), segment_end)
        next_position = tf.where(fill_byte, position + 1, position + 2 + length)
        return next_position, found_start, found_end, done | is_exif | ends

    is_jpeg = (data_bytes.at(tf.constant(0, tf.int64), 2) == 0xFFD8) & (data_bytes.size >= 4)
    start = tf.constant(2, tf.int64)
    minus_one = tf.constant(-1, tf.int64)
    _, tiff_start, segment_end, _ = tf.while_loop(
        lambda position, tiff_start, segment_end, done: ~done,
        step,
        (start, minus_one, minus_one, ~is_jpeg),
        maximum_iterations=MAX_SEGMENTS,
    )
    return tiff_start, segment_end


def _orientation_in_tiff(data_bytes, tiff_start, segment_end):
    """The Orientation value of IFD0 of the TIFF structure at `tiff_start`, or 1."""
    byte_order = data_bytes.at(tiff_start, 2)
    little_endian = byte_order == 0x4949  # "II"; "MM" is big-endian
    readable_order = little_endian | (byte_order == 0x4D4D)

    def number(positions, width):
        return data_bytes.at(positions, width, little_endian)

    ifd = tiff_start + number(tiff_start + 4, 4)
    # only the entries that lie wholly inside the segment are read
    fitting = tf.maximum((segment_end - ifd - 2) // 12, 0)
    count = tf.where(ifd + 2 <= segment_end, tf.minimum(number(ifd, 2), fitting), 0)
    entries = ifd + 2 + 12 * tf.range(count, dtype=tf.int64)
    field_type = number(entries + 2, 2)
    values = tf.where(field_type == _SHORT, number(entries + 8, 2), number(entries + 8, 4))
    matches = (number(entries, 2) == ORIENTATION_TAG) & (number(entries + 4, 4) == 1)
    matches &= (field_type == _SHORT) | (field_type == _LONG)
    # the first of repeated tags, as Pillow reads; with no match (or no entry at all) the
    # appended 1 is read
    first = tf.minimum(tf.reduce_min(tf.where(matches, tf.range(count, dtype=tf.int64), count)), count)
    value = tf.gather(tf.concat([values, [1]], axis=0), first)
    header_inside = (tiff_start >= 0) & (tiff_start + 8 <= segment_end)
    usable = header_inside & readable_order & (value >= 1) & (value <= 8)
    return tf.where(usable, value, 1)


def exif_orientation(data):
    """The EXIF orientation (1..8) of an encoded image; 1 for anything but a JPEG with a readable tag.

    Args:
      data: scalar string tensor, the bytes of an image file.

    Returns:
      int32 scalar tensor in 1..8.
    """
    data_bytes = _Bytes(data)
    tiff_start, segment_end = _exif_segment(data_bytes)
    return tf.cast(_orientation_in_tiff(data_bytes, tiff_start, segment_end), tf.int32)


def apply_orientation(image, orientation):
    """Turns stored pixels upright, as a viewer shows them (Pillow's `ImageOps.exif_transpose`).

    Orientations 5..8 store the image transposed (its first row is a side of the picture);
    after undoing that, each orientation is left-right and/or top-bottom mirrored.

    Args:
      image: tensor of shape [height, width, channels], as stored.
      orientation: int scalar tensor, the EXIF orientation (values outside 1..8 change nothing).

    Returns:
      The upright image, shape [height, width, channels] or, for 5..8, [width, height, channels].
    """
    orientation = tf.convert_to_tensor(orientation, tf.int32)
    transposed = (orientation >= 5) & (orientation <= 8)
    mirror_left_right = tf.reduce_any(orientation == [2, 3, 6, 7])
    mirror_top_bottom = tf.reduce_any(orientation == [3, 4, 7, 8])
    image = tf.cond(transposed, lambda: tf.transpose(image, [1, 0, 2]), lambda: image)
    image = tf.cond(mirror_left_right, lambda: tf.reverse(image, [1]), lambda: image)
    return tf.cond(mirror_top_bottom, lambda: tf.reverse(image, [0]), lambda: image)
