"""train.py: train the Siamese embedding model, then evaluate it and draw the report."""

import argparse
import sys
from pathlib import Path

from siamese_reid import experiment
from siamese_reid.cli.common import (
    add_common_arguments,
    config_from_arguments,
    exit_on_user_error,
)
from siamese_reid.console import import_tensorflow_quietly
from siamese_reid.errors import ReIDError


@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser(description="Train a Siamese re-ID embedding model with triplet loss.")
    add_common_arguments(parser)
    parser.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an interrupted run")
    arguments = parser.parse_args(argv)
    # TensorFlow first, without its start-up noise; a bad config still fails before any training
    if not import_tensorflow_quietly():
        print("note: no GPU found; training on the CPU")
    if arguments.resume:
        run_dir = Path(arguments.resume)
        if not (run_dir / "config.yaml").is_file():
            raise ReIDError(f"cannot resume: '{run_dir}' is not a run folder (no config.yaml in it)")
        config = config_from_arguments(arguments, base_config_path=run_dir / "config.yaml")
    else:
        # everything that can fail without training fails before a run folder exists
        config = experiment.check_before_start(config_from_arguments(arguments))
        run_dir = experiment.create_new_run_dir(config, arguments.output_dir)
    print(f"run folder: {run_dir}")
    try:
        if arguments.resume:
            metrics = experiment.resume(config, run_dir)
        else:
            metrics = experiment.train_new_run(config, run_dir)
    except KeyboardInterrupt:
        if (run_dir / "backup").exists():
            print(f"interrupted; continue with: python train.py --resume {run_dir}", file=sys.stderr)
            return 130
        raise
    if metrics is None:  # a multi-worker run's other workers: they train beside the chief
        print(f"done; the chief writes the results to {run_dir}")
        return 0
    print(f"results written to {run_dir}")
    return 0
