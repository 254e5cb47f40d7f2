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

import numpy as np
import tensorflow as tf

# The segments before the Exif one are at most 64 KiB each: four of them are read, which is
# the whole file for most re-ID crops, and a 5 MB photo is not copied for its header.
HEADER_BYTES = 4 * 65538
ORIENTATION_TAG = 0x0112
EXIF_SIGNATURE = b"Exif\0\0"  # what an APP1 segment holding EXIF starts with
_APP1_MARKER = 0xFFE1
_BYTE_ORDERS = {"little": 0x4949, "big": 0x4D4D}  # "II", "MM"
_SHORT, _LONG = 3, 4  # TIFF field types

# The parser runs for every image of every epoch, where each TensorFlow op costs a few
# microseconds: it reads several numbers with one gather and one weighted sum each, and has
# no loop and no branch (a tf.cond alone measured as costly as a hundred ops in Dataset.map).


def _weights(fields, width, little_endian):
    """[width, len(fields)] weights that turn `width` bytes into the unsigned integers of
    `fields`, each (offset, size) in bytes."""
    weights = np.zeros((width, len(fields)), np.int64)
    for column, (offset, size) in enumerate(fields):
        for index in range(size):
            weights[offset + index, column] = 256 ** (index if little_endian else size - 1 - index)
    return weights


def _both_orders(fields, width):
    """[big-endian, little-endian] weights of `fields`: shape [2, width, len(fields)]."""
    return np.stack([_weights(fields, width, False), _weights(fields, width, True)])


# before an Exif signature: the APP1 marker and the segment's length (counting its own 2 bytes)
_SEGMENT_FIELDS = _weights([(0, 2), (2, 2)], 4, little_endian=False)
# TIFF header: its byte order (the same bytes either way), then IFD0's offset from the
# header's start (after the 42) as big-endian and as little-endian
_TIFF_FIELDS = np.concatenate([_weights([(0, 2)], 8, False), _both_orders([(4, 4)], 8)[:, :, 0].T], axis=1)
# IFD: its entry count; each 12-byte entry: tag, field type, value count, value as a SHORT
# (first 2 bytes of the value field) and as a LONG
_COUNT_FIELDS = _both_orders([(0, 2)], 2)
_ENTRY_FIELDS = _both_orders([(0, 2), (2, 2), (4, 4), (8, 2), (8, 4)], 12)


def _read(values, positions, weights):
    """The fields `weights` [width, fields] describes, of the bytes at each of `positions`.

    Positions are clipped into `values`, whose last value is a padding 0: no read can fail,
    and the callers check every result against the segment's bounds.
    """
    width = int(weights.shape[-2])
    indices = tf.expand_dims(positions, -1) + np.arange(width, dtype=np.int64)
    window = tf.gather(values, tf.clip_by_value(indices, 0, tf.size(values, tf.int64) - 1))
    return tf.reduce_sum(tf.expand_dims(window, -1) * weights, axis=-2)


def _exif_segment(header, values):
    """(start of the TIFF header, end of its segment) of the first Exif APP1 segment.

    Rather than walking the markers one by one (a loop per image), every "Exif\\0\\0" in the
    header is found at once and the first one that opens an APP1 segment (the marker FF E1 and
    a length just before it) is taken. Compressed image data cannot hold that marker (a 0xFF
    there is always followed by 0x00 or a restart marker), so this is the segment Pillow's
    marker walk finds, unless an earlier segment's payload mimics a whole Exif segment header.
    With none, the start is past the end of the header and the caller reads orientation 1.
    """
    # the raw op: tf.strings.split wraps it in a ragged tensor (25 more ops per image)
    pieces = tf.raw_ops.StringSplitV2(input=tf.reshape(header, [1]), sep=EXIF_SIGNATURE).values
    # where each signature starts (the last value: the end of the header, no signature)
    starts = tf.cumsum(tf.cast(tf.strings.length(pieces), tf.int64) + len(EXIF_SIGNATURE)) - len(EXIF_SIGNATURE)
    marker, length = tf.unstack(_read(values, starts - 4, _SEGMENT_FIELDS), num=2, axis=-1)
    opens_segment = (marker == _APP1_MARKER) & (length >= 8) & (starts >= 6)
    first = tf.argmax(tf.concat([tf.cast(opens_segment[:-1], tf.int32), [1]], axis=0))
    start = tf.gather(starts, first)
    segment_end = tf.minimum(start - 2 + tf.gather(length, first), tf.size(values, tf.int64) - 1)
    return start + len(EXIF_SIGNATURE), segment_end


