"""The callbacks `fit` runs with beyond Keras' stock ones: the NaN guard, periodic evaluation
and the history, with its evaluation columns.

No engine of our own: `model.fit` runs the loop; what a re-ID run needs beyond Keras' stock
callbacks is a few small callbacks: these, the checkpoints (`checkpoints`) and the clock
(`run_cost`). Optimizers and schedules are in `optimizers`.
"""

import csv
import dataclasses
import logging
import re
import time
from pathlib import Path

import keras
import numpy as np

from siamese_reid.model.float32 import Float32Mirror
from siamese_reid.runs import HISTORY_ELAPSED

logger = logging.getLogger(__name__)


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


@dataclasses.dataclass(frozen=True)
class MonitoredSplit:
    """The split periodic evaluation scores: `key` names its scores in the logs ("val" for
    held-out training identities, "test" for query / gallery), `description` in the progress
    line ("validation", "query / gallery (test)")."""

    query: list
    gallery: list
    key: str
    description: str


class PeriodicEvaluation(keras.callbacks.Callback):
    """Scores the tower on the monitored split every `settings.every_n_epochs` epochs and after
    the last one, and adds <key>_rank1 / <key>_mAP / <key>_mINP to those epochs' logs, named
    for the split scored, so the progress bar, history.csv and the plots say which split a
    score comes from. Each evaluation logs one line; the newest `Evaluation` is kept in
    `latest` (the last epoch's is reused for the report).

    It scores the tower's float32 copy, which is what last.keras and best.keras hold: the
    numbers of a run are those of its saved model, whatever the training precision.

    Args:
      tower: the embedding tower being trained.
      monitored: the `MonitoredSplit` scored.
      image_size: (height, width) the tower embeds.
      settings: the evaluation section of the config (`EvaluationConfig`).
      total_epochs: number of epochs of the run.
    """

    def __init__(self, tower, monitored, image_size, settings, total_epochs):
        super().__init__()
        self.tower = tower
        self.inference_tower = Float32Mirror(tower)
        self.monitored = monitored
        self.image_size = image_size
        self.settings = settings
        self.total_epochs = total_epochs
        self.latest = None
        self.seconds = 0.0  # spent scoring, for the report: periodic evaluation must stay cheap

    def on_epoch_end(self, epoch, logs=None):
        is_last = epoch + 1 == self.total_epochs
        every_n_epochs = self.settings.every_n_epochs
        if not is_last and (every_n_epochs == 0 or (epoch + 1) % every_n_epochs):
            return  # no entries: the progress bar shows only what was computed
        started = time.monotonic()
        metrics = self._score(epoch)
        self.seconds += time.monotonic() - started
        if logs is not None:
            keys = evaluation_keys(self.monitored.key)
            logs.update(dict(zip(keys, (metrics[key] for key in RANKING_KEYS), strict=True)))

    def _score(self, epoch):
        from siamese_reid import formatting, reporting
        from siamese_reid.evaluation.evaluator import evaluate_model

        query, gallery = self.monitored.query, self.monitored.gallery
        # said before scoring: on a large gallery it takes minutes, under a progress bar at 100%
        logger.info(f"\nepoch {epoch + 1}: scoring on {self.monitored.description}... ", extra={"end": ""})
        self.latest = evaluate_model(self.current_tower(), query, gallery, self.image_size, self.settings)
        metrics = reporting.ranking_metrics(self.latest.ranking, len(query), len(gallery), {})
        logger.info(f"rank-1 {formatting.percent(metrics['rank1'])}  mAP {formatting.percent(metrics['mAP'])}")
        return metrics

    def current_tower(self):
        """The float32 tower with the trained tower's current weights."""
        return self.inference_tower.current()


RANKING_KEYS = ("rank1", "mAP", "mINP")


def evaluation_keys(split):
    """What PeriodicEvaluation adds to the logs of the epochs it evaluates on `split`."""
    return tuple(f"{split}_{key}" for key in RANKING_KEYS)


def monitored_history_split(history_path, has_validation):
    """ "val" with a validation split, else "test"; a run folder written before scores were
    named for their split keeps "val" for its test scores, so a resumed history.csv keeps one
    set of columns."""
    if not has_validation and Path(history_path).is_file():
        header = Path(history_path).read_text().partition("\n")[0].split(",")
        if "val_mAP" in header:
            return "val"
    return "val" if has_validation else "test"


def _natural_order(key):
    """Numbers in a column name compare as numbers: stripe_id_2_loss before stripe_id_10_loss."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


class HistoryLogger(keras.callbacks.CSVLogger):
    """keras.callbacks.CSVLogger with its columns fixed up front, evaluation ones included, and
    epochs numbered from 1 as on the console and in best.json, and with the run's training time
    at the end of each epoch (`elapsed_seconds`, periodic scoring included), so that learning
    curves can be drawn against wall time.

    The training time is the one the run's `RunCostMeter` (`meter`, placed before this callback)
    wrote to run_cost.json at the same epoch: one clock, so learning curves and the run's cost
    agree (metrics.json's time adds only the end of fit), and a resumed run counts on from the
    time its earlier sessions cost, not the time between sessions.

    CSVLogger takes its columns from the first epoch's logs; periodic evaluation adds its
    metrics only to the epochs it evaluates, so they are declared here and written as "NA" in
    the other epochs (instead of NaN entries in every epoch's logs, which the progress bar
    would print as if the run had diverged).

    A resumed run appends to the file with the file's own columns. A file written before epochs
    were numbered from 1 (its first epoch is 0) keeps its numbering.
    """

    def __init__(self, filename, meter, append=False, extra_keys=()):
        super().__init__(filename, append=append)
        self.meter = meter
        self.extra_keys = extra_keys
        self.first_epoch_number = 1
        self.file_keys = None
        if append and Path(filename).is_file():
            with open(filename, newline="") as handle:
                rows = list(csv.DictReader(handle))
            if rows:
                self.file_keys = [key for key in rows[0] if key != "epoch"]
                self.first_epoch_number = 0 if rows[0]["epoch"] == "0" else 1

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)  # which forgets the columns
        self.keys = self.file_keys

    def on_epoch_end(self, epoch, logs=None):
        # the meter runs before this callback (fitting._callbacks), so `saved` is this epoch's
        logs = {**(logs or {}), HISTORY_ELAPSED: self.meter.saved["training_seconds"]}
        if self.keys is None:
            self.keys = sorted(set(logs) | set(self.extra_keys), key=_natural_order)
        super().on_epoch_end(epoch + self.first_epoch_number, logs)
