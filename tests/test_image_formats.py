"""BMP variants that Pillow reads and TensorFlow's decoder does not (or reads wrong).

Pillow cannot write RLE, 16-bit or padded BMPs, so the files are written here byte by byte
from the format's definition (BITMAPFILEHEADER + BITMAPINFOHEADER, a BGRX palette, rows
bottom-up), and the expected RGB pixels come from the same arrays, not from a decoder.
"""

import os
import struct

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from siamese_reid.data.pipeline import inference_dataset
from siamese_reid.data.readers import Sample
from siamese_reid.data.scan import scan_samples

HEIGHT, WIDTH = 5, 7  # an odd width, so rows need padding to 4 bytes

BI_RGB, BI_RLE8, BI_RLE4 = 0, 1, 2


def bmp_file(width, height, bits_per_pixel, compression, pixel_data, palette=None, trailing=b""):
    """A whole .bmp file: 14-byte file header, 40-byte BITMAPINFOHEADER, palette, pixels."""
    palette_bytes = b"" if palette is None else b"".join(bytes([blue, green, red, 0]) for red, green, blue in palette)
    info = struct.pack(
        "<IiiHHIIiiII",
        40,  # header size: BITMAPINFOHEADER
        width,
        height,  # positive: rows are stored bottom-up
        1,  # planes
        bits_per_pixel,
        compression,
        len(pixel_data),
        2835,  # 72 dpi in pixels per metre
        2835,
        0 if palette is None else len(palette),
        0,
    )
    offset = 14 + len(info) + len(palette_bytes)
    size = offset + len(pixel_data) + len(trailing)
    return b"BM" + struct.pack("<IHHI", size, 0, 0, offset) + info + palette_bytes + pixel_data + trailing


def _runs(row):
    """Splits a row into (value, length) runs of equal values (at most 255 long)."""
    runs, start = [], 0
    while start < len(row):
        length = 1
        while start + length < len(row) and row[start + length] == row[start] and length < 255:
            length += 1
        runs.append((int(row[start]), length))
        start += length
    return runs


def _pack(indices, bits):
    if bits == 8:
        return bytes(indices)
    padded = list(indices) + [0] * (len(indices) % 2)
    return bytes((high << 4) | low for high, low in zip(padded[::2], padded[1::2], strict=True))


def rle_encode(indices, bits):
    """RLE8 (bits=8) or RLE4 (bits=4) pixel data for palette indices [height, width].

    Repeated values become encoded runs (count, value); three or more single values in a row
    become one absolute run (0, count, values..., padded to 16 bits), so both modes are used.
    Each row ends with (0, 0), the bitmap with (0, 1).
    """
    data = bytearray()
    for row in indices[::-1]:
        literals = []
        for value, length in _runs(row) + [(None, 0)]:
            if length == 1:
                literals.append(value)
                continue
            if len(literals) >= 3:
                packed = _pack(literals, bits)
                data += bytes([0, len(literals)]) + packed + b"\0" * (len(packed) % 2)
            else:
                for literal in literals:
                    data += bytes([1, literal if bits == 8 else (literal << 4) | literal])
            literals = []
            if value is not None:
                data += bytes([length, value if bits == 8 else (value << 4) | value])
        data += b"\0\0"
    return bytes(data + b"\0\1")


def rows_24_bit(rgb):
    """Uncompressed BGR rows, bottom-up, each padded to a multiple of 4 bytes."""
    data = bytearray()
    for row in rgb[::-1]:
        line = row[:, ::-1].tobytes()
        data += line + b"\0" * (-len(line) % 4)
    return bytes(data)


