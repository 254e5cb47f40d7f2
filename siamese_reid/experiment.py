"""The workflow as library functions: prepare data -> build model and loss -> fit -> evaluate
-> report.

`train.py`, `evaluate.py`, the benchmarks, the notebooks and a Python user call these. This is
the one module below the entry points that sees the whole `Config`: it hands every other
module plain arguments or a single section.

    from siamese_reid.config import load_config
    from siamese_reid import experiment

    config = load_config("config.yaml", ["training.epochs=20"])
    run_dir = experiment.create_run_dir(config.output.dir, config.output.run_name)
    metrics = experiment.train(config, run_dir)
"""

__all__ = [
    "PreparedData",
    "build_tower",
    "build_training_model",
    "check_before_start",
    "create_evaluation_dir",
    "create_new_run_dir",
    "create_run_dir",
    "evaluate_saved_model",
    "fit_search_threshold",
    "image_size",
    "prepare_data",
    "resolve_dataset",
    "resume",
    "run_model_path",
    "start_distribution",
    "train",
    "train_new_run",
]

import dataclasses
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from siamese_reid import reporting
from siamese_reid.config import config_to_dict, load_config, replace, save_config
from siamese_reid.data.datasets import dataset_name, read_dataset, read_extra_training
from siamese_reid.data.demo import ensure_demo_dataset
from siamese_reid.data.readers import summarize_split
from siamese_reid.data.scan import printable, scan_samples
from siamese_reid.data.splits import person_samples, split_validation
from siamese_reid.errors import ReIDError
from siamese_reid.files import write_text
from siamese_reid.runs import create_evaluation_dir, create_run_dir, run_model_path


@dataclasses.dataclass(frozen=True)
class PreparedData:
    """The splits a run uses, every image checked decodable.

    `validation_query` and `validation_gallery` are empty unless `data.validation_fraction`
    holds training identities out.
    """

    train: list
    query: list
    gallery: list
    validation_query: list
    validation_gallery: list
    summary: dict
    warnings: list
    identity_names: dict  # pid -> folder name (folder-per-identity datasets), else empty

    @property
    def has_validation(self):
        return bool(self.validation_query)


# ---------------------------------------------------------------------------------------------
# Data


def resolve_dataset(config):
    """Generates the demo dataset when no dataset is configured; returns the config to use. The
    demo stands in for a missing data.root only with the default layout: asking for MSMT17
    without saying where it is must not train on the demo."""
    data = config.data
    if data.root or data.train_dir or data.query_dir or data.gallery_dir:
        return config
    if data.layout != "market":
        raise ReIDError(f"data.layout {data.layout} needs data.root, the dataset's folder")
    # said every time: `--set data.root=$UNSET_VARIABLE` reads as null and trains on the demo
    verb = "generated" if ensure_demo_dataset(config.demo) else "using"
    print(f"data.root is not set: {verb} the demo dataset in {config.demo.dir}", flush=True)
    return replace(config, data=replace(data, root=str(Path(config.demo.dir).expanduser()), layout="market"))


def check_before_start(config):
    """Every check that needs no training, run before a run folder exists: the dataset (the
    demo generated if needed), a weights file, and whether any query can be matched at all.
    Returns the config to use (demo resolved)."""
    from siamese_reid.model.embedding import resolve_weights

    config = resolve_dataset(config)
    resolve_weights(config.model.weights)
    splits = read_dataset(config.data)
    read_extra_training(config.data, splits)
    _check_queries_have_matches(splits.query, splits.gallery)
    return config


