"""Run and evaluation folders: always new, never reused, so nothing is overwritten."""

import datetime
from pathlib import Path

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
    if (run_dir / "metrics.json").is_file() and not (run_dir / "backup").exists():
        raise ReIDError(f"run folder '{run_dir}' already holds a finished run: choose another output.run_name")
    raise ReIDError(f"run folder '{run_dir}' already exists: use --resume {run_dir} or another output.run_name")


def create_evaluation_dir(parent):
    """A new folder for one evaluation: parent/evaluations/<timestamp>, never an old one."""
    return _unused_folder(Path(parent) / "evaluations", _timestamp())


def run_model_path(run_dir, checkpoint="last"):
    """The embedding tower a training run saved: last.keras or best.keras."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ReIDError(f"'{run_dir}' is not a training run folder (no config.yaml in it)")
    model_path = run_dir / f"{checkpoint}.keras"
    if not model_path.is_file():
        raise ReIDError(f"no {model_path.name} in run folder '{run_dir}'")
    return model_path
