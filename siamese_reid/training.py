"""Compile and fit with `keras.callbacks`: schedule, checkpoints, resume, NaN guard, evaluation.

No engine of our own: `model.fit` runs the loop; what a re-ID run needs beyond Keras' stock
callbacks is a few small callbacks below.
"""

import dataclasses
import json
import logging
import resource
import time
from pathlib import Path

import keras
import numpy as np
from keras import ops

from siamese_reid.distribution import batch_norm_unsynchronized
from siamese_reid.errors import ReIDError
from siamese_reid.files import write_atomically, write_json
from siamese_reid.model.float32 import Float32Mirror
from siamese_reid.runs import BACKUP_STATE, BEST, BEST_MODEL, LAST_MODEL

logger = logging.getLogger(__name__)


def _cosine_decay(peak, warmup_steps, total_steps, alpha):
    # Keras' own CosineDecay (with `warmup_target`), a function of the optimizer's step counter
    # only, so a resumed run continues exactly where the schedule left off. "constant" is the
    # same schedule with alpha=1: the decayed value is alpha x peak.
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(total_steps - warmup_steps, 1),
        alpha=alpha,
        warmup_target=peak,
        warmup_steps=warmup_steps,
    )


@keras.saving.register_keras_serializable(package="siamese_reid")
class WarmupMultiStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `peak` over `warmup_steps`, times `gamma` for every milestone
    reached: rate(step) = peak x min(step / warmup_steps, 1) x gamma ^ #{m : step >= m}.

    The strong baseline's reference code (WarmupMultiStepLR) steps its rate once per epoch and
    warms up from 0.01 x peak; here the rate changes every step and warms up from 0, as the
    cosine schedule does, so the two schedules differ only in what follows the warm-up.

    Reference: Luo et al., Bag of Tricks, https://arxiv.org/abs/1903.07071 (milestones at
    epochs 40 and 70 of 120, gamma 0.1, 10 warm-up epochs).
    """

    def __init__(self, peak, warmup_steps, milestone_steps, gamma):
        self.peak = peak
        self.warmup_steps = warmup_steps
        self.milestone_steps = tuple(milestone_steps)
        self.gamma = gamma

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = ops.minimum(step / self.warmup_steps, 1.0) if self.warmup_steps else 1.0
        decays = sum((ops.cast(step >= milestone, "float32") for milestone in self.milestone_steps), 0.0)
        return self.peak * warmup * ops.power(self.gamma, decays)

    def get_config(self):
        return {
            "peak": self.peak,
            "warmup_steps": self.warmup_steps,
            "milestone_steps": list(self.milestone_steps),
            "gamma": self.gamma,
        }


# training.schedule -> builder(peak, warmup_steps, total_steps, milestone_steps, gamma)
SCHEDULES = {
    "cosine": lambda peak, warmup, total, milestones, gamma: _cosine_decay(peak, warmup, total, alpha=0.0),
    "constant": lambda peak, warmup, total, milestones, gamma: _cosine_decay(peak, warmup, total, alpha=1.0),
    "multistep": lambda peak, warmup, total, milestones, gamma: WarmupMultiStepDecay(peak, warmup, milestones, gamma),
}


def make_schedule(name, peak, warmup_steps, total_steps, milestone_steps=(), gamma=0.1):
    """Linear warm-up from 0 to `peak` over `warmup_steps`, then cosine decay to 0 at
    `total_steps` ("cosine"), `peak` held ("constant"), or `peak` multiplied by `gamma` at
    each of `milestone_steps` ("multistep"; the other schedules ignore the milestones).
    """
    if name not in SCHEDULES:
        raise ReIDError(f"unknown schedule {name!r}; valid names: {list(SCHEDULES)}")
    return SCHEDULES[name](peak, warmup_steps, total_steps, milestone_steps, gamma)


@keras.saving.register_keras_serializable(package="siamese_reid")
class AdamL2(keras.optimizers.Adam):
    """Adam with weight decay as an L2 penalty: `l2 x variable` is added to every gradient
    before the moment estimates, as torch.optim.Adam(weight_decay=...) does, which the strong
    baseline's reference code trains with (Keras' own `weight_decay` argument decays the
    weights directly instead, which is AdamW).

    Reference: Kingma and Ba, https://arxiv.org/abs/1412.6980; Loshchilov and Hutter
    (decoupled weight decay, and why the two differ), https://arxiv.org/abs/1711.05101
    """

    def __init__(self, learning_rate=0.001, l2=0.0, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.l2 = l2

    def update_step(self, gradient, variable, learning_rate):
        if self.l2:
            gradient = ops.add(ops.cast(gradient, variable.dtype), ops.multiply(self.l2, variable))
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "l2": self.l2}


# training.optimizer -> builder(learning rate or schedule, weight decay)
OPTIMIZERS = {
    # weight decay as an L2 penalty in the gradient (the strong baseline's optimizer)
    "adam": lambda rate, weight_decay: AdamL2(rate, l2=weight_decay),
    # decoupled: each step shrinks the weights by learning rate x weight decay
    "adamw": lambda rate, weight_decay: keras.optimizers.AdamW(rate, weight_decay=weight_decay),
    "sgd": lambda rate, weight_decay: keras.optimizers.SGD(
        rate, momentum=0.9, nesterov=True, weight_decay=weight_decay
    ),
}


def make_optimizer(name, learning_rate, weight_decay):
    """adam | adamw | sgd (momentum 0.9, Nesterov) with a rate or a schedule (`make_schedule`)."""
    if name not in OPTIMIZERS:
        raise ReIDError(f"unknown optimizer {name!r}; valid names: {list(OPTIMIZERS)}")
    return OPTIMIZERS[name](learning_rate, weight_decay)


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
        from siamese_reid import reporting
        from siamese_reid.evaluation.evaluator import evaluate_model

        query, gallery = self.monitored.query, self.monitored.gallery
        # said before scoring: on a large gallery it takes minutes, under a progress bar at 100%
        logger.info(f"\nepoch {epoch + 1}: scoring on {self.monitored.description}... ", extra={"end": ""})
        self.latest = evaluate_model(self.current_tower(), query, gallery, self.image_size, self.settings)
        metrics = reporting.ranking_metrics(self.latest.ranking, len(query), len(gallery), {})
        logger.info(f"rank-1 {reporting.percent(metrics['rank1'])}  mAP {reporting.percent(metrics['mAP'])}")
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


class HistoryLogger(keras.callbacks.CSVLogger):
    """keras.callbacks.CSVLogger with its columns fixed up front, evaluation ones included, and
    epochs numbered from 1 as on the console and in best.json.

    CSVLogger takes its columns from the first epoch's logs; periodic evaluation adds its
    metrics only to the epochs it evaluates, so they are declared here and written as "NA" in
    the other epochs (instead of NaN entries in every epoch's logs, which the progress bar
    would print as if the run had diverged). A file written before epochs were numbered from 1
    (its first epoch is 0) keeps its numbering when a resumed run appends to it.
    """

    def __init__(self, filename, append=False, extra_keys=()):
        super().__init__(filename, append=append)
        self.extra_keys = extra_keys
        self.first_epoch_number = 1
        if append and Path(filename).is_file():
            rows = Path(filename).read_text().splitlines()
            if len(rows) > 1 and rows[1].split(",")[0] == "0":
                self.first_epoch_number = 0

    def on_epoch_end(self, epoch, logs=None):
        if self.keys is None:
            self.keys = sorted(set(logs or {}) | set(self.extra_keys))
        super().on_epoch_end(epoch + self.first_epoch_number, logs)


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