def prepare_data(config, output_dir, need_train=True):
    """Reads, checks and summarises the splits; records the summary and warnings in output_dir.

    Junk and distractor images are dropped from training (and counted), and a validation split
    is held out of the training identities when `data.validation_fraction` asks for one. The
    training splits of `data.extra_train` then join training (identities kept apart), each
    counted in the summary as "train: <folder name>"; validation stays on the main dataset.

    Returns:
      (the config actually used, with the demo dataset resolved; `PreparedData`).
    """
    config = resolve_dataset(config)
    data = config.data
    splits = read_dataset(data, need_train=need_train)
    extra = read_extra_training(data, splits) if need_train else []
    warnings = list(splits.warnings) + [line for training_set in extra for line in training_set.warnings]
    cache = Path(output_dir) / "converted_images"
    usable, unreadable = {"train": []}, []
    # an evaluation never reads the training images: scanning them would only cost time
    for name in ("train", "query", "gallery") if need_train else ("query", "gallery"):
        usable[name] = _scan(getattr(splits, name), cache, unreadable)
    train, excluded = person_samples(usable["train"])
    validation_query, validation_gallery = [], []
    if need_train and data.validation_fraction > 0:
        train, validation_query, validation_gallery = split_validation(train, data.validation_fraction, data.split_seed)
    per_dataset = [(dataset_name(data), train)]
    for training_set in extra:
        people, dropped = person_samples(_scan(training_set.samples, cache, unreadable))
        per_dataset.append((training_set.name, people))
        excluded = {kind: excluded[kind] + dropped[kind] for kind in excluded}
    if excluded["junk"] or excluded["distractors"]:
        warnings.append(
            f"excluded from training: {excluded['junk']} junk (identity -1) and "
            f"{excluded['distractors']} distractor (identity 0) images, which are not people to learn"
        )
    prepared = {
        "train": [sample for _, samples in per_dataset for sample in samples],
        "query": usable["query"],
        "gallery": usable["gallery"],
        "validation_query": validation_query,
        "validation_gallery": validation_gallery,
    }
    summary = {name: summarize_split(samples) for name, samples in prepared.items() if samples}
    if need_train:
        summary.setdefault("train", summarize_split(prepared["train"]))
    if extra:  # per-dataset rows right after the combined one
        rows = {}
        for number, (name, samples) in enumerate(per_dataset, start=1):
            row = f"train: {name}" if f"train: {name}" not in rows else f"train: {name} ({number})"
            rows[row] = summarize_split(samples)
        summary = {"train": summary.pop("train"), **rows, **summary}
    warnings += [f"skipped '{path}': {reason}" for path, reason in unreadable]
    try:
        warnings += _check_splits(prepared, summary, need_train)
    except ReIDError as error:
        if not unreadable:
            raise
        # the files behind a too-small split are the cause a user needs, not just the count
        path, reason = unreadable[0]
        unread = f"{len(unreadable)} image file(s) could not be read, e.g. '{path}': {reason}"
        raise ReIDError(f"{error}; {unread}") from None
    _record_data(summary, warnings, output_dir)
    # folder names that are not UTF-8 would stop matplotlib and text files: shown as \xNN
    identity_names = {pid: printable(name) for pid, name in (splits.identity_names or {}).items()}
    if identity_names:
        reporting.write_json(Path(output_dir) / "identity_names.json", identity_names)
    return config, PreparedData(**prepared, summary=summary, warnings=warnings, identity_names=identity_names)


def _scan(samples, cache, unreadable):
    """The samples whose images decode (converted where TensorFlow needs it); the others are
    added to `unreadable` as (path, reason)."""
    usable, skipped = scan_samples(samples, cache)
    unreadable += skipped
    return usable


def _check_splits(prepared, summary, need_train):
    """Raises for splits no run can use; returns warnings for ones that say little."""
    if need_train and summary["train"]["identities"] < 2:
        raise ReIDError("the training split has fewer than 2 usable identities: triplets need negatives")
    for name in ("query", "gallery"):
        if not prepared[name]:
            raise ReIDError(f"the {name} split has no usable image")
    _check_queries_have_matches(prepared["query"], prepared["gallery"])
    notes = []
    shared = {s.path for s in prepared["query"]} & {s.path for s in prepared["gallery"]}
    if shared:
        notes.append(
            f"{len(shared)} images are in both the query and the gallery split (the same folder?): "
            "each is ignored as its own match"
        )
        print(f"note: {notes[-1]}")
    if summary["query"]["identities"] < 2:
        notes.append("the query split has a single identity: rank-1 and mAP say little")
    return notes


def _check_queries_have_matches(query, gallery):
    """Fails before training when no query could ever be scored (the first evaluation would
    otherwise find out after minutes of training)."""
    cameras_of = {}
    for sample in gallery:
        cameras_of.setdefault(sample.pid, set()).add(sample.camid)
    if not any(cameras_of.get(q.pid, set()) - {q.camid} for q in query if q.pid != -1):
        raise ReIDError(
            "no query identity has a gallery image from another camera: nothing could be scored; "
            "check that the query and gallery folders hold the same people"
        )