def exif_orientation(data):
    """The EXIF orientation (1..8) of an encoded image; 1 for anything but a JPEG with a readable tag.

    Args:
      data: scalar string tensor, the bytes of an image file.

    Returns:
      int32 scalar tensor in 1..8.
    """
    header = tf.strings.substr(data, 0, HEADER_BYTES)
    values = tf.concat([tf.cast(tf.io.decode_raw(header, tf.uint8), tf.int64), [0]], axis=0)
    tiff_start, segment_end = _exif_segment(header, values)

    # byte order, then IFD0's offset read big-endian and little-endian
    byte_order, *ifd_offsets = tf.unstack(_read(values, tiff_start, _TIFF_FIELDS), num=3)
    little_endian = tf.cast(byte_order == _BYTE_ORDERS["little"], tf.int32)
    ifd = tiff_start + tf.gather(ifd_offsets, little_endian)
    entry_count = tf.reduce_sum(_read(values, ifd, tf.gather(_COUNT_FIELDS, little_endian)))
    # only the entries that lie wholly inside the segment are read
    count = tf.clip_by_value(tf.minimum(entry_count, (segment_end - ifd - 2) // 12), 0, 65535)
    entries = _read(values, ifd + 2 + 12 * tf.range(count), tf.gather(_ENTRY_FIELDS, little_endian))
    tag, field_type, value_count, short_value, long_value = tf.unstack(entries, num=5, axis=-1)
    matches = (tag == ORIENTATION_TAG) & (value_count == 1) & ((field_type == _SHORT) | (field_type == _LONG))
    # the first of repeated tags, as Pillow reads; with none, the appended 0 (no orientation)
    first = tf.argmax(tf.concat([tf.cast(matches, tf.int32), [1]], axis=0))
    value = tf.gather(tf.concat([tf.where(field_type == _SHORT, short_value, long_value), [0]], axis=0), first)
    readable = (
        (tiff_start + 8 <= segment_end)
        & ((byte_order == _BYTE_ORDERS["little"]) | (byte_order == _BYTE_ORDERS["big"]))
        & (tf.strings.substr(header, 0, 2) == b"\xff\xd8")  # a JPEG
        & (value >= 1)
        & (value <= 8)
    )
    return tf.cast(tf.where(readable, value, 1), tf.int32)


def is_transposed(orientation):
    """Whether an orientation stores the picture transposed (5..8: its first row is a side)."""
    return (orientation >= 5) & (orientation <= 8)


# orientation (0..8, 0 and 1 alike) -> the axes permutation and the row and column steps that
# turn the stored pixels upright: orientations 5..8 store the picture transposed, and after
# undoing that each orientation is left-right (column step -1) and/or top-bottom mirrored
_PERMUTATIONS = np.array([[0, 1, 2]] * 5 + [[1, 0, 2]] * 4, np.int32)
_STEPS = np.array(
    [[1, 1, 1], [1, 1, 1], [1, -1, 1], [-1, -1, 1], [-1, 1, 1], [1, 1, 1], [1, -1, 1], [-1, -1, 1], [-1, 1, 1]],
    np.int32,
)


def apply_orientation(image, orientation):
    """Turns stored pixels upright, as a viewer shows them (Pillow's `ImageOps.exif_transpose`).

    One transpose and one strided slice whose permutation and steps are looked up: no branch,
    so the op stays cheap inside `Dataset.map`.

    Args:
      image: tensor of shape [height, width, channels], as stored.
      orientation: int scalar tensor, the EXIF orientation (values outside 1..8 change nothing).

    Returns:
      The upright image, shape [height, width, channels] or, for 5..8, [width, height, channels].
    """
    orientation = tf.convert_to_tensor(orientation, tf.int32)
    index = tf.where((orientation >= 1) & (orientation <= 8), orientation, 1)
    turned = tf.transpose(image, tf.gather(_PERMUTATIONS, index))
    everything = tf.zeros([3], tf.int32)
    return tf.strided_slice(turned, everything, everything, tf.gather(_STEPS, index), begin_mask=7, end_mask=7)
