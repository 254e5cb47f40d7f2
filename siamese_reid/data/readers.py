"""Dataset readers. Every reader returns a list of `Sample(path, pid, camid)` records.

Identity conventions follow Market-1501: pid -1 marks junk boxes (ignored by the evaluator),
pid 0 marks distractors (kept in the gallery as negatives). camid is 1-based as in the file
names. Folder-per-identity datasets have no camera ids; see `assign_split_cameras`.
No TensorFlow and no image decoding: readers only list and parse files. `datasets.LAYOUTS`
chooses the reader for data.layout.
"""

import re
from pathlib import Path
from typing import NamedTuple

import numpy as np

from siamese_reid.errors import ReIDError
from siamese_reid.evaluation.protocol import DISTRACTOR_PID, JUNK_PID, is_person

MARKET_FOLDERS = ("bounding_box_train", "query", "bounding_box_test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".gif", ".tif", ".tiff")

# Market-1501: 0002_c1s1_000451_03.jpg; DukeMTMC-reID: 0001_c2_f0046182.jpg; junk: -1_c1s1_...
_MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")


class Sample(NamedTuple):
    path: str  # the file the pipeline reads
    pid: int
    camid: int
    source: str | None = None  # the user's original file, when `path` is a converted copy

    @property
    def display_path(self):
        """The file to show a person: the original, not a converted copy."""
        return self.source or self.path


def parse_market_name(file_name):
    """Returns (pid, camid) for a Market-1501 / DukeMTMC-reID file name, or None."""
    match = _MARKET_NAME.match(file_name)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


def _require_folder(folder, what):
    """The folder as an absolute path (records must stay valid from any working directory:
    notebooks, evaluate.py run from elsewhere)."""
    folder = Path(folder)
    if not folder.exists():
        raise ReIDError(f"{what} folder '{folder}' does not exist")
    if not folder.is_dir():
        raise ReIDError(f"{what} path '{folder}' is not a folder")
    return folder.resolve()


def _image_files(folder):
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def read_market_folder(folder, what="image"):
    """Reads one Market-1501-style folder of images.

    Returns:
      (samples, warnings): files that are not images or whose names do not parse are skipped
      and listed in `warnings`; a folder with no usable image is an error.
    """
    folder = _require_folder(folder, what)
    files = _image_files(folder)
    if not files:
        raise ReIDError(f"{what} folder '{folder}' is empty")
    samples, warnings = [], []
    for path in files:
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            warnings.append(f"skipped '{path}': not an image file")
            continue
        parsed = parse_market_name(path.name)
        if parsed is None:
            warnings.append(f"skipped '{path}': name does not match PID_cCAM... (Market-1501)")
            continue
        samples.append(Sample(str(path), *parsed))
    if not samples:
        raise ReIDError(
            f"no file in {what} folder '{folder}' has a Market-1501-style name such as "
            "0002_c1s1_000451_03.jpg; for one folder per identity use data.layout: folders"
        )
    return samples, warnings


def _identity_names(root):
    return sorted(p.name for p in Path(root).iterdir() if p.is_dir())


def read_identity_folders(root, what="image", identity_ids=None):
    """Reads root/<identity>/<images>.

    Identities are numbered 1.. in sorted folder-name order, or by `identity_ids` (a dict of
    folder name -> pid) so that query and gallery folders read separately agree.
    camid is -1 (unknown) until `assign_split_cameras` sets it.

    Returns:
      (samples, warnings), as `read_market_folder`.
    """
    root = _require_folder(root, what)
    names = _identity_names(root)
    if not names:
        raise ReIDError(f"{what} folder '{root}' has no identity sub-folders")
    if identity_ids is None:
        identity_ids = {name: pid for pid, name in enumerate(names, start=1)}
    samples, warnings = [], []
    for name in names:
        pid, identity_folder = identity_ids[name], root / name
        for path in _image_files(identity_folder):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                warnings.append(f"skipped '{path}': not an image file")
                continue
            samples.append(Sample(str(path), pid, -1))
    if not samples:
        deeper = next((p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES), None)
        if deeper is not None:
            levels = len(deeper.relative_to(root).parts) - 1
            raise ReIDError(
                f"the images of {what} folder '{root}' are {levels} folders deep (e.g. '{deeper.relative_to(root)}'), "
                f"but layout folders reads root/<identity>/<images>: point data.root at '{deeper.parent.parent}' "
                "(one group of identities) or flatten the tree so each identity folder holds its images"
            )
        raise ReIDError(f"{what} folder '{root}' holds no image files")
    return samples, warnings


def assign_split_cameras(samples, camid):
    """Gives every sample of a camera-less split the same camera id.

    Without cameras the same-camera rule of the protocol cannot apply, so queries get camera 1
    and gallery images camera 2: the rule then removes nothing and every gallery image of the
    query's identity counts as a match.
    """
    return [Sample(s.path, s.pid, camid) for s in samples]


def split_identity_folders(samples, test_fraction, seed):
    """Splits a camera-less folder dataset into disjoint-identity train / query / gallery.

    A seeded permutation holds out `test_fraction` of the identities; of each held-out identity
    with at least two images one image (seeded) becomes the query and the rest the gallery.
    """
    pids = sorted({s.pid for s in samples})
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pids))
    num_test = max(1, round(len(pids) * test_fraction))
    test_pids = {pids[i] for i in order[:num_test]}
    train = [s for s in samples if s.pid not in test_pids]
    query, gallery = [], []
    for pid in sorted(test_pids):
        images = [s for s in samples if s.pid == pid]
        if len(images) < 2:
            gallery.extend(images)
            continue
        pick = int(rng.integers(len(images)))
        query.append(images[pick])
        gallery.extend(images[:pick] + images[pick + 1 :])
    return (
        assign_split_cameras(train, 1),
        assign_split_cameras(query, 1),
        assign_split_cameras(gallery, 2),
    )