def _record_data(summary, warnings, output_dir):
    output_dir = Path(output_dir)
    reporting.write_json(output_dir / "dataset_summary.json", summary)
    if warnings:
        write_text(output_dir / "data_warnings.txt", "\n".join(warnings) + "\n")
    reporting.print_data_summary(summary, warnings, output_dir / "data_warnings.txt")


def image_size(config):
    return config.data.image_height, config.data.image_width


# ---------------------------------------------------------------------------------------------
# Model


def build_tower(config):
    """The embedding tower the config describes."""
    from siamese_reid.model.embedding import build_embedding_model

    return build_embedding_model(config.model, image_size(config))


def _model_to_fit(tower, config, num_identities):
    """The model `fit` trains around `tower`, and the loss section to compile it with."""
    from siamese_reid.model.siamese import build_siamese_model
    from siamese_reid.model.training_model import build_pk_training_model, needs_training_model

    loss = config.loss
    if config.training.sampler == "triplet":
        return build_siamese_model(tower, config.model.branches), dataclasses.replace(loss, name="triplet")
    if not needs_training_model(loss):
        return tower, loss
    if not num_identities:
        raise ValueError("the P x K training model needs num_identities (the training identities)")
    model = build_pk_training_model(
        tower, num_identities, loss.triplet_feature, id_loss=loss.id_weight > 0, center_loss=loss.center_weight > 0
    )
    return model, loss


def build_training_model(config, steps, strategy, num_identities=None):
    """Tower, the compiled model `fit` trains, and the record of how it was initialised.

    In triplet mode the trained model is the Siamese model around the tower; in P x K mode it is
    the tower itself, or, when the loss section asks for an ID loss, a center loss or the
    feature before the BNNeck, the training model of `build_pk_training_model` around it (feed it
    `fit_batches` of the P x K stream). Either way the tower's weights are the ones trained, and
    the tower is what checkpoints save.

    Args:
      num_identities: training identities (labels 0..N-1); needed by the training model only.
    """
    import keras

    from siamese_reid.model.training_model import compile_arguments
    from siamese_reid.training import make_optimizer, make_schedule

    training = config.training
    schedule = make_schedule(
        training.schedule,
        training.learning_rate,
        training.warmup_epochs * steps,
        training.epochs * steps,
        [milestone * steps for milestone in training.lr_milestones],
        training.lr_gamma,
    )
    with strategy.scope():
        tower = build_tower(config)
        if strategy.num_replicas_in_sync > 1:
            from siamese_reid.distribution import synchronize_batch_norm

            synchronize_batch_norm(tower)
        model, loss = _model_to_fit(tower, config, num_identities)
        model.compile(
            optimizer=make_optimizer(training.optimizer, schedule, training.weight_decay),
            **compile_arguments(loss, model),
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


# ---------------------------------------------------------------------------------------------
# Training


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


def _callbacks(tower, run_dir, evaluate, config, resuming, split):
    """The callbacks of `fit`; without periodic evaluation when `evaluate` is None (a worker
    other than the chief: every worker runs the others, which read the same variables). `split`
    ("val" or "test") names the scores of periodic evaluation."""
    import keras

    from siamese_reid.training import (
        AtomicBackupAndRestore,
        EmbeddingCheckpoint,
        HistoryLogger,
        PeriodicEvaluation,
        RunClock,
        StopOnNonFiniteLoss,
        evaluation_keys,
    )

    periods = (config.evaluation.every_n_epochs, config.training.epochs)
    evaluation = [] if evaluate is None else [PeriodicEvaluation(evaluate, *periods, split=split)]
    return [
        # first, so that an epoch's summary line is printed before its "epoch N: scoring..." line
        keras.callbacks.ProgbarLogger(),
        StopOnNonFiniteLoss(),
        *evaluation,
        RunClock(config.training.epochs),  # after scoring, whose time counts in what is left
        EmbeddingCheckpoint(tower, run_dir, monitor=f"{split}_mAP"),
        AtomicBackupAndRestore(str(Path(run_dir) / "backup")),
        HistoryLogger(str(Path(run_dir) / "history.csv"), append=resuming, extra_keys=evaluation_keys(split)),
        keras.callbacks.TensorBoard(str(Path(run_dir) / "tensorboard"), write_graph=False),
    ]


class _PeriodicScorer:
    """What PeriodicEvaluation calls: scores the tower on the monitored split, prints the
    result, and keeps the newest Evaluation (the last epoch's is reused for the report).

    It scores the tower's float32 copy, which is what last.keras and best.keras hold: the
    numbers of a run are those of its saved model, whatever the training precision.
    """

    def __init__(self, tower, query, gallery, split_name, image_size, settings):
        from siamese_reid.model.embedding import Float32Mirror

        self.tower = tower
        self.inference_tower = Float32Mirror(tower)
        self.query = query
        self.gallery = gallery
        self.split_name = split_name
        self.image_size = image_size
        self.settings = settings
        self.latest = None

    def __call__(self, epoch):
        from siamese_reid.evaluation.evaluator import evaluate_model

        # said before scoring: on a large gallery it takes minutes, under a progress bar at 100%
        print(f"\nepoch {epoch + 1}: scoring on {self.split_name}... ", end="", flush=True)
        self.latest = evaluate_model(self.current_tower(), self.query, self.gallery, self.image_size, self.settings)
        metrics = reporting.ranking_metrics(self.latest.ranking, len(self.query), len(self.gallery), {})
        print(f"rank-1 {reporting.percent(metrics['rank1'])}  mAP {reporting.percent(metrics['mAP'])}", flush=True)
        return metrics

    def current_tower(self):
        """The float32 tower with the trained tower's current weights."""
        return self.inference_tower.current()


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
            f"{error}. Training stopped; the last good model is {Path(run_dir) / 'last.keras'} "
            "and the run can continue with --resume after lowering training.learning_rate "
            "(or using loss.soft / a larger warm-up)"
        ) from None
    except tf.errors.ResourceExhaustedError:
        raise ReIDError("out of memory: lower training.identities_per_batch or data.image_height/width") from None


