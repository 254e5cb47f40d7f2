"""Run and evaluation folders: always new, never reused, so nothing is overwritten; the name
of every file a run (or evaluation) folder holds, and the readers of those files."""

import csv
import datetime
import json
from pathlib import Path

import numpy as np

from siamese_reid.errors import ReIDError
from siamese_reid.files import create_folder


def _timestamp():
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def _unused_folder(parent, name):
    """parent/name, or name-2, name-3, ... : the first that does not exist yet, created."""
    parent = create_folder(parent, exist_ok=True)
    for suffix in ["", *(f"-{n}" for n in range(2, 10_000))]:
        candidate = parent / f"{name}{suffix}"
        if candidate.exists():
            continue
        try:
            return create_folder(candidate)
        except FileExistsError:
            continue  # created meanwhile by another process
    raise ReIDError(f"could not find a free folder name for '{parent / name}'")


def create_run_dir(output_dir, run_name=None):
    """A new, empty run folder: output_dir/run_name, or output_dir/<timestamp>.

    A named run that already exists is refused (resume it instead); a timestamp that is taken
    gets a suffix. An existing folder is never reused, so nothing is overwritten.
    """
    if run_name is None:
        return _unused_folder(output_dir, _timestamp())
    run_dir = Path(output_dir) / run_name
    try:
        # one atomic step: of two runs started at the same moment with this name, exactly one
        # creates the folder, and the other is refused with the same message as always
        return create_folder(run_dir)
    except FileExistsError:
        pass
    if is_finished(run_dir):
        raise ReIDError(f"run folder '{run_dir}' already holds a finished run: choose another output.run_name")
    raise ReIDError(
        f"run folder '{run_dir}' already exists: resume it (experiment.resume; train.py --resume {run_dir}) "
        "or choose another output.run_name"
    )


def create_evaluation_dir(parent):
    """A new folder for one evaluation: parent/evaluations/<timestamp>, never an old one."""
    return _unused_folder(Path(parent) / "evaluations", _timestamp())


# ---------------------------------------------------------------------------------------------
# The files of a run folder, and their readers

CONFIG = "config.yaml"  # the config the run was trained with (demo resolved)
METRICS = "metrics.json"  # written last: a run with it and without BACKUP is finished
HISTORY = "history.csv"  # one row per epoch
HISTORY_ELAPSED = "elapsed_seconds"  # history.csv's column of training time at the end of each epoch
BACKUP = "backup"  # BackupAndRestore's training state; removed when fit ends
BACKUP_STATE = "training_metadata.json"  # in BACKUP: the epoch to resume from (Keras' name)
LAST_MODEL = "last.keras"  # the embedding tower after the last epoch
BEST_MODEL = "best.keras"  # the embedding tower of the best monitored epoch
BEST = "best.json"  # the monitored value and epoch of best.keras
THRESHOLD = "threshold.json"  # the open-set threshold search.py uses
RUN_INFO = "run_info.json"  # initialisation, monitored split, precision
TIME_BUDGET = "time_budget.json"  # under training.time_budget_hours: the step timed, the epochs decided
RUN_COST = "run_cost.json"  # training and scoring time and peak memory over all sessions so far
DATASET_SUMMARY = "dataset_summary.json"  # images, identities and cameras of every split
DATA_WARNINGS = "data_warnings.txt"  # images skipped and why, when there are any
IDENTITY_NAMES = "identity_names.json"  # pid -> folder name, for folder-per-identity datasets
QUERY_EMBEDDINGS = "query_embeddings.npz"
# a record's query pids, kept without the embeddings (experiments/keep_record.py)
QUERY_IDENTITIES = "query_identities.npy"
GALLERY_EMBEDDINGS = "gallery_embeddings.npz"
QUERY_AVERAGE_PRECISIONS = "query_average_precisions.npy"  # as scored for metrics.json
TENSORBOARD = "tensorboard"  # TensorBoard's event files
# Figures: written for a person to look at; no code reads them back.
LOSS_FIGURE = "loss.png"
RETRIEVAL_PER_EPOCH_FIGURE = "retrieval_per_epoch.png"
CMC_FIGURE = "cmc.png"
RETRIEVAL_EXAMPLES_FIGURE = "retrieval_examples.png"
THRESHOLD_FIGURE = "threshold.png"


