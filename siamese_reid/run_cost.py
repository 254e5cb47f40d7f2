"""What a run costs while it trains: the time of each epoch, the time left, the peak memory."""

import json
import logging
import resource
import time
from pathlib import Path

import keras
import numpy as np

from siamese_reid.files import write_json

logger = logging.getLogger(__name__)


def peak_memory_gib():
    """The largest resident memory this process has held so far, in GiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def format_duration(seconds):
    """'42 s', '17 min' or '1 h 05 min'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


class RunClock(keras.callbacks.Callback):
    """Prints, after each epoch, how long it took and how long the run has left, from the mean
    epoch of this session (periodic evaluation included: place it after PeriodicEvaluation), so a
    run of hours says when it will end. A resumed run counts from its first new epoch."""

    def __init__(self, total_epochs):
        super().__init__()
        self.total_epochs = total_epochs
        self.first_epoch = None

    def on_train_begin(self, logs=None):
        self.started = self.epoch_started = time.monotonic()

    def on_epoch_begin(self, epoch, logs=None):
        if self.first_epoch is None:
            self.first_epoch = epoch
        self.epoch_started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        now = time.monotonic()
        epochs_left = self.total_epochs - epoch - 1
        mean_epoch = (now - self.started) / (epoch + 1 - self.first_epoch)
        line = f"epoch {epoch + 1}/{self.total_epochs} took {format_duration(now - self.epoch_started)}"
        if epochs_left:
            left = epochs_left * mean_epoch
            finish = time.strftime("%H:%M", time.localtime(time.time() + left))
            line += f"; about {format_duration(left)} left (done near {finish})"
        logger.info(line)


class RunCostMeter(keras.callbacks.Callback):
    """What the whole run has cost, over all its sessions: training time (periodic scoring
    included), the part of it spent in periodic scoring, and the peak memory of the process that
    trains and scores (the chief's, with several workers).

    A run killed and resumed would otherwise report only its last session. The cost so far is
    written to `path` (the run folder's `runs.RUN_COST`) after each epoch and given back as
    `before` when the run resumes (`cost_so_far`). It is time spent: an epoch that a kill
    interrupted, or finished without its backup, and that the resumed run trains again, counts
    twice. The time between sessions is not counted.

    Args:
      path: the JSON file the cost so far is written to.
      periodic: the run's `PeriodicEvaluation`, whose `seconds` this session spent scoring, or
        None when this process does not score.
      before: what earlier sessions cost (`cost_so_far`), {} for a new run.
    """

    def __init__(self, path, periodic=None, before=None):
        super().__init__()
        self.path = Path(path)
        self.periodic = periodic
        self.before = dict(before or {})
        self.started = time.monotonic()
        self.saved = dict(self.before)  # the cost written last: what history.csv's rows record

    def on_train_begin(self, logs=None):
        self.started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        self.save()

    def save(self):
        """Writes the cost so far, and returns it; fit_run saves once more after fit, whose end
        (the backup's removal, the last checkpoints) is training time too."""
        cost = self.cost()
        write_json(self.path, cost)
        self.saved = cost
        return cost

    def session_seconds(self):
        return time.monotonic() - self.started

    def cost(self):
        """{training_seconds, periodic_evaluation_seconds, peak_memory_gib} of the run so far."""
        scoring = self.periodic.seconds if self.periodic is not None else 0.0
        return {
            "training_seconds": round(self.before.get("training_seconds", 0.0) + self.session_seconds(), 1),
            "periodic_evaluation_seconds": round(self.before.get("periodic_evaluation_seconds", 0.0) + scoring, 1),
            "peak_memory_gib": round(max(self.before.get("peak_memory_gib", 0.0), peak_memory_gib()), 2),
        }


def cost_so_far(run_dir):
    """What the sessions of the run in `run_dir` have cost so far, as `RunCostMeter` wrote it.

    A run folder written before the cost was kept has only history.csv's training time: that
    is taken, with a warning that scoring time and peak memory will be the new session's only.
    """
    from siamese_reid.runs import HISTORY, HISTORY_ELAPSED, RUN_COST, read_history

    path = Path(run_dir) / RUN_COST
    if path.is_file():
        return json.loads(path.read_text())
    elapsed = read_history(Path(run_dir) / HISTORY).get(HISTORY_ELAPSED)
    if elapsed is None or not len(elapsed) or not np.isfinite(elapsed[-1]):
        return {}
    logger.warning(
        f"{RUN_COST} is missing from {run_dir} (a run of an older version): its training time is "
        "taken from history.csv; periodic_evaluation_seconds and peak_memory_gib will cover this session only"
    )
    return {"training_seconds": float(elapsed[-1])}