def _start_epoch(run_dir, epochs):
    from siamese_reid.training import resume_epoch

    start_epoch = resume_epoch(Path(run_dir) / "backup")
    if start_epoch >= epochs:
        raise ReIDError(f"run '{run_dir}' already finished its {epochs} epochs")
    if start_epoch:
        print(f"resuming from the end of epoch {start_epoch}")
    return start_epoch


def start_distribution(training):
    """The run's tf.distribute strategy, once each replica is known to get an equal share of
    every batch. Created once per process, before TensorFlow does anything else: it fixes the
    devices TensorFlow starts with and, for multi-worker training, joins the cluster."""
    from siamese_reid.distribution import check_batch_split, make_strategy

    strategy = make_strategy(training.strategy, training.cpu_replicas)
    check_batch_split(training, strategy.num_replicas_in_sync)
    return strategy


def create_new_run_dir(config, output_dir=None):
    """A new run folder: `output_dir` (else output.dir) / output.run_name, else a timestamp.

    Under multi-worker training the chief creates it and every other worker receives its path,
    so all of them name the same run (they write nothing into it: see `train`).
    """
    from siamese_reid.distribution import broadcast_from_chief, is_chief, is_multi_worker

    strategy = start_distribution(config.training)
    parent = output_dir or config.output.dir
    if not is_multi_worker(strategy):
        return create_run_dir(parent, config.output.run_name)
    run_dir, failure = "", None
    if is_chief(strategy):
        try:
            run_dir = str(create_run_dir(parent, config.output.run_name))
        except ReIDError as error:
            failure = error  # raised once the other workers know, so that none waits for a folder
    agreed = broadcast_from_chief(strategy, run_dir)
    if failure is not None:
        raise failure
    if not agreed:
        raise ReIDError("the chief could not create the run folder (its error says why)")
    return Path(agreed)


def train(config, run_dir, resuming=False):
    """Trains, evaluates and reports into `run_dir`; returns the final metrics.

    Periodic evaluation (and best.keras) uses the validation split when there is one, else
    query/gallery. The reported numbers are always the last epoch's model on query/gallery,
    scored once: with a validation split, a separate final evaluation; without one, the last
    epoch's periodic evaluation (always run), which is the same computation.

    Under multi-worker training every worker calls this with the same `run_dir`: the chief
    trains, scores and writes there; the others train beside it, write only into a temporary
    folder, and return None.
    """
    import keras

    from siamese_reid.distribution import worker_output_dir

    strategy = start_distribution(config.training)
    previous_policy = keras.mixed_precision.global_policy()
    try:
        with worker_output_dir(run_dir, strategy, resuming) as output_dir:
            return _train(config, output_dir, strategy, resuming)
    finally:
        # The precision policy is process-wide: models the caller builds afterwards (a notebook,
        # a benchmark's baseline, the next run) must not inherit this run's bfloat16.
        keras.mixed_precision.set_global_policy(previous_policy)


