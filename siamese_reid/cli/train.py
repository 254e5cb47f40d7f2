"""train.py: train the Siamese embedding model, then evaluate it and draw the report."""

import argparse
import sys
from pathlib import Path

from siamese_reid import experiment
from siamese_reid.cli.common import (
    add_common_arguments,
    config_from_arguments,
    exit_on_user_error,
    overrides_from_arguments,
)
from siamese_reid.console import import_tensorflow_quietly
from siamese_reid.errors import ReIDError, RunInterrupted
from siamese_reid.runs import CONFIG, require_run_dir


@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser(description="Train a Siamese re-ID embedding model with triplet loss.")
    add_common_arguments(parser)
    parser.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an interrupted run")
    arguments = parser.parse_args(argv)
    # TensorFlow first, without its start-up noise; a bad config still fails before any training
    if not import_tensorflow_quietly():
        print("note: no GPU found; training on the CPU")
    try:
        if arguments.resume:
            metrics, run_dir = _resume(arguments), Path(arguments.resume)
        else:
            metrics, run_dir = experiment.train(config_from_arguments(arguments), arguments.output_dir)
    except RunInterrupted as interrupted:
        print(f"interrupted; continue with: python train.py --resume {interrupted.run_dir}", file=sys.stderr)
        return 130
    if metrics is None:  # a multi-worker run's other workers: they train beside the chief
        print(f"done; the chief writes the results to {run_dir}")
        return 0
    print(f"results written to {run_dir}")
    return 0


def _resume(arguments):
    """Resumes the run --resume names with its saved config and the --set/--*_dir overrides."""
    if arguments.config:
        raise ReIDError(
            "--config does not apply with --resume: the run keeps its saved config (change keys with --set)"
        )
    run_dir = require_run_dir(arguments.resume, refusal="cannot resume: ")
    print(f"config: {run_dir / CONFIG}")
    print(f"run folder: {run_dir}")
    return experiment.resume(run_dir, overrides_from_arguments(arguments))
