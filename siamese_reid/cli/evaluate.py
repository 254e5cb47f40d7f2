"""evaluate.py: score a trained embedding model on query / gallery and draw the report."""

import argparse
from pathlib import Path

import numpy as np

from siamese_reid.cli.common import (
    add_common_arguments,
    config_from_arguments,
    exit_on_user_error,
    image_size,
    new_run_dir,
    prepare_data,
    save_run_config,
)
from siamese_reid.errors import ReIDError


def write_report(evaluation, query, gallery, settings, output_dir, extra=None):
    """Writes metrics.json, cmc.png, retrieval_examples.png, the embeddings and per-query APs.

    Args:
      evaluation: an `Evaluation` of `query` against `gallery`.
      query, gallery: lists of `Sample`.
      settings: the `EvaluationConfig` section the evaluation used.
      output_dir: folder the files are written to.
      extra: more entries for metrics.json (e.g. training time).

    Returns:
      The metrics dictionary.
    """
    from siamese_reid import reporting
    from siamese_reid.evaluation.embeddings import save_embeddings

    output_dir = Path(output_dir)
    protocol = {
        "ap_definition": settings.ap_definition,
        "metric": settings.metric,
        "flip_test": settings.flip_test,
        "rerank": settings.rerank,
        "same_camera_same_identity": "ignored",
        "junk_identity_-1": "ignored",
        "distractor_identity_0": "kept as negatives",
        "ties": "gallery order",
    }
    metrics = reporting.ranking_metrics(evaluation.ranking, len(query), len(gallery), protocol)
    metrics.update(extra or {})
    reporting.write_json(output_dir / "metrics.json", metrics)
    reporting.plot_cmc(evaluation.ranking.cmc, output_dir / "cmc.png")
    if settings.num_examples:
        rng = np.random.default_rng(0)
        chosen = rng.choice(len(query), min(settings.num_examples, len(query)), replace=False)
        reporting.plot_retrieval_examples(
            sorted(chosen.tolist()), query, gallery, evaluation.distances, output_dir / "retrieval_examples.png"
        )
    save_embeddings(output_dir / "query_embeddings.npz", evaluation.query_features, query)
    save_embeddings(output_dir / "gallery_embeddings.npz", evaluation.gallery_features, gallery)
    np.save(output_dir / "query_average_precisions.npy", evaluation.ranking.query_average_precisions)
    print(reporting.metrics_table(metrics))
    return metrics


def _model_and_config(arguments):
    """(model path, config) from --run RUN_DIR or --weights MODEL.keras."""
    if bool(arguments.run) == bool(arguments.weights):
        raise ReIDError("give exactly one of --run RUN_DIR or --weights MODEL.keras")
    if arguments.weights:
        return Path(arguments.weights), config_from_arguments(arguments)
    run_dir = Path(arguments.run)
    if not (run_dir / "config.yaml").is_file():
        raise ReIDError(f"'{run_dir}' is not a training run folder (no config.yaml in it)")
    model_path = run_dir / f"{arguments.checkpoint}.keras"
    if not model_path.is_file():
        raise ReIDError(f"no {model_path.name} in run folder '{run_dir}'")
    return model_path, config_from_arguments(arguments, base_config_path=run_dir / "config.yaml")


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
    model_path, config = _model_and_config(arguments)
    from siamese_reid.evaluation.embeddings import embedding_input_size
    from siamese_reid.model.embedding import load_embedding_model

    tower = load_embedding_model(model_path)
    if arguments.output_dir:
        output_dir = new_run_dir(arguments.output_dir, None)
    elif arguments.run:
        output_dir = new_run_dir(arguments.run, "evaluation")
    else:
        output_dir = new_run_dir(config.output.dir, config.output.run_name or "evaluation")
    config, splits = prepare_data(config, output_dir, need_train=False)
    save_run_config(config, output_dir)
    input_size = embedding_input_size(tower)
    if input_size != image_size(config):
        print(f"note: the model expects {input_size[0]}x{input_size[1]} images; resizing to that")
    print(f"evaluating {model_path} on {len(splits.query)} queries x {len(splits.gallery)} gallery images")
    from siamese_reid.evaluation.evaluator import evaluate_model

    evaluation = evaluate_model(tower, splits.query, splits.gallery, input_size, config.evaluation, verbose=1)
    write_report(evaluation, splits.query, splits.gallery, config.evaluation, output_dir)
    print(f"results written to {output_dir}")
    return 0
