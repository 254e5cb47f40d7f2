"""export.py: export a run's embedding tower for deployment."""

import argparse
from pathlib import Path

from siamese_reid.cli.common import exit_on_user_error
from siamese_reid.console import import_tensorflow_quietly
from siamese_reid.runs import run_model_path


@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser(description="Export a trained embedding model (SavedModel, ONNX or LiteRT).")
    parser.add_argument("--run", required=True, help="a training run folder")
    parser.add_argument("--checkpoint", default="last", choices=("last", "best"), help="which saved tower")
    parser.add_argument("--format", default="savedmodel", choices=("savedmodel", "onnx", "litert"))
    parser.add_argument("--output", default=None, help="output folder (default: RUN_DIR/export/<format>)")
    arguments = parser.parse_args(argv)
    model_path = run_model_path(arguments.run, arguments.checkpoint)
    import_tensorflow_quietly()
    from siamese_reid.export import export_model
    from siamese_reid.model.embedding import load_embedding_model

    output = Path(arguments.output or Path(arguments.run) / "export" / arguments.format)
    export_model(load_embedding_model(model_path), arguments.format, output)
    print(f"exported {model_path} as {arguments.format} to {output}")
    return 0