def require_run_dir(run_dir, refusal=""):
    """`run_dir` as a Path, once it holds a config.yaml; `refusal` ("cannot resume: ") leads
    the error otherwise."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise ReIDError(f"{refusal}'{run_dir}' is not a training run folder (no {CONFIG} in it)")
    return run_dir


def load_run_config(run_dir, overrides=()):
    """The config a run was trained with, plus `overrides` ("section.key=value")."""
    from siamese_reid.config import load_config

    return load_config(require_run_dir(run_dir) / CONFIG, list(overrides))


def run_model_path(run_dir, checkpoint="last"):
    """The embedding tower a training run saved: last.keras or best.keras."""
    model_path = require_run_dir(run_dir) / f"{checkpoint}.keras"  # LAST_MODEL or BEST_MODEL
    if not model_path.is_file():
        raise ReIDError(f"no {model_path.name} in run folder '{run_dir}'")
    return model_path


def read_threshold(run_dir):
    """The threshold record of threshold.json (its "value" is the distance), or None when the
    run has none."""
    path = Path(run_dir) / THRESHOLD
    return json.loads(path.read_text()) if path.is_file() else None


def is_finished(run_dir):
    """Whether the run wrote its report after its training ended (a resumed run that is
    still training keeps the metrics.json of an earlier report beside its backup)."""
    run_dir = Path(run_dir)
    return (run_dir / METRICS).is_file() and not (run_dir / BACKUP).exists()


def has_saved_epoch(run_dir):
    """Whether the run saved an epoch that `resume` can continue from or report: its backup
    while training, last.keras once fit has ended (and removed the backup)."""
    run_dir = Path(run_dir)
    return (run_dir / BACKUP / BACKUP_STATE).exists() or (run_dir / LAST_MODEL).is_file()


def trained_but_unreported(run_dir, epochs):
    """Whether the run's training is over but its report was never written: stopped after
    its last epoch (the backup is deleted at the end of fit, or still says the last epoch)."""
    from siamese_reid.checkpoints import resume_epoch

    run_dir = Path(run_dir)
    if (run_dir / METRICS).exists() or not (run_dir / LAST_MODEL).is_file():
        return False
    if (run_dir / BACKUP).exists():
        return resume_epoch(run_dir / BACKUP) >= epochs
    trained = epochs_trained(run_dir)
    if 0 < trained < epochs:
        raise ReIDError(
            f"cannot resume '{run_dir}' to {epochs} epochs: it finished training after {trained} epochs and "
            "its training state is gone; evaluate its last.keras with evaluate.py, or start a new run"
        )
    return trained >= epochs


def epochs_trained(run_dir):
    """How many epochs a run folder's history.csv says it trained, over all its sessions; 0 for
    a folder without one (an evaluation folder). Not config.yaml's training.epochs: a run can
    stop, or be reported, short of them. An epoch logged twice counts once."""
    return len(np.unique(read_history(Path(run_dir) / HISTORY).get("epoch", [])))


def read_history(path):
    """The training history CSV as {column: np.ndarray}; empty cells become NaN, epochs count from 1."""
    path = Path(path)
    if not path.is_file():
        return {}
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return {}
    history = {key: np.array([_number(row.get(key)) for row in rows]) for key in rows[0]}
    if "epoch" in history and history["epoch"][0] == 0:
        history["epoch"] = history["epoch"] + 1  # written before epochs were numbered from 1
    return history


def _number(text):
    """CSVLogger writes "NA" for a metric missing in an epoch (evaluation did not run)."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return np.nan
