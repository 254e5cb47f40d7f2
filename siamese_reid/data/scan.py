"""Checks every image once before training, so one bad file never kills a long run.

Each file is fully decoded with Pillow. Corrupt or truncated files are skipped and listed.
What TensorFlow's decoders would read wrongly or not at all is converted once to PNG in a
cache folder: PGM/PPM and TIFF (16-bit greyscale scaled to 8 bits, not clipped), and BMPs
other than uncompressed 24/32-bit colour (TensorFlow rejects 1-bit, 16-bit, RLE-compressed
and padded BMPs in the middle of training, and reads an 8-bit palette BMP as grey palette
indices). Files other than JPEGs whose EXIF orientation is not 1 (a PNG's eXIf chunk, TIFF)
are converted upright, as a viewer shows them; a JPEG is turned upright when it is decoded
(see orientation.py). Files whose names are not UTF-8 are copied under ASCII names (tf.constant
cannot hold them). So the tf.data hot path only sees files it decodes correctly.
"""

import functools
import hashlib
import os
import shutil
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from siamese_reid.data.readers import Sample
from siamese_reid.files import write_atomically

TF_DECODABLE_FORMATS = {"JPEG", "PNG", "BMP", "GIF"}


def _converted_path(path, cache_dir, suffix):
    # keyed on the file's size and modification time too: an edited file gets a new copy
    stat = Path(path).stat()
    # "v3": copies made before 16-bit greyscale was converted correctly (v1) or before the
    # EXIF orientation was applied (v2) are not reused
    key = f"v3|{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    digest = hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    # absolute, so the recorded path resolves from any working folder (a notebook, evaluate.py)
    return Path(cache_dir).resolve() / f"{digest}{suffix}"


def check_image(path):
    """Returns the Pillow format name of a fully decodable image; raises OSError otherwise."""
    return _image_facts(path)[0]


def _image_facts(path):
    """(Pillow format name, EXIF orientation) of a fully decodable image; raises OSError otherwise."""
    with Image.open(path) as image:
        image.load()  # decodes every pixel: truncated and corrupt files raise here
        return image.format, exif_orientation(image)


# EXIF orientation -> the Pillow transpose that turns the stored pixels upright (1: none)
_UPRIGHT_TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def exif_orientation(image):
    """The EXIF orientation (1..8) of an open Pillow image; 1 when it has none or it cannot be
    read (a damaged EXIF block must not cost the image: its pixels are still good)."""
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # Pillow's EXIF parser raises many types on damaged blocks (struct.error, ...)
        return 1
    return orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1


def upright(image):
    """An open Pillow image as a viewer shows it: turned by its EXIF orientation (as
    `PIL.ImageOps.exif_transpose` does, but a damaged EXIF block counts as orientation 1)."""
    # loaded first: Pillow turns some formats (TIFF) upright as it loads them and then drops
    # their tag, and reading the tag before would turn them twice
    image.load()
    method = _UPRIGHT_TRANSPOSES.get(exif_orientation(image))
    return image if method is None else image.transpose(method)


def _bmp_tensorflow_reads(path):
    """Whether TensorFlow's BMP decoder reads this file as Pillow does. It reads uncompressed
    24/32-bit pixels only, ignores the compression field and the 12-byte OS/2 header, and
    refuses a file with any byte after the pixel rows (some editors pad BMPs)."""
    with open(path, "rb") as handle:
        header = handle.read(34)
    if len(header) < 34:
        return False
    (pixel_offset,) = struct.unpack_from("<I", header, 10)
    header_size, width, height, _, bits_per_pixel, compression = struct.unpack_from("<IiiHHI", header, 14)
    if header_size < 40 or bits_per_pixel not in (24, 32) or compression != 0 or width <= 0:
        return False
    row_size = (bits_per_pixel // 8 * width + 3) // 4 * 4
    return Path(path).stat().st_size == pixel_offset + row_size * abs(height)


def _tensorflow_reads_correctly(path, image_format, orientation=1):
    """Whether `decode_image` gives the pixels a viewer shows: it applies the EXIF orientation
    of JPEGs only."""
    if image_format not in TF_DECODABLE_FORMATS or (orientation != 1 and image_format != "JPEG"):
        return False
    return image_format != "BMP" or _bmp_tensorflow_reads(path)


def _utf8_name(path):
    # tf.constant needs UTF-8: a name in another encoding (os.fsdecode keeps its bytes as
    # surrogates) would fail where the dataset is built or first evaluated
    try:
        str(path).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def printable(path):
    """`path` with bytes that are not UTF-8 shown as \\xNN, for messages and text files."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def _to_rgb(image):
    """`image` as 8-bit RGB, as a viewer shows it.

    Pillow's convert("RGB") clips 16-bit greyscale (TIFF, PGM: modes I;16 and I) at 255, which
    turns most such images white: their high byte is kept instead, as libpng and TensorFlow do
    for 16-bit PNGs. Floating-point pixels have no agreed 0..255 range and are refused.
    """
    if image.mode == "F":
        raise ValueError("floating-point pixels have no standard 0..255 range: save the image with 8-bit pixels")
    if image.mode.startswith("I"):
        high_byte = np.clip(np.asarray(image).astype(np.int64), 0, 65535) >> 8
        image = Image.fromarray(high_byte.astype(np.uint8), "L")
    return image.convert("RGB")


def _usable_copy(sample, image_format, orientation, cache_dir):
    """A copy TensorFlow reads correctly: converted to an upright PNG, or (a name that is not
    UTF-8 only) the same bytes under an ASCII name."""
    readable = _tensorflow_reads_correctly(sample.path, image_format, orientation)
    target = _converted_path(sample.path, cache_dir, f".{image_format.lower()}" if readable else ".png")
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        if readable:
            write_atomically(target, functools.partial(shutil.copyfile, sample.path))
        else:
            with Image.open(sample.path) as image:
                rgb = _to_rgb(upright(image))
            write_atomically(target, functools.partial(rgb.save, format="PNG"))
    return Sample(str(target), sample.pid, sample.camid, source=sample.display_path)


def scan_samples(samples, cache_dir):
    """Splits `samples` into usable ones and a list of (path, reason) for skipped files.

    Args:
      samples: list of `Sample`.
      cache_dir: where images in formats TensorFlow cannot decode (or not upright: see the
        module's docstring) are converted to PNG, and files whose names are not UTF-8 are
        copied under ASCII names.

    Returns:
      (usable samples, with converted paths where needed; skipped [(printable path, reason)]).
    """
    usable, skipped = [], []
    for sample in samples:
        try:
            image_format, orientation = _image_facts(sample.path)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            reason = printable(f"unreadable image ({error})").replace("\n", " ")
            skipped.append((printable(sample.path), reason))
            continue
        if _utf8_name(sample.path) and _tensorflow_reads_correctly(sample.path, image_format, orientation):
            usable.append(sample)
            continue
        try:
            usable.append(_usable_copy(sample, image_format, orientation, cache_dir))
        except ValueError as error:  # a mode Pillow cannot convert to RGB (LAB, float)
            skipped.append((printable(sample.path), f"cannot convert to RGB ({error})"))
    return usable, skipped
