"""Checks every image once before training, so one bad file never kills a long run.

Each file is fully decoded with Pillow. Corrupt or truncated files are skipped and listed.
What TensorFlow's decoders would read wrongly or not at all is converted once to PNG in a
cache folder: PGM/PPM and TIFF, and BMPs other than uncompressed 24/32-bit colour (TensorFlow
rejects 1-bit, 16-bit, RLE-compressed and padded BMPs in the middle of training, and reads an
8-bit palette BMP as grey palette indices). So the tf.data hot path only sees files it decodes correctly.
"""

import functools
import hashlib
import struct
from pathlib import Path

from PIL import Image

from siamese_reid.data.records import Sample
from siamese_reid.files import write_atomically

TF_DECODABLE_FORMATS = {"JPEG", "PNG", "BMP", "GIF"}


def _converted_path(path, cache_dir):
    # keyed on the file's size and modification time too: an edited file gets a new copy
    stat = Path(path).stat()
    key = f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    # absolute, so the recorded path resolves from any working folder (a notebook, evaluate.py)
    return Path(cache_dir).resolve() / f"{digest}.png"


def check_image(path):
    """Returns the Pillow format name of a fully decodable image; raises OSError otherwise."""
    with Image.open(path) as image:
        image.load()  # decodes every pixel: truncated and corrupt files raise here
        return image.format


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


def _tensorflow_reads_correctly(path, image_format):
    if image_format not in TF_DECODABLE_FORMATS:
        return False
    return image_format != "BMP" or _bmp_tensorflow_reads(path)


def scan_samples(samples, cache_dir):
    """Splits `samples` into usable ones and a list of (path, reason) for skipped files.

    Args:
      samples: list of `Sample`.
      cache_dir: where images in formats TensorFlow cannot decode are converted to PNG.

    Returns:
      (usable samples, with converted paths where needed; skipped [(path, reason)]).
    """
    usable, skipped = [], []
    for sample in samples:
        try:
            image_format = check_image(sample.path)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            skipped.append((sample.path, f"unreadable image ({error})".replace("\n", " ")))
            continue
        if _tensorflow_reads_correctly(sample.path, image_format):
            usable.append(sample)
            continue
        target = _converted_path(sample.path, cache_dir)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(sample.path) as image:
                rgb = image.convert("RGB")
            write_atomically(target, functools.partial(rgb.save, format="PNG"))
        usable.append(Sample(str(target), sample.pid, sample.camid, source=sample.display_path))
    return usable, skipped
