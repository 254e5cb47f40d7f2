"""What a run saves while it trains: the embedding tower (last.keras, best.keras) and the
resumable training state (backup/), each file written whole."""

import json
from pathlib import Path

import keras
import numpy as np

from siamese_reid.distribution import batch_norm_unsynchronized
from siamese_reid.files import write_atomically, write_json
from siamese_reid.model.float32 import Float32Mirror
from siamese_reid.runs import BACKUP_STATE, BEST, BEST_MODEL, LAST_MODEL


class EmbeddingCheckpoint(keras.callbacks.Callback):
    """Saves the embedding tower as last.keras every epoch and best.keras on improvement.

    best.keras is chosen on whatever split periodic evaluation scores: the validation split
    when `data.validation_fraction` holds one out, else query/gallery, i.e. test data, and
    then it is for monitoring, not for reporting results.

    The monitored value is `monitor`, a mAP that `PeriodicEvaluation` logs: "val_mAP" or
    "test_mAP" (higher is better; epochs without evaluation are skipped).

    The files hold the tower alone, uncompiled: no optimizer state (the resumable state is in
    backup/) and no reference to this package's loss and metric functions, so
    `keras.saving.load_model` opens them anywhere. A tower trained in mixed precision is saved
    as its float32 copy (`float32_copy`), which evaluates, searches and exports anywhere. Each
    file is written to a temporary file and renamed, so an interruption never leaves a
    truncated model.
    """

    def __init__(self, tower, output_dir, monitor="val_mAP"):
        super().__init__()
        if not monitor.endswith("_mAP"):
            raise ValueError(f"monitor must be a mAP logged by PeriodicEvaluation (val_mAP, test_mAP), got {monitor!r}")
        self.tower = tower
        self.monitor = monitor
        # A second, never-compiled functional model over the same layers and weights.
        self.saved_view = keras.Model(tower.inputs, tower.outputs, name=tower.name)
        # Its copy is made at the first save, inside batch_norm_unsynchronized: plain BatchNorms.
        self.float32_view = Float32Mirror(self.saved_view)
        self.output_dir = Path(output_dir)
        self.state_path = self.output_dir / BEST
        self.best = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self._save(LAST_MODEL)
        key = self.monitor
        value = float(logs.get(key, np.nan))
        if not np.isfinite(value):
            return
        previous = self.best.get(key)
        if previous is None or value > previous:
            self.best = {key: value, "epoch": epoch + 1}
            self._save(BEST_MODEL)
            write_json(self.state_path, self.best)

    def _save(self, name):
        with batch_norm_unsynchronized(self.saved_view):
            write_atomically(self.output_dir / name, self.float32_view.current().save, suffix=".keras")


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """keras.callbacks.BackupAndRestore whose files are written whole.

    Keras overwrites latest.weights.h5 in place, so a kill -9 or power cut during a save left
    a truncated HDF5 file that no resume could open ("bad object header version number"):
    here the weights and then the metadata are each written to a temporary file and renamed.
    """

    def _save_model(self):
        from siamese_reid.files import create_folder

        create_folder(self.backup_dir, exist_ok=True)
        weights_path = Path(self._weights_path)
        write_atomically(weights_path, lambda temporary: self.model.save_weights(str(temporary)), suffix=".weights.h5")
        write_json(self._training_metadata_path, {"epoch": self._current_epoch, "batch": self._last_batch_seen})


def resume_epoch(backup_dir):
    """The epoch a BackupAndRestore backup will resume from (0 when there is none)."""
    metadata = Path(backup_dir) / BACKUP_STATE
    if not metadata.exists():
        return 0
    return int(json.loads(metadata.read_text()).get("epoch", 0))