def rows_16_bit(rgb):
    """RGB555 words (blue in the low bits), bottom-up, rows padded to 4 bytes; and the RGB a
    reader shows, each 5-bit value scaled to 0..255."""
    fives = (rgb >> 3).astype(np.uint16)
    words = (fives[..., 0] << 10) | (fives[..., 1] << 5) | fives[..., 2]
    data = bytearray()
    for row in words[::-1]:
        line = row.astype("<u2").tobytes()
        data += line + b"\0" * (-len(line) % 4)
    return bytes(data), (fives.astype(np.int64) * 255 // 31).astype(np.uint8)


def palette_image(bits, seed=0):
    """Palette indices with runs and single values, the palette, and the RGB they show."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (2**bits if bits == 4 else 40, 3), dtype=np.uint8)
    indices = rng.integers(0, len(palette), (HEIGHT, WIDTH))
    indices[:, 3:6] = indices[:, 3:4]  # three single values (an absolute run), then a run of three
    return indices, palette, palette[indices]


def _variants():
    rgb = np.random.default_rng(1).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    indices8, palette8, expected8 = palette_image(8)
    indices4, palette4, expected4 = palette_image(4)
    words, expected16 = rows_16_bit(rgb)
    return {
        "rle8": (bmp_file(WIDTH, HEIGHT, 8, BI_RLE8, rle_encode(indices8, 8), palette8), expected8),
        "rle4": (bmp_file(WIDTH, HEIGHT, 4, BI_RLE4, rle_encode(indices4, 4), palette4), expected4),
        "sixteen_bit": (bmp_file(WIDTH, HEIGHT, 16, BI_RGB, words), expected16),
        # some editors pad a BMP after its rows; TensorFlow refuses any size but the exact one
        "padded_24_bit": (bmp_file(WIDTH, HEIGHT, 24, BI_RGB, rows_24_bit(rgb), trailing=b"\0\0"), rgb),
    }


VARIANTS = _variants()


def _decoded_by_the_pipeline(path):
    """What the model receives for `path`: the tf.data inference stream at the image's own size."""
    (batch,) = list(inference_dataset([path], (HEIGHT, WIDTH), batch_size=1))
    return batch[0].numpy()


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_bmps_tensorflow_cannot_read_are_converted_to_their_exact_colours(tmp_path, name):
    # TensorFlow cannot read RLE8/RLE4 or 16-bit BMPs, nor a padded 24-bit one that looks like
    # "uncompressed colour": the scan converts them, so that training does not stop in epoch 1.
    contents, expected = VARIANTS[name]
    path = tmp_path / f"0001_c1s1_000001_{name}.bmp"
    path.write_bytes(contents)
    with Image.open(path) as image:  # the hand-written file is a valid BMP that shows `expected`
        np.testing.assert_array_equal(np.asarray(image.convert("RGB")), expected)
    with pytest.raises(tf.errors.InvalidArgumentError):  # why the scan must convert it
        tf.io.decode_image(contents, channels=3, expand_animations=False)
    usable, skipped = scan_samples([Sample(str(path), 1, 1)], tmp_path / "cache")
    assert not skipped and usable[0].path.endswith(".png") and usable[0].display_path == str(path)
    np.testing.assert_allclose(_decoded_by_the_pipeline(usable[0].path), expected, atol=1e-3)


@pytest.mark.parametrize("top_down", [False, True])
def test_plain_24_bit_bmps_are_read_directly_not_copied(tmp_path, top_down):
    rgb = np.random.default_rng(2).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    rows = rows_24_bit(rgb[::-1] if top_down else rgb)
    contents = bmp_file(WIDTH, -HEIGHT if top_down else HEIGHT, 24, BI_RGB, rows)
    path = tmp_path / "0001_c1s1_000001_01.bmp"
    path.write_bytes(contents)
    usable, skipped = scan_samples([Sample(str(path), 1, 1)], tmp_path / "cache")
    assert not skipped and usable[0].path == str(path) and not (tmp_path / "cache").exists()
    np.testing.assert_allclose(_decoded_by_the_pipeline(str(path)), rgb, atol=1e-3)


def _sixteen_bit_grey(path, image_format):
    """A 16-bit greyscale ramp written by Pillow; returns the 8-bit RGB a viewer shows."""
    values = (np.arange(HEIGHT * WIDTH).reshape(HEIGHT, WIDTH) * 1800 + 300).astype(np.uint16)
    Image.fromarray(values).save(path, format=image_format)
    return np.repeat((values >> 8).astype(np.uint8)[..., None], 3, axis=2)


@pytest.mark.parametrize(("name", "image_format"), [("scan.tif", "TIFF"), ("scan.pgm", "PPM")])
def test_sixteen_bit_greyscale_is_scaled_not_clipped_to_white(tmp_path, name, image_format):
    # Pillow's convert("RGB") clips 16-bit values at 255, which would show the model white images
    path = tmp_path / name
    expected = _sixteen_bit_grey(path, image_format)
    usable, skipped = scan_samples([Sample(str(path), 1, 1)], tmp_path / "cache")
    assert not skipped
    np.testing.assert_allclose(_decoded_by_the_pipeline(usable[0].path), expected, atol=1e-3)


def test_floating_point_images_are_skipped_with_the_reason(tmp_path):
    path = tmp_path / "depth.tif"
    Image.fromarray(np.linspace(0, 1, HEIGHT * WIDTH, dtype=np.float32).reshape(HEIGHT, WIDTH)).save(path)
    usable, skipped = scan_samples([Sample(str(path), 1, 1)], tmp_path / "cache")
    assert usable == [] and skipped == [(str(path), skipped[0][1])] and "floating-point pixels" in skipped[0][1]


def test_file_names_that_are_not_utf8_reach_the_model_unchanged(tmp_path):
    # tf.constant cannot hold such a name: training or the first evaluation stopped with a traceback
    rgb = np.random.default_rng(3).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    name = os.fsdecode(b"caf\xe9 \xff.png")  # Latin-1 and a byte no encoding maps
    Image.fromarray(rgb).save(tmp_path / name, format="PNG")
    broken = os.fsdecode(b"\xfa broken.png")
    (tmp_path / broken).write_bytes(b"not a PNG")
    samples = [Sample(str(tmp_path / name), 1, 1), Sample(str(tmp_path / broken), 1, 2)]
    usable, skipped = scan_samples(samples, tmp_path / "cache")
    assert usable[0].display_path == str(tmp_path / name)  # the user's file, for figures and notebooks
    np.testing.assert_allclose(_decoded_by_the_pipeline(usable[0].path), rgb, atol=1e-3)
    # the skipped list goes to data_warnings.txt: it must be writable text
    assert skipped[0][0] == f"{tmp_path}/\\xfa broken.png"
    skipped[0][1].encode("utf-8")
