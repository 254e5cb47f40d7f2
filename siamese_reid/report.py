"""The report of a trained tower: its scores on query / gallery (the test split; a tuning run's,
with `evaluation.score_test: false`, on its validation split), the open-set threshold, and the
files and figures of `reporting`, written after training or for a saved model.
"""

import logging
from pathlib import Path

from siamese_reid import reporting
from siamese_reid.config import save_config
from siamese_reid.data.preparation import prepare_data
from siamese_reid.formatting import percent
from siamese_reid.runs import CONFIG, HISTORY, read_history

logger = logging.getLogger(__name__)

# Shown before the last silent stretch of a run (about 1 s on the demo, more on a busy machine).
REPORT_PROGRESS = "writing the report: metrics.json, figures, embeddings"


def final_report(tower, data, config, run_dir, extra, last_periodic=None):
    """Curves, the threshold and the report of the trained tower: on query / gallery, or on the
    validation split when `evaluation.score_test` is false (test is then never scored).
    metrics.json's "split" says which. `last_periodic` is the last epoch's periodic evaluation
    when there is one (it is reused, not recomputed)."""
    from siamese_reid.evaluation.evaluator import evaluate_model
    from siamese_reid.model.building import image_size

    size, settings = image_size(config), config.evaluation
    monitored = "validation" if data.has_validation else "query / gallery (test)"
    reporting.write_training_curves(read_history(Path(run_dir) / HISTORY), run_dir, monitored)
    if data.has_validation:
        validation = last_periodic or evaluate_model(
            tower, data.validation_query, data.validation_gallery, size, settings
        )
        extra["validation"] = reporting.ranking_metrics(
            validation.ranking, len(data.validation_query), len(data.validation_gallery), {}
        )
        fit_search_threshold(
            validation, data.validation_query, data.validation_gallery, settings, "validation", run_dir
        )
    if data.has_validation and not settings.score_test:
        # A tuning run: it reports on validation, so nothing chosen on it has seen test.
        final, query, gallery, split = validation, data.validation_query, data.validation_gallery, "validation"
    elif data.has_validation:
        logger.info("scoring the last epoch's model on query / gallery (test)")
        final = evaluate_model(tower, data.query, data.gallery, size, settings)
        query, gallery, split = data.query, data.gallery, "test"
    else:
        final = last_periodic or evaluate_model(tower, data.query, data.gallery, size, settings)
        fit_search_threshold(final, data.query, data.gallery, settings, "query/gallery", run_dir)
        query, gallery, split = data.query, data.gallery, "test"
    logger.info(REPORT_PROGRESS)
    return reporting.write_report(final, query, gallery, split, settings, run_dir, extra, data.identity_names)


def fit_search_threshold(evaluation, query, gallery, settings, split_name, output_dir):
    """Fits the open-set threshold at `settings.target_far` on the evaluation's cross-camera
    pairs, in the plain metric a search ranks by, and writes threshold.json and threshold.png.

    Returns the threshold record, or None when the split has no positive or negative pair.
    """
    from siamese_reid.evaluation.distances import QueryGalleryDistances
    from siamese_reid.evaluation.threshold import fit_threshold, pair_distances

    rows = QueryGalleryDistances(evaluation.query_features, evaluation.gallery_features, settings.metric)
    positive, negative = pair_distances(rows, query, gallery)
    if len(positive) == 0 or len(negative) == 0:
        logger.info(f"note: no threshold fitted: the {split_name} split has no positive or no negative pair")
        return None
    threshold = fit_threshold(positive, negative, settings.target_far)
    record = reporting.write_threshold(threshold, split_name, settings.metric, output_dir, positive, negative)
    logger.info(
        f"no-match threshold {threshold.value:.4f} ({split_name}, {len(positive) + len(negative)} pairs): "
        f"TAR {percent(threshold.true_accept_rate)} at FAR {percent(threshold.false_accept_rate)}, "
        f"EER {percent(threshold.equal_error_rate)}"
    )
    return record


def evaluation_report(tower, model_path, config, output_dir):
    """Scores a saved tower on the config's query / gallery and writes its report, the
    threshold included, into `output_dir`; returns the metrics."""
    from siamese_reid.evaluation.embeddings import embedding_input_size
    from siamese_reid.evaluation.evaluator import evaluate_model
    from siamese_reid.model.building import image_size

    config, data = prepare_data(config, output_dir, need_train=False)
    save_config(config, Path(output_dir) / CONFIG)
    size = embedding_input_size(tower)
    if size != image_size(config):
        logger.info(f"note: the model expects {size[0]}x{size[1]} images; resizing to that")
    logger.info(f"evaluating {model_path} on {len(data.query)} queries x {len(data.gallery)} gallery images")
    # Embeddings go to disk batch by batch: a gallery of millions is never gathered in memory.
    evaluation = evaluate_model(tower, data.query, data.gallery, size, config.evaluation, 1, output_dir)
    fit_search_threshold(evaluation, data.query, data.gallery, config.evaluation, "query/gallery", output_dir)
    logger.info(REPORT_PROGRESS)
    return reporting.write_report(
        evaluation,
        data.query,
        data.gallery,
        "test",  # evaluate.py scores query / gallery whatever evaluation.score_test says
        config.evaluation,
        output_dir,
        identity_names=data.identity_names,
    )
