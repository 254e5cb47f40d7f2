"""Use a model trained with torchreid without training: its checkpoint becomes a run folder.

    from siamese_reid.pretrained import ValidationData, import_torchreid_checkpoint

    result = import_torchreid_checkpoint(
        "osnet_x1_0_msmt17.pth", "osnet_x1_0", "runs/osnet-msmt17",
        ValidationData(root="/data/Market-1501-v15.09.15"),  # optional: fits threshold.json
    )

The run folder holds what export.py, search.py and evaluate.py read from a trained run:
config.yaml (the tower's model section, torchreid's 256x128 input, its evaluation settings),
last.keras (the tower), run_info.json (where the weights came from) and, with validation
data, threshold.json and threshold.png (the "no match" threshold search.py answers with).

The tower reproduces torchreid's test-time feature: it takes RGB images in [0, 255], normalises
them as torchreid does (x / 255, ImageNet mean and std, inside the tower), runs the OSNet and
its 512-d fc layer, and returns that feature L2-normalised.
"""

import dataclasses
import shutil
from pathlib import Path

from siamese_reid import reporting, runs
from siamese_reid.config import config_from_dict, save_config
from siamese_reid.errors import ArgumentError, ReIDError
from siamese_reid.files import create_folder, write_atomically

# torchreid's default input size (height, width): its model zoo is trained and tested at it.
TORCHREID_IMAGE_SIZE = (256, 128)


@dataclasses.dataclass(frozen=True)
class ValidationData:
    """Where the threshold is fitted: a dataset root in `layout` (its query and gallery splits),
    or explicit query and gallery folders of Market-1501-named images."""

    root: str | None = None
    layout: str = "market"
    query_dir: str | None = None
    gallery_dir: str | None = None


@dataclasses.dataclass(frozen=True)
class ImportResult:
    """What an import wrote: the run folder, the checkpoint's facts, and, with validation data,
    the ranking metrics (fractions) and the threshold record."""

    run_dir: Path
    num_classes: int | None
    epoch: int | None
    validation_metrics: dict | None
    threshold: dict | None


def imported_config(architecture, checkpoint, has_feature_layer, validation=None):
    """The config of an imported tower: torchreid's network, input size and test protocol.

    Args:
      architecture: an OSNet variant (model.backbone).
      checkpoint: the checkpoint's path, recorded as model.weights (training from this config
        fine-tunes the checkpoint).
      has_feature_layer: whether the checkpoint has torchreid's fc layer (`fc.*` tensors).
      validation: `ValidationData` or None.
    """
    data = {"image_height": TORCHREID_IMAGE_SIZE[0], "image_width": TORCHREID_IMAGE_SIZE[1]}
    if validation is not None:
        data |= {key: value for key, value in dataclasses.asdict(validation).items() if value is not None}
    return config_from_dict(
        {
            "data": data,
            "model": {
                "backbone": architecture,
                "weights": str(Path(checkpoint).resolve()),
                "freeze_blocks": 0,
                # torchreid's head: global average pooling, then fc (512-d), nothing after
                "pooling": "avg",
                "stripes": 1,
                "feature_layer": "torchreid" if has_feature_layer else "none",
                "embedding_dim": 0,
                "bnneck": False,
            },
            # torchreid's test protocol: euclidean distance, no flipped copy; its published
            # numbers are reproduced with these (evaluate.py --set evaluation.flip_test=true
            # tries the flip)
            "evaluation": {"metric": "euclidean", "flip_test": False},
        }
    )


def _check_architecture(architecture):
    from siamese_reid.model.osnet import OSNET_VARIANTS

    if architecture not in OSNET_VARIANTS:
        raise ReIDError(f"unknown architecture {architecture!r}; torchreid checkpoints of {list(OSNET_VARIANTS)} load")


def import_torchreid_checkpoint(checkpoint, architecture, output_dir, validation=None):
    """Turns a torchreid checkpoint into a new run folder `output_dir`.

    Everything that can be refused is refused before the folder exists (an existing folder, an
    unreadable or mismatched checkpoint, missing validation data); a failure later (an
    unusable validation split, Ctrl-C) removes the folder this call created.

    Args:
      checkpoint: a torchreid `.pth` file (bare state dict or checkpoint dict).
      architecture: its OSNet variant, e.g. "osnet_x1_0".
      output_dir: the run folder to create; must not exist.
      validation: `ValidationData` to fit the "no match" threshold on, or None.

    Returns:
      An `ImportResult`.
    """
    from siamese_reid.data.datasets import read_dataset
    from siamese_reid.model.building import build_tower
    from siamese_reid.model.torchreid_checkpoint import read_torchreid_weights

    output_dir = Path(output_dir)
    if output_dir.exists():
        raise ArgumentError(
            "output_dir", f"'{output_dir}' already exists: choose another {{argument}} (nothing was changed)"
        )
    _check_architecture(architecture)
    weights = read_torchreid_weights(checkpoint)
    has_feature_layer = any(name.startswith("fc.") for name in weights.state_dict)
    config = imported_config(architecture, checkpoint, has_feature_layer, validation)
    if validation is not None:
        read_dataset(config.data, need_train=False)  # a wrong path fails before the folder exists
    tower = build_tower(config)  # reads model.weights, the checkpoint: a mismatch fails here
    run_dir = create_folder(output_dir)
    try:
        return _write_run(run_dir, tower, config, weights, validation is not None)
    except (ReIDError, KeyboardInterrupt):
        shutil.rmtree(run_dir)  # created by this call: holds only its files
        raise


def _write_run(run_dir, tower, config, weights, validate):
    save_config(config, run_dir / runs.CONFIG)
    write_atomically(run_dir / runs.LAST_MODEL, tower.save, suffix=".keras")
    metrics, threshold = _validate(tower, config, run_dir) if validate else (None, None)
    reporting.write_json(run_dir / runs.RUN_INFO, _run_info(tower, config, weights, metrics))
    return ImportResult(run_dir, weights.num_classes, weights.epoch, metrics, threshold)


def _run_info(tower, config, weights, metrics):
    import keras
    import numpy as np

    info = {
        "initialisation": {
            "backbone": config.model.backbone,
            "weights": config.model.weights,
            "parameters": int(tower.count_params()),
            "trainable_parameters": int(sum(np.prod(w.shape) for w in tower.trainable_weights)),
            "keras": keras.__version__,
        },
        "imported_from": {
            "checkpoint": weights.path,
            "format": "torchreid",
            "epoch": weights.epoch,
            "classifier_classes": weights.num_classes,
        },
    }
    if metrics is not None:
        info["validation"] = metrics
    return info


def _validate(tower, config, run_dir):
    """Scores the tower on the validation split and fits threshold.json there."""
    from siamese_reid.data.preparation import prepare_data
    from siamese_reid.evaluation.evaluator import evaluate_model
    from siamese_reid.report import fit_search_threshold

    config, data = prepare_data(config, run_dir, need_train=False)
    evaluation = evaluate_model(tower, data.query, data.gallery, TORCHREID_IMAGE_SIZE, config.evaluation)
    metrics = reporting.ranking_metrics(evaluation.ranking, len(data.query), len(data.gallery), {})
    threshold = fit_search_threshold(evaluation, data.query, data.gallery, config.evaluation, "validation", run_dir)
    return metrics, threshold
