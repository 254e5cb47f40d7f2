"""One run's `fit`: the training stream, the compiled model, the callbacks (checkpoints, the
resumable backup, history, periodic evaluation on the chief) and the failures a user can act
on turned into one-line errors.
"""

import logging
import sys
from pathlib import Path
from typing import NamedTuple

from siamese_reid import files
from siamese_reid.data.preparation import report_sampling
from siamese_reid.errors import ReIDError
from siamese_reid.model.building import build_training_model, image_size
from siamese_reid.precision import cpu_model
from siamese_reid.resuming import start_epoch
from siamese_reid.runs import BACKUP, HISTORY, LAST_MODEL, RUN_COST, RUN_INFO, TENSORBOARD

logger = logging.getLogger(__name__)


def fit_run(config, data, run_dir, strategy, resuming, precision):
    """Builds the model the config describes and fits it on `data.train`, writing checkpoints,
    the backup and history.csv into `run_dir`.

    Args:
      data: the run's `PreparedData`; periodic evaluation scores its validation split when
        there is one, else its query / gallery.
      strategy: the run's tf.distribute strategy (`start_distribution`).
      resuming: whether the run continues from its backup.
      precision: the `Precision` the run trains in (`resolve_precision`), set as the policy.

    Returns:
      (the `PeriodicEvaluation` callback, which holds the last evaluation and the float32
      tower, or None on a worker other than the chief; what the run cost: `training_seconds`,
      `periodic_evaluation_seconds` and `peak_memory_gib`, for metrics.json).
    """
    from siamese_reid.distribution import is_chief, is_multi_worker, worker_name
    from siamese_reid.run_cost import RunCostMeter, cost_so_far
    from siamese_reid.training import MonitoredSplit, PeriodicEvaluation, monitored_history_split

    chief = is_chief(strategy)
    report_sampling(data.train, config.training)
    size = image_size(config)
    first_epoch = start_epoch(run_dir, config.training.epochs)
    tower, model, initialisation, dataset, steps = build_model_and_stream(config, data.train, strategy, first_epoch)
    monitored = "validation" if data.has_validation else "query / gallery (test)"
    files.write_json(
        Path(run_dir) / RUN_INFO,
        {
            "initialisation": initialisation,
            "monitored_split": monitored,
            "precision": precision._asdict(),
            "cpu": cpu_model(),  # the latest session's: a recipe's time is its CPU's
        },
    )
    logger.info(
        f"model: {config.model.backbone} ({initialisation['weights']} weights), "
        f"{initialisation['parameters']:,} parameters, {strategy.num_replicas_in_sync} replica(s), "
        f"precision {precision.policy} ({precision.reason})"
    )
    if is_multi_worker(strategy) and not chief:
        logger.info(
            f"{worker_name(strategy)}: training beside the chief, which writes the run folder and scores the model"
        )
    split = monitored_history_split(Path(run_dir) / HISTORY, data.has_validation)
    # Only the chief scores: evaluation embeds on its default device, outside the strategy, with
    # no collective, so the other workers never wait on it.
    periodic = None
    if chief:
        scored = MonitoredSplit(
            data.validation_query if data.has_validation else data.query,
            data.validation_gallery if data.has_validation else data.gallery,
            split,
            monitored,
        )
        periodic = PeriodicEvaluation(tower, scored, size, config.evaluation, config.training.epochs)
    logger.info(f"training {config.training.epochs} epochs of {steps} batches ({config.training.sampler} sampler)")
    # the whole run's cost, earlier sessions included when it resumes
    meter = RunCostMeter(Path(run_dir) / RUN_COST, periodic, cost_so_far(run_dir) if resuming else {})
    callbacks = _callbacks(tower, run_dir, periodic, meter, resuming, split, config.training.epochs)
    _fit(model, dataset, steps, config.training.epochs, callbacks, run_dir)
    cost = meter.save()
    elapsed, scoring = cost["training_seconds"], cost["periodic_evaluation_seconds"]
    sessions = f" ({meter.session_seconds():.0f} s in this session)" if resuming else ""
    logger.info(
        f"training took {elapsed:.0f} s{sessions}, of which periodic evaluation {scoring:.0f} s "
        f"({100 * scoring / max(elapsed, 1e-9):.1f}%); peak memory {cost['peak_memory_gib']:.2f} GiB"
    )
    return periodic, cost


