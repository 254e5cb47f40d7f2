"""`training.time_budget_hours`: fit a new run's epochs to a time budget on the machine at hand.

A recipe's time is its CPU's, not only the recipe's (docs/benchmarks.md): the market1501_cpu
recipe's 32 epochs take 1 h 39 min of one 2-core CPU with AMX and about 5 h of a 2-core Zen 4.
With a budget, a new run first times its own train step (the model and batches it will train,
on a throwaway copy), then trains min(training.epochs, the epochs that fit) with its learning
rate schedule fitted to that length, so the run ends within the budget on any machine instead of
being cut off mid-schedule. The run folder's config.yaml records the epochs trained, so a resume
continues the same run, and time_budget.json what was measured and decided.

The budget is a prediction made once, before training: a machine that becomes slower later (a
neighbour on a shared VM) makes the run longer, and train.py prints the time left after every
epoch. Reports and test scoring after the last epoch are not part of it.
"""

import logging
import time
from typing import NamedTuple

import keras
import numpy as np

from siamese_reid.errors import ReIDError
from siamese_reid.run_cost import format_duration

logger = logging.getLogger(__name__)

# Train steps timed after two untimed ones (tracing, the first decodes): about a minute of a
# 2-core CPU at the market1501_cpu recipe's shapes.
MEASURED_STEPS = 20
# Part of the budget kept for what the step time does not include: periodic evaluation (under 5%
# of a run, docs/results.md), the first epoch's tracing, checkpoints, and steps slower than the
# median.
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

    def on_train_batch_begin(self, batch, logs=None):
        self.started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.durations.append(time.perf_counter() - self.started)


def time_train_steps(model, dataset, steps=MEASURED_STEPS):
    """The `StepTime` of `steps` steps of model.fit on `dataset` after two untimed steps.

    The median, not the mean: a 2-core VM's throughput varies from second to second, and the
    reserve covers the slower steps.
    """
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


def fit_to_budget(config, train, strategy):
    """The config a new run trains with under `training.time_budget_hours`, and the record of
    the decision (None without a budget).

    Times the train step on a copy of the run's model and batches (`fitting.
    build_model_and_stream`), then re-seeds, so the run trains exactly as a run given the
    decided `training.epochs` would.
    """
    import dataclasses

    from siamese_reid.distribution import is_multi_worker
    from siamese_reid.fitting import build_model_and_stream
    from siamese_reid.precision import cpu_model

    training = config.training
    if not training.time_budget_hours:
        return config, None
    if is_multi_worker(strategy):
        # each worker would time its own step and could decide another number of epochs
        raise ReIDError(
            "config key 'training.time_budget_hours' needs a single machine: with several workers set training.epochs"
        )
    started = time.monotonic()
    _, model, _, dataset, steps = build_model_and_stream(config, train, strategy)
    step_time = time_train_steps(model, dataset.repeat())
    spent = time.monotonic() - started
    keras.utils.set_random_seed(training.seed)  # as if nothing had been drawn for the copy
    budget = training.time_budget_hours * 3600
    epoch_seconds = steps * step_time.median
    epochs = epochs_within_budget(budget, spent, epoch_seconds, training.epochs)
    if epochs == 0 or (epochs < training.epochs and epochs <= training.warmup_epochs):
        raise ReIDError(
            f"config key 'training.time_budget_hours' {training.time_budget_hours:g} fits {epochs} epoch(s) "
            f"of about {format_duration(epoch_seconds)} on this machine, no more than the "
            f"{training.warmup_epochs} warm-up epoch(s): give more hours or set training.epochs"
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
    logger.info(
        f"time budget {format_duration(budget)}: a train step takes {step_time.median:.2f} s here "
        f"(median of {MEASURED_STEPS}), an epoch of {steps} steps about {format_duration(epoch_seconds)}; "
        f"training {epochs} of the configured {training.epochs} epochs, about "
        f"{format_duration(epochs * epoch_seconds)}"
    )
    return dataclasses.replace(config, training=dataclasses.replace(training, epochs=epochs)), decision
