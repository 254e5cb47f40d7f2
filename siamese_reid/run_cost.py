"""What a run costs while it trains: the time of each epoch, the time left, the peak memory."""

import logging
import resource
import time

import keras

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
