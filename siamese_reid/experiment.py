"""The workflow as three library functions: `train`, `resume` and `evaluate`.

`train.py`, `evaluate.py`, the benchmarks, the notebooks and a Python user call these. This is
the one module below the entry points that sees the whole `Config`; each stage it runs lives
in the module that owns it (data/preparation, time_budget, model/building, fitting, report,
resuming, distribution, runs). Progress goes through `logging`: `console.show_messages()` shows it.

    from siamese_reid.config import load_config
    from siamese_reid import experiment

    config = load_config("config.yaml", ["training.epochs=20"])
    metrics, run_dir = experiment.train(config)            # a new folder under output.dir
    metrics, folder = experiment.evaluate(run_dir, config)  # its last.keras, a new folder
    # after Ctrl-C (RunInterrupted): metrics = experiment.resume(run_dir)
"""

__all__ = ["evaluate", "resume", "train"]

import dataclasses
import logging
import shutil
from pathlib import Path

from siamese_reid import files, runs
from siamese_reid.config import save_config
from siamese_reid.data.preparation import check_dataset, prepare_data
from siamese_reid.errors import ReIDError, RunInterrupted
from siamese_reid.report import evaluation_report, final_report
from siamese_reid.resuming import check_resumable

logger = logging.getLogger(__name__)


def train(config, output_dir=None):
    """Trains a new run, then evaluates and reports it; returns (metrics, the run folder).

    Every check that needs no training (the dataset, the demo generated when none is set, a
    weights file, whether any query can be matched) runs before the run folder
    `output_dir` (else output.dir) / output.run_name (else a timestamp) is created. A run that
    fails before its first epoch is saved (an unusable split, a loss that is NaN from the
    start, out of memory) leaves no folder behind, so the same call can be made again once the
    cause is fixed; one interrupted later raises `RunInterrupted`, which names the folder to
    `resume`.

    Periodic evaluation (and best.keras) uses the validation split when there is one, else
    query/gallery. The reported numbers are the last epoch's model on query/gallery, or on the
    validation split for a tuning run (`evaluation.score_test: false`), which never scores test.
    Under multi-worker training every worker calls this: the chief creates the folder, trains,
    scores and writes there; the others train beside it and get None for metrics.
    """
    from siamese_reid.distribution import folder_made_by_chief, is_chief, start_distribution
    from siamese_reid.model.backbones import resolve_weights
    from siamese_reid.time_budget import check_budget_applies

    config = check_dataset(config)
    resolve_weights(config.model.weights)
    strategy = start_distribution(config.training)
    check_budget_applies(config.training, strategy)
    parent = output_dir or config.output.dir
    run_dir = folder_made_by_chief(strategy, lambda: runs.create_run_dir(parent, config.output.run_name))
    logger.info(f"run folder: {run_dir}")
    if not is_chief(strategy):
        return _run(config, run_dir, resuming=False), run_dir  # the folder is the chief's
    try:
        return _run(config, run_dir, resuming=False), run_dir
    except (ReIDError, KeyboardInterrupt) as error:
        if not runs.has_saved_epoch(run_dir):
            shutil.rmtree(run_dir)  # created by this call: it holds only this run's files
        elif isinstance(error, KeyboardInterrupt):
            raise RunInterrupted(run_dir) from None
        raise


