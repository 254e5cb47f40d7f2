"""From the `data` config section to splits: the reader of each data.layout, and more datasets
for training.

`read_dataset` reads the configured dataset's train / query / gallery splits. `read_extra_training`
reads the training splits of the datasets listed in data.extra_train, each with its identities
and cameras moved above every number used before it, so that two datasets' person 1 (or camera 1)
never merge; evaluation stays on the main dataset's query and gallery.
"""

import dataclasses
from pathlib import Path
from typing import NamedTuple

from siamese_reid.data.cuhk03 import CUHK03_SUBSETS, read_cuhk03_np
from siamese_reid.data.msmt17 import MSMT17_VERSIONS, read_msmt17
from siamese_reid.data.readers import (
    assign_split_cameras,
    read_folders_dataset,
    read_identity_folders,
    read_market_dataset,
)
from siamese_reid.errors import ReIDError
from siamese_reid.evaluation.protocol import is_person


def _read_market(data, need_train):
    try:
        return read_market_dataset(data, need_train)
    except ReIDError as error:
        layout = guess_layout(data.root) if data.root else None
        if layout is None:
            raise
        raise ReIDError(f"{error}; '{data.root}' looks like data.layout {layout}: set data.layout={layout}") from None


def guess_layout(root):
    """The layout ("msmt17" or "cuhk03_np") whose release `root` looks like, else None (for hints)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return None
    if (root / "list_train.txt").is_file() or any((root / version).is_dir() for version in MSMT17_VERSIONS):
        return "msmt17"
    if any((root / subset / "bounding_box_train").is_dir() for subset in CUHK03_SUBSETS):
        return "cuhk03_np"
    return None


# data.layout -> reader(data section, need_train) -> DatasetSplits
LAYOUTS = {
    "market": _read_market,
    "folders": read_folders_dataset,
    "msmt17": read_msmt17,
    "cuhk03_np": read_cuhk03_np,
}


def read_dataset(data, need_train=True):
    """Reads the three splits of a dataset; explicit *_dir settings override `root`.

    Args:
      data: the `DataConfig` section. With layout "market", root holds bounding_box_train/,
        query/ and bounding_box_test/; with "folders", one folder per identity, split by
        `split_identity_folders` (test_fraction, split_seed) unless all three *_dir are given;
        "msmt17" and "cuhk03_np" read those releases (see `benchmarks`).
      need_train: when False (evaluation), a missing train split is not an error.

    Returns:
      `DatasetSplits`, whose `warnings` list the files skipped while reading.
    """
    if data.layout not in LAYOUTS:
        raise ReIDError(f"unknown data.layout {data.layout!r}; valid names: {list(LAYOUTS)}")
    return LAYOUTS[data.layout](data, need_train)


class TrainingSet(NamedTuple):
    name: str  # the dataset's folder name, for the summary
    samples: list  # its training split, identities and cameras already numbered apart
    warnings: list


def dataset_name(data):
    """The main dataset's name in summaries: its folder's name."""
    folder = data.root or data.train_dir or data.query_dir
    return Path(folder).expanduser().resolve().name if folder else "dataset"


def _largest(numbers):
    return max(numbers, default=0)


def _training_split(data, entry):
    """The training images of one data.extra_train entry; a folder-per-identity dataset has no
    test split of its own, so all of its identities train."""
    if entry.layout == "folders":
        samples, warnings = read_identity_folders(entry.root, "training")
        return assign_split_cameras(samples, 1), warnings
    empty = {"train_dir": None, "query_dir": None, "gallery_dir": None, "extra_train": ()}
    splits = read_dataset(dataclasses.replace(data, root=entry.root, layout=entry.layout, **empty))
    return splits.train, splits.warnings


def read_extra_training(data, main):
    """Reads the training splits of data.extra_train, numbered apart from `main` and each other.

    Each dataset's identities (pid > 0) and cameras are shifted by the largest identity and
    camera number of every dataset read before it (the main dataset's query and gallery
    included), so no two datasets share a number. Junk (-1) and distractors (0) keep theirs and
    are dropped from training as usual. The dataset options of `data` (cuhk03_subset,
    msmt17_val) apply to every entry.

    Args:
      data: the `DataConfig` section.
      main: the main dataset's `DatasetSplits`.

    Returns:
      list of `TrainingSet`, in data.extra_train's order.
    """
    main_samples = [s for split in (main.train, main.query, main.gallery) for s in split]
    pid_offset = _largest(s.pid for s in main_samples)
    camid_offset = _largest(s.camid for s in main_samples)
    seen_paths = {s.path for s in main_samples}
    training_sets = []
    for index, entry in enumerate(data.extra_train):
        key = f"data.extra_train[{index}]"
        try:
            samples, warnings = _training_split(data, entry)
        except ReIDError as error:
            raise ReIDError(f"{key}: {error}") from None
        # the same files twice would be one person under two numbers, or test images trained on
        repeated = next((s.path for s in samples if s.path in seen_paths), None)
        if repeated is not None:
            raise ReIDError(
                f"{key} ({entry.root}) holds images already read (e.g. '{repeated}'): list each dataset once, "
                "and never the main dataset"
            )
        seen_paths.update(s.path for s in samples)
        shifted = [
            s._replace(pid=s.pid + pid_offset if is_person(s.pid) else s.pid, camid=s.camid + camid_offset)
            for s in samples
        ]
        training_sets.append(TrainingSet(Path(entry.root).expanduser().resolve().name, shifted, warnings))
        pid_offset = max(pid_offset, _largest(s.pid for s in shifted))
        camid_offset = max(camid_offset, _largest(s.camid for s in shifted))
    return training_sets
