"""What a resumed run may change, and where it continues from.

A run continues from its backup (the last finished epoch); only the settings that cannot
change what was already trained may differ from its saved config.
"""

import logging
from pathlib import Path

from siamese_reid.config import config_to_dict
from siamese_reid.errors import ReIDError
from siamese_reid.runs import BACKUP, METRICS, is_finished, load_run_config

logger = logging.getLogger(__name__)


def check_resumable(run_dir, config):
    """Refuses a finished run, and config changes that cannot apply to the saved run, before
    any file is touched."""
    if is_finished(run_dir):
        raise ReIDError(f"cannot resume: run '{run_dir}' already finished (see its {METRICS})")
    check_resume_changes(run_dir, config)


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


def check_resume_changes(run_dir, config):
    """Refuses config changes that cannot apply to a saved run, before any file is touched."""
    changed = _changed_keys(load_run_config(run_dir), config)
    refused = [key for key in changed if not _resumable(key)]
    if refused:
        raise ReIDError(
            f"cannot resume '{run_dir}' with changed {', '.join(refused)}: the saved model and training state "
            f"were made without them. On a resumed run only {_allowed_text()} may change; "
            "start a new run for the others (nothing was changed)"
        )
    for key in changed:
        reason = RESUMABLE_CHANGES.get(key) or RESUMABLE_CHANGES[key.split(".")[0]]
        logger.info(f"note: {key} changed on resume: {reason}")


def start_epoch(run_dir, epochs):
    """The epoch training resumes from (0 for a new run); refuses a run that is over."""
    from siamese_reid.checkpoints import resume_epoch  # imports TensorFlow

    epoch = resume_epoch(Path(run_dir) / BACKUP)
    if epoch >= epochs:
        raise ReIDError(f"run '{run_dir}' already finished its {epochs} epochs")
    if epoch:
        logger.info(f"resuming from the end of epoch {epoch}")
    return epoch
