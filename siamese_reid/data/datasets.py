"""From the `data` config section to splits: the reader of each data.layout.

`read_dataset` reads the configured dataset's train / query / gallery splits.
"""

from siamese_reid.data.benchmarks import guess_layout, read_cuhk03_np, read_msmt17
from siamese_reid.data.records import read_folders_dataset, read_market_dataset
from siamese_reid.errors import ReIDError


def _read_market(data, need_train):
    try:
        return read_market_dataset(data, need_train)
    except ReIDError as error:
        layout = guess_layout(data.root) if data.root else None
        if layout is None:
            raise
        raise ReIDError(f"{error}; '{data.root}' looks like data.layout {layout}: set data.layout={layout}") from None


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