def resume(run_dir, overrides=()):
    """Continues the interrupted run in `run_dir` with its saved config and `overrides`
    ("section.key=value"; only the settings `resuming.RESUMABLE_CHANGES` names may change);
    returns the final metrics (None on a multi-worker run's other workers).

    A run stopped after its last epoch but before its report gets its evaluation and report
    from the saved model, without training again.
    """
    from siamese_reid.distribution import is_chief, start_distribution
    from siamese_reid.model.embedding import load_embedding_model
    from siamese_reid.run_cost import cost_so_far

    run_dir = runs.require_run_dir(run_dir, refusal="cannot resume: ")
    config = runs.load_run_config(run_dir, overrides)
    check_resumable(run_dir, config)
    if not runs.trained_but_unreported(run_dir, config.training.epochs):
        try:
            return _run(config, run_dir, resuming=True)
        except KeyboardInterrupt:
            if runs.has_saved_epoch(run_dir):
                raise RunInterrupted(run_dir) from None
            raise
    if not is_chief(start_distribution(config.training)):
        return None  # the chief writes the report; there is nothing left to train
    logger.info("training had finished; evaluating the saved model and writing the report")
    config, data = prepare_data(config, run_dir)
    # The report is scored with this resume's evaluation settings, so config.yaml must say so;
    # only those: the model was trained as config.yaml says (a smaller training.epochs also
    # leads here, and must not rewrite what was trained).
    trained = runs.load_run_config(run_dir)
    save_config(dataclasses.replace(trained, evaluation=config.evaluation), run_dir / runs.CONFIG)
    cost = cost_so_far(run_dir)  # the training sessions', kept in the run folder
    return final_report(load_embedding_model(run_dir / runs.LAST_MODEL), data, config, run_dir, cost)


def evaluate(model, config, checkpoint="last", output_dir=None):
    """Scores a saved embedding tower on the config's query/gallery; returns (metrics, the
    evaluation folder).

    `model` is a run folder (its `checkpoint`.keras: "last" or "best") or a .keras file;
    `config` says what to score it on (a run's own config: `runs.load_run_config`). The
    report goes to a new folder <output_dir, else the run folder, else output.dir>/evaluations/
    <timestamp>, created once the model has loaded: no earlier evaluation is overwritten, and a
    bad model file, a bad dataset or Ctrl-C leaves no folder.
    """
    from siamese_reid.model.embedding import load_embedding_model

    model = Path(model)
    model_path = runs.run_model_path(model, checkpoint) if model.is_dir() else model
    data = config.data
    if model.is_dir() and not (data.root or data.query_dir or data.gallery_dir):
        # a run folder whose config names no dataset was not trained here (an imported
        # torchreid model): scoring it on the synthetic demo would mean nothing
        raise ReIDError(
            f"run '{model}' names no dataset to evaluate on: give a query and a gallery "
            "(evaluate.py --query_dir Q --gallery_dir G, or --set data.root=DATASET)"
        )
    tower = load_embedding_model(model_path)
    evaluation_dir = runs.create_evaluation_dir(output_dir or (model if model.is_dir() else config.output.dir))
    try:
        return evaluation_report(tower, model_path, config, evaluation_dir), evaluation_dir
    except (ReIDError, KeyboardInterrupt):
        # a half-written report would read as a finished one; the folder is new and holds
        # only this evaluation's files
        shutil.rmtree(evaluation_dir)
        raise


def _run(config, run_dir, resuming):
    """Trains (from the backup when `resuming`) and reports into `run_dir`; on a worker other
    than the chief, trains beside it in a temporary folder and returns None."""
    import keras

    from siamese_reid.distribution import start_distribution, worker_output_dir

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

    from siamese_reid.fitting import fit_run
    from siamese_reid.precision import resolve_precision
    from siamese_reid.time_budget import fit_to_budget

    precision = resolve_precision(config.training.precision)
    keras.mixed_precision.set_global_policy(precision.policy)
    config, data = prepare_data(config, run_dir)
    if not resuming:  # a resumed run keeps the epochs its config.yaml records
        config, decision = fit_to_budget(config, data.train, strategy)
        if decision:
            files.write_json(run_dir / runs.TIME_BUDGET, decision)
    # after the budget's timing, whose throwaway model draws from the seeds: a budgeted run is
    # the run its decided training.epochs gives
    keras.utils.set_random_seed(config.training.seed)
    save_config(config, run_dir / runs.CONFIG)
    periodic, cost = fit_run(config, data, run_dir, strategy, resuming, precision)
    if periodic is None:
        return None  # a worker other than the chief: it neither scores nor reports
    return final_report(periodic.current_tower(), data, config, run_dir, cost, periodic.latest)