def _train(config, run_dir, strategy, resuming):
    import keras

    from siamese_reid.data.pipeline import steps_per_epoch, training_dataset
    from siamese_reid.distribution import is_chief, is_multi_worker, split_by_data, worker_name
    from siamese_reid.model.training_model import fit_batches
    from siamese_reid.precision import resolve_precision
    from siamese_reid.training import PeriodicEvaluation, monitored_history_split, peak_memory_gib

    chief = is_chief(strategy)
    keras.utils.set_random_seed(config.training.seed)
    precision = resolve_precision(config.training.precision)
    keras.mixed_precision.set_global_policy(precision.policy)
    config, data = prepare_data(config, run_dir)
    save_config(config, run_dir / "config.yaml")
    _report_sampling(data.train, config.training)
    size = image_size(config)
    steps = steps_per_epoch(config.training, len(data.train))
    num_identities = len({sample.pid for sample in data.train})
    tower, model, initialisation = build_training_model(config, steps, strategy, num_identities)
    monitored = "validation" if data.has_validation else "query / gallery (test)"
    reporting.write_json(
        run_dir / "run_info.json",
        {"initialisation": initialisation, "monitored_split": monitored, "precision": precision._asdict()},
    )
    print(
        f"model: {config.model.backbone} ({initialisation['weights']} weights), "
        f"{initialisation['parameters']:,} parameters, {strategy.num_replicas_in_sync} replica(s), "
        f"precision {precision.policy} ({precision.reason})"
    )
    if is_multi_worker(strategy) and not chief:
        print(f"{worker_name(strategy)}: training beside the chief, which writes the run folder and scores the model")
    start_epoch = _start_epoch(run_dir, config.training.epochs)
    dataset = training_dataset(data.train, config.training, config.augment, size, start_epoch, steps)
    dataset = split_by_data(fit_batches(dataset, model))
    # Only the chief scores: evaluation embeds on its default device, outside the strategy, with
    # no collective, so the other workers never wait on it.
    scorer = None
    if chief:
        scorer = _PeriodicScorer(
            tower,
            data.validation_query if data.has_validation else data.query,
            data.validation_gallery if data.has_validation else data.gallery,
            monitored,
            size,
            config.evaluation,
        )
    print(f"training {config.training.epochs} epochs of {steps} batches ({config.training.sampler} sampler)")
    started = time.time()
    split = monitored_history_split(run_dir / "history.csv", data.has_validation)
    callbacks = _callbacks(tower, run_dir, scorer, config, resuming, split)
    _fit(model, dataset, steps, config.training.epochs, callbacks, run_dir)
    elapsed = time.time() - started
    scoring = next((c.seconds for c in callbacks if isinstance(c, PeriodicEvaluation)), 0.0)
    cost = {
        "training_seconds": round(elapsed, 1),
        "periodic_evaluation_seconds": round(scoring, 1),
        "peak_memory_gib": round(peak_memory_gib(), 2),
    }
    print(
        f"training took {elapsed:.0f} s, of which periodic evaluation {scoring:.0f} s "
        f"({100 * scoring / max(elapsed, 1e-9):.1f}%); peak memory {cost['peak_memory_gib']:.2f} GiB"
    )
    if not chief:
        return None
    return _final_report(scorer.current_tower(), data, config, run_dir, cost, scorer.latest)


# Printed before the last silent stretch of a run (about 1 s on the demo, more on a busy machine).
REPORT_PROGRESS = "writing the report: metrics.json, figures, embeddings"


