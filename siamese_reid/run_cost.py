"""What a run costs while it trains: the time of each epoch, the time left, the peak memory."""

import json
import logging
import resource
import time
from pathlib import Path

import keras

from siamese_reid.files import create_folder, write_json

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


COST_SO_FAR = "run_cost.json"  # in the run's backup folder: what the sessions before this one cost


class RunCostMeter(keras.callbacks.Callback):
    """What the whole run has cost, over all its sessions: training time (periodic scoring
    included), the part spent in periodic scoring, and the peak memory of any session.

    A run killed and resumed would otherwise report only its last session. The cost so far is
    written to the backup folder after each epoch (place this callback before the backup, so the
    folder holds it with the epoch it resumes from), and read back when the run resumes; the
    time between sessions is not training.

    Args:
      backup_dir: the run's backup folder (`runs.BACKUP`).
      periodic: the run's `PeriodicEvaluation`, whose `seconds` this session spent scoring, or
        None when this process does not score.
    """

    def __init__(self, backup_dir, periodic=None):
        super().__init__()
        self.path = Path(backup_dir) / COST_SO_FAR
        self.periodic = periodic
        self.before = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.started = time.monotonic()

    def on_train_begin(self, logs=None):
        self.started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        create_folder(self.path.parent, exist_ok=True)
        write_json(self.path, self.cost())

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
