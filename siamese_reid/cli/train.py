"""train.py: train the Siamese embedding model, then evaluate it and draw the report."""

import argparse
import sys
from pathlib import Path

from siamese_reid import experiment
from siamese_reid.cli.common import (
    add_common_arguments,
    config_from_arguments,
    exit_on_user_error,
    import_tensorflow_quietly,
)


@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser(description="Train a Siamese re-ID embedding model with triplet loss.")
    add_common_arguments(parser)
    parser.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an interrupted run")
    arguments = parser.parse_args(argv)
    import_tensorflow_quietly()  # config validation reads names from modules that import it
    if arguments.resume:
        run_dir = Path(arguments.resume)
        config = config_from_arguments(arguments, base_config_path=run_dir / "config.yaml")
    else:
        # the dataset is resolved (the demo checked or generated) before a run folder exists,
        # so a bad demo.dir leaves nothing behind
        config = experiment.resolve_dataset(config_from_arguments(arguments))
        run_dir = experiment.create_run_dir(arguments.output_dir or config.output.dir, config.output.run_name)
    print(f"run folder: {run_dir}")
    try:
        if arguments.resume:
            experiment.resume(config, run_dir)
        else:
            experiment.train_new_run(config, run_dir)
    except KeyboardInterrupt:
        if (run_dir / "backup").exists():
            print(f"interrupted; continue with: python train.py --resume {run_dir}", file=sys.stderr)
            return 130
        raise
    print(f"results written to {run_dir}")
    return 0
