"""Data: readers -> splits -> samplers -> tf.data.

Readers, splits, samplers and the demo dataset are pure Python and numpy; the tf.data
pipeline and image ops need TensorFlow and are imported on first use.
"""

from siamese_reid.data.cuhk03 import read_cuhk03_np
from siamese_reid.data.datasets import LAYOUTS, read_dataset, read_extra_training
from siamese_reid.data.demo import ensure_demo_dataset, generate_demo_dataset
from siamese_reid.data.msmt17 import read_msmt17
from siamese_reid.data.readers import (
    DatasetSplits,
    Sample,
    parse_market_name,
    read_identity_folders,
    read_market_folder,
    summarize_split,
)
from siamese_reid.data.samplers import pk_batches, sample_triplets
from siamese_reid.data.scan import scan_samples
from siamese_reid.data.splits import contiguous_labels, person_samples, split_validation

_NEEDS_TENSORFLOW = {
    "SAMPLERS": "pipeline",
    "inference_dataset": "pipeline",
    "training_dataset": "pipeline",
    "steps_per_epoch": "pipeline",
    "decode_image": "images",
    "augment": "images",
}

__all__ = [
    "LAYOUTS",
    "DatasetSplits",
    "Sample",
    "contiguous_labels",
    "ensure_demo_dataset",
    "generate_demo_dataset",
    "parse_market_name",
    "person_samples",
    "pk_batches",
    "read_cuhk03_np",
    "read_dataset",
    "read_extra_training",
    "read_identity_folders",
    "read_market_folder",
    "read_msmt17",
    "sample_triplets",
    "scan_samples",
    "split_validation",
    "summarize_split",
    *sorted(_NEEDS_TENSORFLOW),
]


def __getattr__(name):
    # PEP 562: TensorFlow is imported only when a tf.data function is first asked for.
    if name in _NEEDS_TENSORFLOW:
        import importlib

        return getattr(importlib.import_module(f"siamese_reid.data.{_NEEDS_TENSORFLOW[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
