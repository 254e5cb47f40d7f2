"""train.py: train the Siamese embedding model, then evaluate it and draw the report.

An epoch is `steps_per_epoch` batches; by default (0) as many as one pass over the training
images needs (P x K images a batch, or 3 x triplet_batch_size). Batches of every epoch are
drawn from (seed, epoch), so a resumed run sees the same batches an uninterrupted one would.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from siamese_reid.cli.common import (
    add_common_arguments,
    config_from_arguments,
    exit_on_user_error,
    image_size,
    new_run_dir,
    prepare_data,
    save_run_config,
    tower_spec,
)
from siamese_reid.cli.evaluate import write_report
from siamese_reid.errors import ReIDError


def _steps_per_epoch(training, num_train_images):
    if training.steps_per_epoch:
        return training.steps_per_epoch
    images_per_batch = (
        training.identities_per_batch * training.images_per_identity
        if training.sampler == "pk"
        else 3 * training.triplet_batch_size
    )
    return max(1, num_train_images // images_per_batch)


def build_training_dataset(train, training, augment, input_size, start_epoch, steps):
    """The tf.data stream of every batch from `start_epoch` to the last epoch."""
    from siamese_reid.data import samplers
    from siamese_reid.data.pipeline import pk_dataset, triplet_dataset

    paths = [s.path for s in train]
    pids = np.array([s.pid for s in train])
    camids = np.array([s.camid for s in train])
    epochs = range(start_epoch, training.epochs)
    if training.sampler == "pk":
        batches = np.concatenate(
            [
                samplers.pk_batches(
                    pids, training.identities_per_batch, training.images_per_identity, steps, training.seed, epoch
                )
                for epoch in epochs
            ]
        )
        start = start_epoch * steps * batches.shape[1]  # images streamed before start_epoch
        return pk_dataset(paths, pids, batches, input_size, augment, training.seed, start)
    count = steps * training.triplet_batch_size
    triplets = np.concatenate([samplers.sample_triplets(pids, camids, count, training.seed, e) for e in epochs])
    start = start_epoch * count * 3
    return triplet_dataset(
        paths, pids, triplets, training.triplet_batch_size, input_size, augment, training.seed, start
    )


def _report_sampling(train, training):
    from siamese_reid.data import samplers

    pids = [s.pid for s in train]
    singles = samplers.singleton_identities(pids)
    if singles:
        print(f"note: {len(singles)} training identities have a single image and are never anchors")
    if training.sampler == "pk":
        short = samplers.identities_below(pids, training.images_per_identity)
        if short:
            print(
                f"note: {len(short)} identities have fewer than K={training.images_per_identity} "
                "images and are sampled with replacement"
            )


def _build_model(config, steps, strategy):
    """Tower, the model fit trains, and the record of how it was initialised."""
    import keras

    from siamese_reid.losses import build_loss, make_triplet_metrics
    from siamese_reid.model.embedding import build_embedding_model
    from siamese_reid.model.siamese import SiameseModel
    from siamese_reid.training import make_optimizer

    training, loss = config.training, config.loss
    with strategy.scope():
        tower = build_embedding_model(tower_spec(config))
        if training.sampler == "triplet":
            model = SiameseModel(tower, branches=config.model.branches)
            # Build the subclassed model now: BackupAndRestore needs its variables before fit.
            blank = np.zeros((1, config.data.image_height, config.data.image_width, 3), "float32")
            model((blank, blank, blank))
            loss_object = build_loss("triplet", loss.margin, loss.soft, loss.distance_metric)
        else:
            if loss.name == "triplet":
                raise ReIDError("loss.name 'triplet' needs training.sampler: triplet")
            model = tower
            loss_object = build_loss(loss.name, loss.margin, loss.soft, loss.distance_metric)
        optimizer = make_optimizer(
            training.optimizer,
            training.learning_rate,
            training.weight_decay,
            training.warmup_epochs * steps,
            training.epochs * steps,
            training.schedule,
        )
        model.compile(
            optimizer=optimizer,
            loss=loss_object,
            metrics=make_triplet_metrics(loss.distance_metric, loss.margin),
            jit_compile=training.xla,
        )
    initialisation = {
        "backbone": config.model.backbone,
        "weights": config.model.weights,
        "parameters": int(tower.count_params()),
        "trainable_parameters": int(sum(np.prod(w.shape) for w in tower.trainable_weights)),
        "keras": keras.__version__,
    }
    return tower, model, initialisation


def _callbacks(tower, run_dir, evaluate, config, resuming):
    import keras

    from siamese_reid.training import EmbeddingCheckpoint, PeriodicEvaluation, StopOnNonFiniteLoss

    return [
        StopOnNonFiniteLoss(),
        PeriodicEvaluation(evaluate, config.evaluation.every_n_epochs, config.training.epochs),
        EmbeddingCheckpoint(tower, run_dir),
        keras.callbacks.BackupAndRestore(str(Path(run_dir) / "backup")),
        keras.callbacks.CSVLogger(str(Path(run_dir) / "history.csv"), append=resuming),
        keras.callbacks.TensorBoard(str(Path(run_dir) / "tensorboard"), write_graph=False),
    ]


def run_training(config, run_dir, resuming=False):
    """Trains, evaluates and reports into `run_dir`; returns the final metrics."""
    import keras
    import tensorflow as tf

    from siamese_reid import reporting
    from siamese_reid.training import NonFiniteLossError, make_strategy, resume_epoch

    keras.utils.set_random_seed(config.training.seed)
    keras.mixed_precision.set_global_policy(config.training.precision)
    config, splits = prepare_data(config, run_dir)
    save_run_config(config, run_dir)
    _report_sampling(splits.train, config.training)
    input_size = image_size(config)
    steps = _steps_per_epoch(config.training, len(splits.train))
    strategy = make_strategy(config.training.strategy)
    tower, model, initialisation = _build_model(config, steps, strategy)
    (Path(run_dir) / "run_info.json").write_text(json.dumps({"initialisation": initialisation}, indent=2))
    print(
        f"model: {config.model.backbone} ({initialisation['weights']} weights), "
        f"{initialisation['parameters']:,} parameters, {strategy.num_replicas_in_sync} replica(s)"
    )
    start_epoch = resume_epoch(Path(run_dir) / "backup")
    if start_epoch >= config.training.epochs:
        raise ReIDError(f"run '{run_dir}' already finished its {config.training.epochs} epochs")
    if start_epoch:
        print(f"resuming from the end of epoch {start_epoch}")
    dataset = build_training_dataset(splits.train, config.training, config.augment, input_size, start_epoch, steps)

    latest = {}  # the newest Evaluation: the last epoch's is the final report's

    def evaluate_now():
        from siamese_reid.evaluation.evaluator import evaluate_model

        latest["evaluation"] = evaluate_model(tower, splits.query, splits.gallery, input_size, config.evaluation)
        return reporting.ranking_metrics(latest["evaluation"].ranking, len(splits.query), len(splits.gallery), {})

    print(f"training {config.training.epochs} epochs of {steps} batches ({config.training.sampler} sampler)")
    started = time.time()
    try:
        model.fit(
            dataset,
            epochs=config.training.epochs,
            steps_per_epoch=steps,
            callbacks=_callbacks(tower, run_dir, evaluate_now, config, resuming),
            verbose=1 if _is_interactive() else 2,
            shuffle=False,  # batches are already drawn by the seeded sampler
        )
    except NonFiniteLossError as error:
        raise ReIDError(
            f"{error}. Training stopped; the last good model is {Path(run_dir) / 'last.keras'} "
            "and the run can continue with --resume after lowering training.learning_rate "
            "(or using loss.soft / a larger warm-up)"
        ) from None
    except tf.errors.ResourceExhaustedError:
        raise ReIDError("out of memory: lower training.identities_per_batch or data.image_height/width") from None
    elapsed = time.time() - started
    print(f"training took {elapsed:.0f} s")
    reporting.plot_training_curves(reporting.read_history(Path(run_dir) / "history.csv"), run_dir)
    # The reported numbers are the last epoch's (PeriodicEvaluation always scores the last
    # epoch, so its evaluation is reused): best.keras is chosen on query/gallery, which is the
    # test set, so scoring it would report a model selected on its own test data.
    extra = {"training_seconds": elapsed}
    return write_report(latest["evaluation"], splits.query, splits.gallery, config.evaluation, run_dir, extra)


def _is_interactive():
    return sys.stdout.isatty()


@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser(description="Train a Siamese re-ID embedding model with triplet loss.")
    add_common_arguments(parser)
    parser.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an interrupted run")
    arguments = parser.parse_args(argv)
    if arguments.resume:
        run_dir = Path(arguments.resume)
        if not (run_dir / "config.yaml").is_file():
            raise ReIDError(f"cannot resume: '{run_dir}' has no config.yaml (not a run folder)")
        if (run_dir / "metrics.json").is_file() and not (run_dir / "backup").exists():
            raise ReIDError(f"cannot resume: run '{run_dir}' already finished (see its metrics.json)")
        config = config_from_arguments(arguments, base_config_path=run_dir / "config.yaml")
    else:
        config = config_from_arguments(arguments)
        output_dir = arguments.output_dir or config.output.dir
        run_dir = new_run_dir(output_dir, config.output.run_name)
        if (run_dir / "config.yaml").exists():
            raise ReIDError(
                f"run folder '{run_dir}' already holds a run: use --resume {run_dir} or another output.run_name"
            )
    print(f"run folder: {run_dir}")
    run_training(config, run_dir, resuming=bool(arguments.resume))
    print(f"results written to {run_dir}")
    return 0