def _final_report(tower, data, config, run_dir, extra, last_periodic=None):
    """Curves, the threshold and the report of the trained tower. `last_periodic` is the last
    epoch's periodic evaluation when there is one (it is reused, not recomputed)."""
    from siamese_reid.evaluation.evaluator import evaluate_model

    size, settings = image_size(config), config.evaluation
    monitored = "validation" if data.has_validation else "query / gallery (test)"
    reporting.write_training_curves(reporting.read_history(Path(run_dir) / "history.csv"), run_dir, monitored)
    if data.has_validation:
        validation = last_periodic or evaluate_model(
            tower, data.validation_query, data.validation_gallery, size, settings
        )
        extra["validation"] = reporting.ranking_metrics(
            validation.ranking, len(data.validation_query), len(data.validation_gallery), {}
        )
        fit_search_threshold(
            validation, data.validation_query, data.validation_gallery, settings, "validation", run_dir
        )
        print("scoring the last epoch's model on query / gallery (test)")
        final = evaluate_model(tower, data.query, data.gallery, size, settings)
    else:
        final = last_periodic or evaluate_model(tower, data.query, data.gallery, size, settings)
        fit_search_threshold(final, data.query, data.gallery, settings, "query/gallery", run_dir)
    print(REPORT_PROGRESS, flush=True)
    return reporting.write_report(final, data.query, data.gallery, settings, run_dir, extra, data.identity_names)


def fit_search_threshold(evaluation, query, gallery, settings, split_name, output_dir):
    """Fits the open-set threshold at `settings.target_far` on the evaluation's cross-camera
    pairs, in the plain metric a search ranks by, and writes threshold.json and threshold.png.

    Returns the threshold record, or None when the split has no positive or negative pair.
    """
    from siamese_reid.evaluation.distances import QueryGalleryDistances
    from siamese_reid.evaluation.threshold import fit_threshold, pair_distances

    rows = QueryGalleryDistances(evaluation.query_features, evaluation.gallery_features, settings.metric)
    positive, negative = pair_distances(rows, query, gallery)
    if len(positive) == 0 or len(negative) == 0:
        print(f"note: no threshold fitted: the {split_name} split has no positive or no negative pair")
        return None
    threshold = fit_threshold(positive, negative, settings.target_far)
    record = reporting.write_threshold(threshold, split_name, settings.metric, output_dir, positive, negative)
    print(
        f"no-match threshold {threshold.value:.4f} ({split_name}, {len(positive) + len(negative)} pairs): "
        f"TAR {reporting.percent(threshold.true_accept_rate)} at FAR {reporting.percent(threshold.false_accept_rate)}, "
        f"EER {reporting.percent(threshold.equal_error_rate)}"
    )
    return record


# Keys a resumed run may change, and what the change does; every other change is refused.
RESUMABLE_CHANGES = {
    "training.epochs": "training continues to the new last epoch; the cosine schedule is recomputed for the new "
    "length, so the learning rate continues from where the new schedule is at this step",
    "evaluation": "the run is evaluated and reported with the new settings from now on",
    "output": "no effect on a resumed run",
}


def _changed_keys(saved, wanted):
    saved, wanted = config_to_dict(saved), config_to_dict(wanted)
    return [
        f"{section}.{key}" for section in saved for key in saved[section] if saved[section][key] != wanted[section][key]
    ]


def _allowed_text():
    names = [key if "." in key else f"{key}.*" for key in RESUMABLE_CHANGES]
    return ", ".join(names[:-1]) + f" and {names[-1]}"


def _resumable(key):
    return key in RESUMABLE_CHANGES or key.split(".")[0] in RESUMABLE_CHANGES


def _check_resume_changes(run_dir, config):
    """Refuses config changes that cannot apply to a saved run, before any file is touched."""
    changed = _changed_keys(load_config(Path(run_dir) / "config.yaml"), config)
    refused = [key for key in changed if not _resumable(key)]
    if refused:
        raise ReIDError(
            f"cannot resume '{run_dir}' with changed {', '.join(refused)}: the saved model and training state "
            f"were made without them. On --resume only {_allowed_text()} may change; "
            "start a new run for the others (nothing was changed)"
        )
    for key in changed:
        reason = RESUMABLE_CHANGES.get(key) or RESUMABLE_CHANGES[key.split(".")[0]]
        print(f"note: {key} changed on resume: {reason}")


def _trained_but_unreported(run_dir, epochs):
    """Whether the run's training is over but its report was never written: stopped after
    its last epoch (the backup is deleted at the end of fit, or still says the last epoch)."""
    from siamese_reid.training import resume_epoch

    run_dir = Path(run_dir)
    if (run_dir / "metrics.json").exists() or not (run_dir / "last.keras").is_file():
        return False
    if (run_dir / "backup").exists():
        return resume_epoch(run_dir / "backup") >= epochs
    trained = len(reporting.read_history(run_dir / "history.csv").get("epoch", []))
    if 0 < trained < epochs:
        raise ReIDError(
            f"cannot resume '{run_dir}' to {epochs} epochs: it finished training after {trained} epochs and "
            "its training state is gone; evaluate its last.keras with evaluate.py, or start a new run"
        )
    return trained >= epochs


