"""evaluate.py: score a trained embedding model on query / gallery and draw the report."""

import argparse
from pathlib import Path

from siamese_reid import experiment
from siamese_reid.cli.common import (
    add_common_arguments,
    config_from_arguments,
    exit_on_user_error,
)
from siamese_reid.console import import_tensorflow_quietly
from siamese_reid.errors import ReIDError
from siamese_reid.runs import CONFIG, run_model_path


@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser(description="Evaluate a re-ID embedding model under the Market-1501 protocol.")
    parser.add_argument("--run", default=None, help="a training run folder (uses its model and config)")
    parser.add_argument(
        "--checkpoint",
        default="last",
        choices=("last", "best"),
        help="with --run: the last epoch (default; what train.py reports) or the best by val mAP",
    )
    parser.add_argument("--weights", default=None, help="an embedding model file (.keras)")
    add_common_arguments(parser)
    arguments = parser.parse_args(argv)
    import_tensorflow_quietly()  # before the library imports it, without its start-up noise
    if bool(arguments.run) == bool(arguments.weights):
        raise ReIDError("give exactly one of --run RUN_DIR or --weights MODEL.keras")
    if arguments.run:
        run_model_path(arguments.run, arguments.checkpoint)  # a missing model fails before the config is read
        config = config_from_arguments(arguments, base_config_path=Path(arguments.run) / CONFIG)
        model = arguments.run
    else:
        model, config = Path(arguments.weights), config_from_arguments(arguments)
    _, output_dir = experiment.evaluate(model, config, arguments.checkpoint, arguments.output_dir)
    print(f"results written to {output_dir}")
    return 0
