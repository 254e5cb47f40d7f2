"""EXIF orientation: every reader of an image sees it upright, as a viewer shows it.

The reference is written from the Exif definition, not from the package: for each orientation
the stored pixels are built from an upright picture with explicit index formulas (Exif 2.32,
4.6.4 A: where the stored 0th row and 0th column lie in the picture), and the package must
give the upright picture back. Pillow's `ImageOps.exif_transpose` is a second reference.
"""

import io
import struct

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from siamese_reid.data.images import decode_image
from siamese_reid.data.orientation import apply_orientation, exif_orientation
from siamese_reid.data.pipeline import pk_dataset
from siamese_reid.data.readers import Sample
from siamese_reid.data.scan import scan_samples

ORIENTATIONS = range(1, 9)
HEIGHT, WIDTH = 48, 32
# JPEG at quality 95 without chroma subsampling: the mean error per pixel is about 1 level;
# a picture read the wrong way round is tens of levels off (checked in the tests).
JPEG_MEAN_ERROR = 3.0


def upright_picture(seed=0, height=HEIGHT, width=WIDTH):
    """An asymmetric picture: 8x8 blocks of random colours (no flip or turn maps it to itself)."""
    blocks = np.random.default_rng(seed).integers(0, 256, (height // 8, width // 8, 3))
    return np.kron(blocks, np.ones((8, 8, 1))).astype(np.uint8)


def stored_pixels(upright, orientation):
    """What a camera stores for `upright` with this orientation tag.

    Exif 2.32, 4.6.4 A: 1 = 0th row at the top, 0th column on the left; 2 = top, right;
    3 = bottom, right; 4 = bottom, left; 5 = left side, top; 6 = right side, top;
    7 = right side, bottom; 8 = left side, bottom.
    """
    height, width = upright.shape[:2]
    flipped_row = lambda r: height - 1 - r  # noqa: E731
    flipped_col = lambda c: width - 1 - c  # noqa: E731
    if orientation <= 4:
        i, j = np.indices((height, width))  # stored[i, j]
        source = {1: (i, j), 2: (i, flipped_col(j)), 3: (flipped_row(i), flipped_col(j)), 4: (flipped_row(i), j)}
    else:
        i, j = np.indices((width, height))  # the stored image is width rows high
        source = {5: (j, i), 6: (j, flipped_col(i)), 7: (flipped_row(j), flipped_col(i)), 8: (flipped_row(j), i)}
    rows, cols = source[orientation]
    return upright[rows, cols]


def encoded(pixels, orientation, image_format="JPEG"):
    """File bytes of `pixels` with an EXIF orientation tag (0x0112) written by Pillow."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    options = {"quality": 95, "subsampling": 0} if image_format == "JPEG" else {}
    Image.fromarray(pixels).save(buffer, image_format, exif=exif, **options)
    return buffer.getvalue()


def write_oriented(path, upright, orientation, image_format="JPEG"):
    path.write_bytes(encoded(stored_pixels(upright, orientation), orientation, image_format))
    return path


def pillow_upright(path):
    with Image.open(path) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def decoded_in_dataset_map(paths, height=HEIGHT, width=WIDTH):
    dataset = tf.data.Dataset.from_tensor_slices([str(p) for p in paths])
    dataset = dataset.map(lambda path: decode_image(path, height, width), num_parallel_calls=2)
    return np.stack([image.numpy() for image in dataset])


def mean_error(a, b):
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean())


def test_reference_stored_pixels_are_what_pillow_turns_upright():
    # the test's own reference agrees with Pillow's reading of the standard, losslessly
    upright = upright_picture()
    for orientation in ORIENTATIONS:
        image = Image.open(io.BytesIO(encoded(stored_pixels(upright, orientation), orientation, "PNG")))
        np.testing.assert_array_equal(np.asarray(ImageOps.exif_transpose(image)), upright)


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_apply_orientation_is_exact_eagerly_and_in_dataset_map(orientation):
    upright = upright_picture()
    stored = stored_pixels(upright, orientation)
    np.testing.assert_array_equal(apply_orientation(tf.constant(stored), orientation).numpy(), upright)
    dataset = tf.data.Dataset.from_tensors((stored, orientation)).map(apply_orientation)
    np.testing.assert_array_equal(next(iter(dataset)).numpy(), upright)


@pytest.mark.parametrize("orientation", [0, 9, -1, 65535])
def test_orientations_outside_1_to_8_leave_the_pixels_as_stored(orientation):
    stored = upright_picture()
    np.testing.assert_array_equal(apply_orientation(tf.constant(stored), orientation).numpy(), stored)


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_jpeg_decodes_upright_eagerly_and_in_dataset_map(tmp_path, orientation):
    upright = upright_picture()
    path = write_oriented(tmp_path / "photo.jpg", upright, orientation)
    eager = decode_image(str(path), HEIGHT, WIDTH).numpy()
    in_map = decoded_in_dataset_map([path])[0]
    np.testing.assert_array_equal(eager, in_map)
    assert mean_error(eager, upright) < JPEG_MEAN_ERROR
    assert mean_error(eager, pillow_upright(path)) < 0.5  # the same JPEG decoded by Pillow
    # resized as well (the decoder resizes before it turns): the same as resizing the upright picture
    smaller = tf.image.resize(tf.constant(upright, tf.float32), [HEIGHT // 2, WIDTH // 2], antialias=True)
    assert mean_error(decode_image(str(path), HEIGHT // 2, WIDTH // 2), smaller) < JPEG_MEAN_ERROR
    if orientation in (2, 3, 4):  # same shape as stored: the picture read as stored is far off
        assert mean_error(stored_pixels(upright, orientation), upright) > 10 * JPEG_MEAN_ERROR


def _with_segments(jpeg, *segments):
    """`jpeg` with APPn segments (marker, payload) inserted right after its start marker."""
    inserted = b"".join(bytes([0xFF, marker]) + struct.pack(">H", len(data) + 2) + data for marker, data in segments)
    return jpeg[:2] + inserted + jpeg[2:]


def _tiff(byte_order, entries, ifd_offset=8, count=None, gap=0):
    """A TIFF header and IFD0 with `entries` (tag, type, count, 4 value bytes), as EXIF holds
    it; `gap` bytes between them (`ifd_offset` says where IFD0 is, right or not)."""
    endian = "<" if byte_order == b"II" else ">"
    body = byte_order + struct.pack(endian + "HI", 42, ifd_offset) + bytes(gap)
    body += struct.pack(endian + "H", len(entries) if count is None else count)
    for tag, field_type, values, value in entries:
        body += struct.pack(endian + "HHI", tag, field_type, values) + value
    return body + b"\0\0\0\0"


def _plain_jpeg(pixels):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95, subsampling=0)
    return buffer.getvalue()


SHORT_6_LITTLE = (0x0112, 3, 1, struct.pack("<HH", 6, 0))
LAYOUTS = {
    # (segments before the image data) -> the orientation a viewer applies
    "little-endian": ([(0xE1, b"Exif\0\0" + _tiff(b"II", [SHORT_6_LITTLE]))], 6),
    "big-endian": ([(0xE1, b"Exif\0\0" + _tiff(b"MM", [(0x0112, 3, 1, struct.pack(">HH", 8, 0))]))], 8),
    "after an ICC profile and XMP": (
        [
            (0xE2, b"ICC_PROFILE\0" + bytes(3000)),
            (0xE1, b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta/>"),
            (0xE1, b"Exif\0\0" + _tiff(b"II", [(0x0100, 3, 1, bytes(4)), SHORT_6_LITTLE])),
        ],
        6,
    ),
    "as a LONG": ([(0xE1, b"Exif\0\0" + _tiff(b"II", [(0x0112, 4, 1, struct.pack("<I", 3))]))], 3),
    "IFD0 after other data": ([(0xE1, b"Exif\0\0" + _tiff(b"II", [SHORT_6_LITTLE], ifd_offset=108, gap=100))], 6),
    "repeated tag: the first counts": (
        [(0xE1, b"Exif\0\0" + _tiff(b"II", [SHORT_6_LITTLE, (0x0112, 3, 1, struct.pack("<HH", 8, 0))]))],
        6,
    ),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_orientation_is_found_where_pillow_finds_it(layout):
    segments, expected = LAYOUTS[layout]
    data = _with_segments(_plain_jpeg(upright_picture()), *segments)
    assert Image.open(io.BytesIO(data)).getexif().get(0x0112) == expected
    assert exif_orientation(tf.constant(data)).numpy() == expected


def test_orientation_is_found_after_a_jfif_segment():
    data = encoded(upright_picture(), 8)
    assert data[2:4] == b"\xff\xe0"  # Pillow writes JFIF's APP0 before the Exif APP1
    assert exif_orientation(tf.constant(data)).numpy() == 8


DAMAGED = {
    "truncated header": b"Exif\0\0II*\0",
    "signature only": b"Exif\0\0",
    "unknown byte order": b"Exif\0\0XX" + _tiff(b"II", [SHORT_6_LITTLE])[2:],
    "IFD outside the segment": b"Exif\0\0" + _tiff(b"II", [SHORT_6_LITTLE], ifd_offset=60000),
    "value 0": b"Exif\0\0" + _tiff(b"II", [(0x0112, 3, 1, struct.pack("<HH", 0, 0))]),
    "value 9": b"Exif\0\0" + _tiff(b"II", [(0x0112, 3, 1, struct.pack("<HH", 9, 0))]),
    "ASCII type": b"Exif\0\0" + _tiff(b"II", [(0x0112, 2, 1, b"6\0\0\0")]),
    "random bytes": b"Exif\0\0" + np.random.default_rng(1).integers(0, 256, 200, dtype=np.uint8).tobytes(),
}


@pytest.mark.parametrize("damage", DAMAGED)
def test_a_damaged_exif_block_counts_as_orientation_1_and_stops_nothing(tmp_path, damage):
    stored = stored_pixels(upright_picture(), 6)  # stored sideways: with orientation 1 it stays so
    path = tmp_path / "damaged.jpg"
    path.write_bytes(_with_segments(_plain_jpeg(stored), (0xE1, DAMAGED[damage])))
    assert exif_orientation(tf.constant(path.read_bytes())).numpy() == 1
    height, width = stored.shape[:2]
    assert mean_error(decode_image(str(path), height, width), stored) < JPEG_MEAN_ERROR
    assert mean_error(decoded_in_dataset_map([path], height, width)[0], stored) < JPEG_MEAN_ERROR
    usable, skipped = scan_samples([Sample(str(path), 1, 1)], tmp_path / "cache")
    assert skipped == [] and usable[0].path == str(path)


def test_an_entry_count_beyond_the_segment_reads_the_entries_inside_it():
    # as Pillow does (it warns and keeps the entries it could read)
    payload = b"Exif\0\0" + _tiff(b"II", [SHORT_6_LITTLE], count=65535)
    data = _with_segments(_plain_jpeg(upright_picture()), (0xE1, payload))
    assert exif_orientation(tf.constant(data)).numpy() == 6


def test_files_that_are_not_jpegs_read_as_orientation_1():
    png = encoded(upright_picture(), 6, "PNG")  # its eXIf chunk is the scan's business
    assert exif_orientation(tf.constant(png)).numpy() == 1
    assert exif_orientation(tf.constant(b"")).numpy() == 1
    assert exif_orientation(tf.constant(b"\xff\xd8")).numpy() == 1


@pytest.mark.parametrize("image_format", ["PNG", "TIFF"])
def test_the_scan_makes_other_formats_upright_exactly(tmp_path, image_format):
    upright = upright_picture()
    paths = [
        write_oriented(tmp_path / f"{orientation}.{image_format.lower()}", upright, orientation, image_format)
        for orientation in ORIENTATIONS
    ]
    usable, skipped = scan_samples([Sample(str(p), 1, 1) for p in paths], tmp_path / "cache")
    assert skipped == []
    if image_format == "PNG":  # an upright PNG is read where it is; the others are converted copies
        assert usable[0].path == str(paths[0]) and all("cache" in s.path for s in usable[1:])
    for sample in usable:
        np.testing.assert_array_equal(decode_image(sample.path, HEIGHT, WIDTH).numpy(), upright)
        np.testing.assert_array_equal(pillow_upright(sample.path), upright)
    np.testing.assert_array_equal(decoded_in_dataset_map([s.path for s in usable]), np.stack([upright] * 8))


def test_the_training_pipeline_streams_upright_images(tmp_path):
    upright = upright_picture()
    paths = [str(write_oriented(tmp_path / f"{o}.jpg", upright, o)) for o in ORIENTATIONS]
    batches = np.arange(8).reshape(1, 8)
    images, _ = next(iter(pk_dataset(paths, np.zeros(8, np.int32), batches, (HEIGHT, WIDTH), None, seed=0)))
    for image in images.numpy():
        assert mean_error(image, upright) < JPEG_MEAN_ERROR


TOWER_SETTINGS = [
    f"data.image_height={HEIGHT}",
    f"data.image_width={WIDTH}",
    "model.vgg_blocks=2",
    "model.embedding_dim=16",
]


@pytest.fixture(scope="module")
def tiny_config(project_root):
    from siamese_reid.config import load_config

    return load_config(project_root / "config.yaml", TOWER_SETTINGS)


@pytest.fixture(scope="module")
def random_tower(tiny_config):
    from siamese_reid.model.building import build_tower

    return build_tower(tiny_config)


def test_evaluation_embeds_the_upright_picture(tmp_path, random_tower):
    from siamese_reid.evaluation.embeddings import extract_embeddings

    upright = upright_picture()
    paths = [str(write_oriented(tmp_path / f"{o}.jpg", upright, o)) for o in ORIENTATIONS]
    embeddings = extract_embeddings(random_tower, paths, (HEIGHT, WIDTH), batch_size=3)
    # the reference: Pillow's upright pixels of each file, through the tower
    references = random_tower.predict(np.stack([pillow_upright(p) for p in paths]).astype(np.float32), verbose=0)
    distances = np.linalg.norm(embeddings - references, axis=1)
    turned = random_tower.predict(np.stack([upright[::-1, ::-1]]).astype(np.float32), verbose=0)
    assert distances.max() < 0.1 * np.linalg.norm(references[0] - turned[0])


def _random_run(run_dir, config, tower):
    from siamese_reid.config import save_config

    run_dir.mkdir()
    save_config(config, run_dir / "config.yaml")
    tower.save(run_dir / "last.keras")
    return run_dir


def test_a_rotated_copy_finds_its_original_first(tmp_path, tiny_config, random_tower):
    """The issue's end-to-end check: phone copies (EXIF 6 and 8) of indexed images, and an
    index holding sideways-stored photos, searched with upright ones."""
    from siamese_reid import search

    run_dir = _random_run(tmp_path / "run", tiny_config, random_tower)
    folder = tmp_path / "photos"
    folder.mkdir()
    pictures = [upright_picture(seed) for seed in range(6)]
    for seed, picture in enumerate(pictures[:3]):  # upright JPEG and PNG originals
        (folder / f"upright{seed}.jpg").write_bytes(encoded(picture, 1))
    (folder / "lossless.png").write_bytes(encoded(pictures[3], 1, "PNG"))
    write_oriented(folder / "sideways4.jpg", pictures[4], 6)  # the index reads these upright too
    write_oriented(folder / "sideways5.jpg", pictures[5], 8)
    search.update_index(run_dir, [folder], tmp_path / "index")

    queries = tmp_path / "queries"
    queries.mkdir()
    cases = {  # query file -> the indexed file it must find first
        write_oriented(queries / "a6.jpg", pictures[0], 6): "upright0.jpg",
        write_oriented(queries / "b8.jpg", pictures[1], 8): "upright1.jpg",
        write_oriented(queries / "c6.png", pictures[3], 6, "PNG"): "lossless.png",  # exact pixels
        queries / "d.jpg": "sideways4.jpg",
        queries / "e.jpg": "sideways5.jpg",
    }
    (queries / "d.jpg").write_bytes(encoded(pictures[4], 1))
    (queries / "e.jpg").write_bytes(encoded(pictures[5], 1))
    answers, errors = search.search_images(tmp_path / "index", list(cases), top_k=3, threshold=1.0)
    assert errors == {}
    for answer, expected in zip(answers, cases.values(), strict=True):
        first, second = answer.results[0], answer.results[1]
        assert first.path.endswith(expected), (answer.query, first.path)
        # the same upright pixels (the pictures' 8x8 blocks are flat, so even JPEG keeps them
        # exactly when turned): distance 0 up to float rounding, and other pictures are far
        assert first.distance < 1e-3 < 0.05 < second.distance


def test_thumbnails_and_the_histogram_baseline_see_the_upright_picture(tmp_path):
    from siamese_reid.evaluation.baselines import colour_histogram_features
    from siamese_reid.figures import framed_image

    upright = upright_picture()
    paths = [write_oriented(tmp_path / f"{o}.jpg", upright, o) for o in ORIENTATIONS]
    for path in paths:
        assert mean_error(framed_image(path, None, (HEIGHT, WIDTH)), upright) < JPEG_MEAN_ERROR
    features = colour_histogram_features(paths, image_size=(HEIGHT, WIDTH))
    # stripes of the picture from top to bottom: a turned picture has other colours per stripe
    np.testing.assert_allclose(features, np.repeat(features[:1], len(paths), axis=0), atol=0.05)