def resume(config, run_dir):
    """Continues an interrupted run in `run_dir` with `config` (its saved config plus any
    overrides); returns the final metrics.

    A run stopped after its last epoch but before its report gets its evaluation and report
    from the saved model, without training again.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ReIDError(f"cannot resume: '{run_dir}' has no config.yaml (not a run folder)")
    if (run_dir / "metrics.json").is_file() and not (run_dir / "backup").exists():
        raise ReIDError(f"cannot resume: run '{run_dir}' already finished (see its metrics.json)")
    _check_resume_changes(run_dir, config)
    if _trained_but_unreported(run_dir, config.training.epochs):
        from siamese_reid.distribution import is_chief
        from siamese_reid.model.embedding import load_embedding_model

        if not is_chief(start_distribution(config.training)):
            return None  # the chief writes the report; there is nothing left to train

        print("training had finished; evaluating the saved model and writing the report")
        config, data = prepare_data(config, run_dir)
        return _final_report(load_embedding_model(run_dir / "last.keras"), data, config, run_dir, {})
    return train(config, run_dir, resuming=True)


def train_new_run(config, run_dir):
    """Trains into `run_dir`, a folder `create_run_dir` has just made; returns the metrics.

    A run that fails before its first epoch is saved (an unusable split, a loss that is NaN
    from the start, out of memory) leaves no folder behind, so the same command can be run
    again once the cause is fixed. A multi-worker run's folder is the chief's: the other
    workers neither check nor remove it.
    """
    from siamese_reid.distribution import is_chief

    run_dir = Path(run_dir)
    if not is_chief(start_distribution(config.training)):
        return train(config, run_dir)
    if not run_dir.is_dir() or any(run_dir.iterdir()):
        raise ReIDError(f"'{run_dir}' is not a new, empty run folder: create one with create_run_dir")
    try:
        return train(config, run_dir)
    except (ReIDError, KeyboardInterrupt):
        if not (run_dir / "backup" / "training_metadata.json").exists():
            shutil.rmtree(run_dir)  # empty when this call began: it holds only this run's files
        raise


# ---------------------------------------------------------------------------------------------
# Evaluation of a saved model


def evaluate_saved_model(model_path, config, parent):
    """Scores a saved embedding tower on the config's query/gallery.

    The report goes to a new folder parent/evaluations/<timestamp>, created once the model has
    loaded: no earlier evaluation is overwritten, and a bad model file, a bad dataset or Ctrl-C
    leaves no folder (so every evaluation folder holds a whole report).

    Returns:
      (metrics, the evaluation folder).
    """
    from siamese_reid.model.embedding import load_embedding_model

    tower = load_embedding_model(model_path)
    output_dir = create_evaluation_dir(parent)
    try:
        return _evaluate_into(tower, model_path, config, output_dir), output_dir
    except (ReIDError, KeyboardInterrupt):
        # a half-written report would read as a finished one; the folder is new and holds
        # only this evaluation's files
        shutil.rmtree(output_dir)
        raise


def _evaluate_into(tower, model_path, config, output_dir):
    from siamese_reid.evaluation.embeddings import embedding_input_size
    from siamese_reid.evaluation.evaluator import evaluate_model

    config, data = prepare_data(config, output_dir, need_train=False)
    save_config(config, Path(output_dir) / "config.yaml")
    size = embedding_input_size(tower)
    if size != image_size(config):
        print(f"note: the model expects {size[0]}x{size[1]} images; resizing to that")
    print(f"evaluating {model_path} on {len(data.query)} queries x {len(data.gallery)} gallery images")
    # Embeddings go to disk batch by batch: a gallery of millions is never gathered in memory.
    evaluation = evaluate_model(tower, data.query, data.gallery, size, config.evaluation, 1, output_dir)
    fit_search_threshold(evaluation, data.query, data.gallery, config.evaluation, "query/gallery", output_dir)
    print(REPORT_PROGRESS, flush=True)
    return reporting.write_report(
        evaluation, data.query, data.gallery, config.evaluation, output_dir, identity_names=data.identity_names
    )
