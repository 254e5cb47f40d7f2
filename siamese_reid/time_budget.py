"""`training.time_budget_hours`: fit a new run's epochs to a time budget on the machine at hand.

A recipe's time is its CPU's, not only the recipe's (docs/benchmarks.md): the market1501_cpu
recipe's 32 epochs take 1 h 39 min of one 2-core CPU with AMX and about 5.2 h of train steps on a
2-core Zen 4. With a budget, a new run first times its own train step (the model and batches it will train,
on a throwaway copy), then trains min(training.epochs, the epochs that fit), its warm-up and
cosine decay built for that length, so the run ends within the budget on any machine instead of
being cut off mid-schedule. (A multistep schedule's milestones are epochs of the configured
length: cutting it is refused.) The run folder's config.yaml records the epochs trained, so a
resume continues the same run, and time_budget.json what was timed and decided at its start.

The budget is a prediction made once, before training: a machine that becomes slower later (a
neighbour on a shared VM) makes the run longer, and train.py prints the time left after every
epoch. Reading the dataset before, and the report and test scoring after the last epoch, are not
part of it."""

import dataclasses
import gc
import logging
import math
import time
from typing import NamedTuple

import keras
import numpy as np

from siamese_reid.errors import ReIDError
from siamese_reid.precision import cpu_model
from siamese_reid.run_cost import format_duration

logger = logging.getLogger(__name__)

# Train steps timed after two untimed ones (tracing, the first decodes): about a minute of a
# 2-core CPU at the market1501_cpu recipe's shapes.
MEASURED_STEPS = 20
# Part of the budget kept for what the step time does not include: periodic evaluation (about 3%
# of the market1501_cpu recipe's runs, scoring every 16 epochs; scoring a validation split every
# few epochs can take more, docs/results.md), the first epoch's tracing, checkpoints, and steps
# slower than the median. Sized for epochs of minutes: with epochs of seconds the per-epoch
# checkpoints and scoring outgrow it (the demo ran 27% over 6 minutes, docs/recipes.md).
RESERVE = 0.10


class StepTime(NamedTuple):
    """Median seconds of one train step, with its interquartile range."""

    median: float
    quartiles: tuple[float, float]


class StepTimer(keras.callbacks.Callback):
    """Records how long each train step of `fit` takes."""

    def __init__(self):
        super().__init__()
        self.durations = []
        self.started = None

    def on_train_batch_begin(self, batch, logs=None):
        self.started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.durations.append(time.perf_counter() - self.started)


def time_train_steps(model, dataset, steps=MEASURED_STEPS):
    """The `StepTime` of `steps` steps of model.fit on `dataset` (repeated if shorter) after two
    untimed steps.

    The median, not the mean: a 2-core VM's throughput varies from second to second, and the
    reserve covers the slower steps.
    """
    dataset = dataset.repeat()
    model.fit(dataset.take(2), epochs=1, verbose=0, shuffle=False)
    timer = StepTimer()
    model.fit(dataset.take(steps), epochs=1, verbose=0, shuffle=False, callbacks=[timer])
    durations = np.array(timer.durations)
    quartiles = (float(np.percentile(durations, 25)), float(np.percentile(durations, 75)))
    return StepTime(float(np.median(durations)), quartiles)