class ModelAndStream(NamedTuple):
    tower: object  # the embedding tower, whose weights are the ones trained
    model: object  # the compiled model `fit` trains
    initialisation: dict  # how the model was initialised (run_info.json)
    dataset: object  # the batches from the first epoch asked for to the last
    steps: int  # batches per epoch


def build_model_and_stream(config, train, strategy, first_epoch=0):
    """The model the config describes and the batches `fit` trains it on from `first_epoch`
    (0-based), as a run builds them: a `ModelAndStream`."""
    from siamese_reid.data.pipeline import steps_per_epoch, training_dataset
    from siamese_reid.distribution import split_by_data
    from siamese_reid.model.training_model import fit_batches

    steps = steps_per_epoch(config.training, len(train))
    num_identities = len({sample.pid for sample in train})
    tower, model, initialisation = build_training_model(config, steps, strategy, num_identities)
    dataset = training_dataset(train, config.training, config.augment, image_size(config), first_epoch, steps)
    return ModelAndStream(tower, model, initialisation, split_by_data(fit_batches(dataset, model)), steps)


def _callbacks(tower, run_dir, periodic, meter, resuming, split, total_epochs):
    """The callbacks of `fit`; without periodic evaluation when `periodic` is None (a worker
    other than the chief: every worker runs the others, which read the same variables). `meter`
    is the run's `RunCostMeter`; `split` ("val" or "test") names the scores of periodic
    evaluation."""
    import keras

    from siamese_reid.checkpoints import AtomicBackupAndRestore, EmbeddingCheckpoint
    from siamese_reid.run_cost import RunClock
    from siamese_reid.training import HistoryLogger, StopOnNonFiniteLoss, evaluation_keys

    evaluation = [] if periodic is None else [periodic]
    return [
        # first, so that an epoch's summary line is printed before its "epoch N: scoring..." line
        keras.callbacks.ProgbarLogger(),
        StopOnNonFiniteLoss(),
        *evaluation,
        RunClock(total_epochs),  # after scoring, whose time counts in what is left
        EmbeddingCheckpoint(tower, run_dir, monitor=f"{split}_mAP"),
        meter,  # after scoring, whose time it counts; before HistoryLogger, which writes its time
        AtomicBackupAndRestore(str(Path(run_dir) / BACKUP)),
        HistoryLogger(str(Path(run_dir) / HISTORY), meter, append=resuming, extra_keys=evaluation_keys(split)),
        keras.callbacks.TensorBoard(str(Path(run_dir) / TENSORBOARD), write_graph=False),
    ]


def _fit(model, dataset, steps, epochs, callbacks, run_dir):
    """model.fit, with the failures a user can act on turned into one-line errors."""
    import tensorflow as tf

    from siamese_reid.training import NonFiniteLossError

    try:
        model.fit(
            dataset,
            epochs=epochs,
            steps_per_epoch=steps,
            callbacks=callbacks,
            verbose=1 if sys.stdout.isatty() else 2,
            shuffle=False,  # batches are already drawn by the seeded sampler
        )
    except NonFiniteLossError as error:
        raise ReIDError(
            f"{error}. Training stopped; the last good model is {Path(run_dir) / LAST_MODEL} "
            "and the run can be resumed after lowering training.learning_rate "
            "(or using loss.soft / a larger warm-up)"
        ) from None
    except tf.errors.ResourceExhaustedError:
        raise ReIDError("out of memory: lower training.identities_per_batch or data.image_height/width") from None