class DatasetSplits(NamedTuple):
    train: list
    query: list
    gallery: list
    warnings: list
    identity_names: dict | None = None  # pid -> folder name, for folder-per-identity datasets


def read_market_dataset(data, need_train):
    """Layout market: root/bounding_box_train, query, bounding_box_test (or the data.*_dir folders)."""
    base = Path(data.root) if data.root else None
    folders = {
        "train": data.train_dir or (base / "bounding_box_train" if base else None),
        "query": data.query_dir or (base / "query" if base else None),
        "gallery": data.gallery_dir or (base / "bounding_box_test" if base else None),
    }
    if not need_train:
        folders.pop("train")  # evaluation needs only a query and a gallery
    missing = [name for name, folder in folders.items() if folder is None]
    if missing:
        raise ReIDError(f"no {', '.join(missing)} folder given: set data.root or data.*_dir")
    splits, warnings = {}, []
    for name, folder in folders.items():
        splits[name], folder_warnings = read_market_folder(folder, what=name)
        warnings += folder_warnings
    return DatasetSplits(splits.get("train", []), splits["query"], splits["gallery"], warnings)


def read_folders_dataset(data, need_train):
    """Layout folders: root/<identity>/<images>, split by `split_identity_folders` unless all three
    data.*_dir folders are given (identities matched across them by folder name). An evaluation
    (`need_train` False) needs only query_dir and gallery_dir, and never reads train_dir."""
    folders = {"train": data.train_dir, "query": data.query_dir, "gallery": data.gallery_dir}
    if not need_train:
        folders.pop("train")
    if any(folders.values()):
        missing = [f"data.{what}_dir" for what, folder in folders.items() if not folder]
        if missing:
            raise ReIDError(f"with layout folders give {' and '.join(missing)} too, or data.root alone")
        names = sorted({n for d in folders.values() for n in _identity_names(_require_folder(d, "image"))})
        identity_ids = {name: pid for pid, name in enumerate(names, start=1)}
        splits, warnings = {}, []
        for what, folder in folders.items():
            splits[what], folder_warnings = read_identity_folders(folder, what, identity_ids)
            warnings += folder_warnings
        return DatasetSplits(
            assign_split_cameras(splits.get("train", []), 1),
            assign_split_cameras(splits["query"], 1),
            assign_split_cameras(splits["gallery"], 2),
            warnings,
            {pid: name for name, pid in identity_ids.items()},
        )
    if not data.root:
        raise ReIDError("with layout folders set data.root or all three data.*_dir")
    samples, warnings = read_identity_folders(data.root, "dataset")
    train, query, gallery = split_identity_folders(samples, data.test_fraction, data.split_seed)
    names = dict(enumerate(_identity_names(_require_folder(data.root, "dataset")), start=1))
    return DatasetSplits(train, query, gallery, warnings, names)


def summarize_split(samples):
    """Counts a user wants to see for one split."""
    counts = {}
    for sample in samples:
        counts[sample.pid] = counts.get(sample.pid, 0) + 1
    return {
        "images": len(samples),
        "identities": len([pid for pid in counts if is_person(pid)]),
        "distractor_images": counts.get(DISTRACTOR_PID, 0),
        "junk_images": counts.get(JUNK_PID, 0),
        "cameras": len({s.camid for s in samples}),
        "single_image_identities": len([pid for pid, n in counts.items() if n == 1 and is_person(pid)]),
    }


def require_root_only(data, layout):
    """For layouts whose release fixes the split: data.root is given, and no data.*_dir."""
    given = [f"data.{name}" for name in ("train_dir", "query_dir", "gallery_dir") if getattr(data, name)]
    if given:
        raise ReIDError(
            f"{', '.join(given)} cannot be used with data.layout {layout}, whose release fixes the split: "
            "set data.root only (layout market takes folders of your own)"
        )
    if not data.root:
        raise ReIDError(f"data.layout {layout} needs data.root, the dataset's folder")


def existing_folder(root):
    """data.root as an existing folder, or a one-line error."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ReIDError(f"data.root '{root}' does not exist or is not a folder")
    return root