def epochs_within_budget(budget_seconds, spent_seconds, epoch_seconds, configured_epochs):
    """The epochs to train: as many epochs of `epoch_seconds` as fit in what is left of the
    budget after `spent_seconds` and the reserve, at most `configured_epochs`."""
    usable = (budget_seconds - spent_seconds) * (1 - RESERVE)
    return min(configured_epochs, max(0, int(usable // epoch_seconds)))


def check_budget_applies(training, strategy):
    """Refuses a budget the run could not keep, before its folder is made."""
    from siamese_reid.distribution import is_multi_worker

    if training.time_budget_hours and is_multi_worker(strategy):
        # each worker would time its own step and could decide another number of epochs
        raise ReIDError(
            "config key 'training.time_budget_hours' needs a single machine: with several workers set it to 0 "
            "and choose training.epochs"
        )


def fit_to_budget(config, train, strategy):
    """The config a new run trains with under `training.time_budget_hours`, and the record of
    the decision (None without a budget).

    Times the train step on a copy of the run's model and batches (`time_a_copy`); the run is
    seeded after it (experiment._train), so it trains exactly as a run given the decided
    `training.epochs` would.
    """
    training = config.training
    if not training.time_budget_hours:
        return config, None
    budget = training.time_budget_hours * 3600
    logger.info(f"time budget {format_duration(budget)}: timing {MEASURED_STEPS} train steps of this machine first")
    started = time.monotonic()
    step_time, steps = time_a_copy(config, train, strategy)
    spent = time.monotonic() - started
    epoch_seconds = steps * step_time.median
    epochs = epochs_within_budget(budget, spent, epoch_seconds, training.epochs)
    _check_decision(training, epochs, epoch_seconds, spent)
    logger.info(
        f"a train step takes {step_time.median:.2f} s here (median of {MEASURED_STEPS}), an epoch of {steps} "
        f"steps about {format_duration(epoch_seconds)}: training {epochs} of the configured {training.epochs} "
        f"epochs, about {format_duration(epochs * epoch_seconds)}"
    )
    decision = {
        "budget_hours": training.time_budget_hours,
        "cpu": cpu_model(),
        "measured_steps": MEASURED_STEPS,
        "step_seconds_median": step_time.median,
        "step_seconds_interquartile": list(step_time.quartiles),
        "measurement_seconds": spent,
        "reserve": RESERVE,
        "steps_per_epoch": steps,
        "predicted_epoch_seconds": epoch_seconds,
        "configured_epochs": training.epochs,
        "epochs": epochs,
        "predicted_training_seconds": epochs * epoch_seconds,
    }
    return dataclasses.replace(config, training=dataclasses.replace(training, epochs=epochs)), decision


def time_a_copy(config, train, strategy, steps=MEASURED_STEPS):
    """(`StepTime` of `steps` steps, batches per epoch) of the model and batches a run of
    `config` trains, timed on a copy that is freed before the run builds its own (its memory
    would count in the run's peak)."""
    from siamese_reid.fitting import build_model_and_stream

    # the last epoch's stream: the sampler draws only the batches timed, not the whole run's
    built = build_model_and_stream(config, train, strategy, first_epoch=config.training.epochs - 1)
    step_time = time_train_steps(built.model, built.dataset, steps)
    steps_per_epoch = built.steps
    del built
    gc.collect()  # Keras models hold reference cycles
    return step_time, steps_per_epoch


def _check_decision(training, epochs, epoch_seconds, spent_seconds):
    """Refuses a budget too short for the warm-up and one epoch more, and a multistep schedule
    cut short (its milestones are epochs of the configured length)."""
    needed = training.warmup_epochs + 1
    if epochs < min(needed, training.epochs):
        hours = (spent_seconds + needed * epoch_seconds / (1 - RESERVE)) / 3600
        raise ReIDError(
            f"config key 'training.time_budget_hours' {training.time_budget_hours:g} fits {epochs} epoch(s) of "
            f"about {format_duration(epoch_seconds)} on this machine, and a run needs {needed} "
            f"({training.warmup_epochs} warm-up and 1 more): give at least {math.ceil(hours * 100) / 100:g}, "
            "or 0 for no budget"
        )
    if training.schedule == "multistep" and epochs < training.epochs:
        raise ReIDError(
            f"config key 'training.time_budget_hours' {training.time_budget_hours:g} fits {epochs} of the "
            f"{training.epochs} epochs, and training.lr_milestones {list(training.lr_milestones)} are epochs of "
            f"the {training.epochs}: use training.schedule cosine with a budget, or set it to 0 and choose "
            "training.epochs and training.lr_milestones"
        )
