"""Compile and fit with `keras.callbacks`: schedule, checkpoints, resume, NaN guard, evaluation.

No engine of our own: `model.fit` runs the loop; what a re-ID run needs beyond Keras' stock
callbacks is three small callbacks below.
"""

import json
from pathlib import Path

import keras
import numpy as np

from siamese_reid.distribution import batch_norm_unsynchronized
from siamese_reid.errors import ReIDError
from siamese_reid.files import write_atomically, write_json


def make_schedule(name, peak, warmup_steps, total_steps):
    """Linear warm-up from 0 to `peak` over `warmup_steps`, then cosine decay to 0 at
    `total_steps` ("cosine") or `peak` held ("constant").

    Keras' own `CosineDecay` (with `warmup_target`), a function of the optimizer's step counter
    only, so a resumed run continues exactly where the schedule left off. "constant" is the
    same schedule with `alpha=1`: the decayed value is alpha x peak.
    """
    if name not in SCHEDULES:
        raise ReIDError(f"unknown schedule {name!r}; valid names: {list(SCHEDULES)}")
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(total_steps - warmup_steps, 1),
        alpha=SCHEDULES[name],
        warmup_target=peak,
        warmup_steps=warmup_steps,
    )


# training.schedule -> CosineDecay's alpha (the final fraction of the peak rate)
SCHEDULES = {"cosine": 0.0, "constant": 1.0}

# training.optimizer -> builder(learning rate or schedule, weight decay)
OPTIMIZERS = {
    "adam": lambda rate, weight_decay: keras.optimizers.Adam(rate),
    "adamw": lambda rate, weight_decay: keras.optimizers.AdamW(rate, weight_decay=weight_decay),
    "sgd": lambda rate, weight_decay: keras.optimizers.SGD(
        rate, momentum=0.9, nesterov=True, weight_decay=weight_decay
    ),
}


def make_optimizer(name, learning_rate, weight_decay, warmup_steps, total_steps, schedule):
    """adam | adamw | sgd (momentum 0.9, Nesterov) with the warm-up schedule."""
    if name not in OPTIMIZERS:
        raise ReIDError(f"unknown optimizer {name!r}; valid names: {list(OPTIMIZERS)}")
    return OPTIMIZERS[name](make_schedule(schedule, learning_rate, warmup_steps, total_steps), weight_decay)


# training.precision: the Keras mixed-precision policies offered
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; raised from inside fit to stop before any save."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training the moment the loss is NaN/inf.

    Raising (rather than setting `stop_training` like keras.callbacks.TerminateOnNaN) ends
    `fit` before `on_epoch_end`, so no checkpoint or backup is ever written with NaN weights:
    the last good ones stay on disk.
    """

    def __init__(self):
        super().__init__()
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            raise NonFiniteLossError(f"the loss became {float(loss)} at epoch {self.epoch + 1}, batch {batch + 1}")


class PeriodicEvaluation(keras.callbacks.Callback):
    """Adds val_rank1 / val_mAP / val_mINP to the epoch logs every `every_n_epochs` epochs.

    Args:
      evaluate: function of the 0-based epoch returning a metrics dict (rank1, mAP, mINP);
        it reports the result itself.
      every_n_epochs: evaluation period; the last epoch is always evaluated.
      total_epochs: number of epochs of the run.
    """

    def __init__(self, evaluate, every_n_epochs, total_epochs):
        super().__init__()
        self.evaluate = evaluate
        self.every_n_epochs = every_n_epochs
        self.total_epochs = total_epochs

    def on_epoch_end(self, epoch, logs=None):
        keys = ("rank1", "mAP", "mINP")
        is_last = epoch + 1 == self.total_epochs
        if not is_last and (self.every_n_epochs == 0 or (epoch + 1) % self.every_n_epochs):
            return  # no val_* entries: the progress bar shows only what was computed
        metrics = self.evaluate(epoch)
        if logs is not None:
            logs.update({f"val_{key}": metrics[key] for key in keys})


# What PeriodicEvaluation adds to the logs of the epochs it evaluates.
EVALUATION_KEYS = ("val_rank1", "val_mAP", "val_mINP")


class HistoryLogger(keras.callbacks.CSVLogger):
    """keras.callbacks.CSVLogger with its columns fixed up front, evaluation ones included.

    CSVLogger takes its columns from the first epoch's logs; periodic evaluation adds its
    metrics only to the epochs it evaluates, so they are declared here and written as "NA" in
    the other epochs (instead of NaN entries in every epoch's logs, which the progress bar
    would print as if the run had diverged).
    """

    def __init__(self, filename, append=False, extra_keys=EVALUATION_KEYS):
        super().__init__(filename, append=append)
        self.extra_keys = extra_keys

    def on_epoch_end(self, epoch, logs=None):
        if self.keys is None:
            self.keys = sorted(set(logs or {}) | set(self.extra_keys))
        super().on_epoch_end(epoch, logs)


class EmbeddingCheckpoint(keras.callbacks.Callback):
    """Saves the embedding tower as last.keras every epoch and best.keras on improvement.

    best.keras is chosen on whatever split periodic evaluation scores: the validation split
    when `data.validation_fraction` holds one out, else query/gallery, i.e. test data, and
    then it is for monitoring, not for reporting results.

    The monitored value is `monitor`: "val_mAP" (higher is better; epochs without evaluation
    are skipped) with `PeriodicEvaluation`, else "loss" (lower is better).

    The files hold the tower alone, uncompiled: no optimizer state (the resumable state is in
    backup/) and no reference to this package's loss and metric functions, so
    `keras.saving.load_model` opens them anywhere. Each is written to a temporary file and
    renamed, so an interruption never leaves a truncated model.
    """

    def __init__(self, tower, output_dir, monitor="loss"):
        super().__init__()
        self.tower = tower
        self.monitor = monitor
        # A second, never-compiled functional model over the same layers and weights.
        self.saved_view = keras.Model(tower.inputs, tower.outputs, name=tower.name)
        self.output_dir = Path(output_dir)
        self.state_path = self.output_dir / "best.json"
        self.best = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self._save("last.keras")
        key, sign = self.monitor, (1.0 if self.monitor.startswith("val_") else -1.0)
        value = float(logs.get(key, np.nan))
        if not np.isfinite(value):
            return
        previous = self.best.get(key)
        if previous is None or sign * value > sign * previous:
            self.best = {key: value, "epoch": epoch + 1}
            self._save("best.keras")
            write_json(self.state_path, self.best)

    def _save(self, name):
        with batch_norm_unsynchronized(self.saved_view):
            write_atomically(self.output_dir / name, self.saved_view.save, suffix=".keras")


def resume_epoch(backup_dir):
    """The epoch a BackupAndRestore backup will resume from (0 when there is none)."""
    metadata = Path(backup_dir) / "training_metadata.json"
    if not metadata.exists():
        return 0
    return int(json.loads(metadata.read_text()).get("epoch", 0))
