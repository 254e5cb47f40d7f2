"""The files of a report: metrics.json (the numbers of `ranking_metrics`), the figures of a
run saved as PNG files, threshold.json, the embeddings and the per-query APs.

The figures are drawn in `figures`; numbers become percentages in `formatting` only.
"""

import dataclasses
import logging
from pathlib import Path

import numpy as np

from siamese_reid import files
from siamese_reid.evaluation.protocol import protocol_record
from siamese_reid.figures import (
    plot_cmc,
    plot_loss_curves,
    plot_pair_distances,
    plot_retrieval_examples,
    plot_retrieval_per_epoch,
    save_figure,
)
from siamese_reid.formatting import metrics_table
from siamese_reid.runs import (
    CMC_FIGURE,
    GALLERY_EMBEDDINGS,
    LOSS_FIGURE,
    METRICS,
    QUERY_AVERAGE_PRECISIONS,
    QUERY_EMBEDDINGS,
    RETRIEVAL_EXAMPLES_FIGURE,
    RETRIEVAL_PER_EPOCH_FIGURE,
    THRESHOLD,
    THRESHOLD_FIGURE,
)

logger = logging.getLogger(__name__)


def ranking_metrics(ranking, num_query, num_gallery, protocol):
    """The metrics dictionary written to metrics.json (fractions, not percentages)."""
    cmc = ranking.cmc

    def rank(k):
        return float(cmc[min(k, len(cmc)) - 1])

    return {
        "rank1": rank(1),
        "rank5": rank(5),
        "rank10": rank(10),
        "mAP": ranking.mean_ap,
        "mINP": ranking.mean_inp,
        "standard_errors": standard_errors(ranking),
        "num_queries": int(num_query),
        "num_valid_queries": ranking.num_valid_queries,
        "num_skipped_queries": ranking.num_skipped_queries,
        "num_gallery": int(num_gallery),
        "protocol": protocol,
        "cmc": [float(x) for x in cmc],
    }


def standard_errors(ranking):
    """Standard errors of rank-1 and mAP over the scored queries: std / sqrt(n) of the per-query
    values (a hit indicator, an AP). With 75 queries and rank-1 near 50% that is about 0.06: a
    difference of a few points between two models on such a test set is noise."""
    scored = ranking.query_first_match_ranks >= 0
    per_query = {
        "rank1": (ranking.query_first_match_ranks[scored] == 0).astype(float),
        "mAP": ranking.query_average_precisions[scored],
    }
    count = int(scored.sum())
    return {
        name: float(np.std(values, ddof=1) / np.sqrt(count)) if count > 1 else float("nan")
        for name, values in per_query.items()
    }


def write_json(path, data):
    return files.write_json(path, data)


def write_training_curves(history, output_dir, split_name="query / gallery"):
    """Writes loss.png and retrieval_per_epoch.png (when evaluation ran); returns the paths."""
    figures = {
        LOSS_FIGURE: plot_loss_curves(history),
        RETRIEVAL_PER_EPOCH_FIGURE: plot_retrieval_per_epoch(history, split_name),
    }
    return [save_figure(figure, Path(output_dir) / name) for name, figure in figures.items() if figure is not None]


def write_threshold(threshold, split_name, metric, output_dir, positive, negative):
    """Writes threshold.json (what search.py uses) and threshold.png; returns the record."""
    record = {**dataclasses.asdict(threshold), "split": split_name, "metric": metric}
    write_json(Path(output_dir) / THRESHOLD, record)
    figure = plot_pair_distances(positive, negative, {f"threshold ({split_name})": threshold})
    save_figure(figure, Path(output_dir) / THRESHOLD_FIGURE)
    return record


def write_report(evaluation, query, gallery, split, settings, output_dir, extra=None, identity_names=None):
    """Writes metrics.json, cmc.png, retrieval_examples.png, the embeddings and per-query APs.

    Args:
      evaluation: an `Evaluation` of `query` against `gallery`.
      query, gallery: lists of `Sample`.
      split: which split they are, "test" or "validation"; metrics.json's "split".
      settings: the `EvaluationConfig` section the evaluation used.
      output_dir: folder the files are written to.
      extra: more entries for metrics.json (e.g. training time).
      identity_names: pid -> name, to label figures of folder-per-identity datasets.

    Returns:
      The metrics dictionary.
    """
    from siamese_reid.evaluation.embeddings import save_embeddings  # imports TensorFlow

    output_dir = Path(output_dir)
    metrics = ranking_metrics(
        evaluation.ranking, len(query), len(gallery), protocol_record(settings, evaluation.distance)
    )
    metrics.update(extra or {}, split=split)
    save_figure(plot_cmc(evaluation.ranking.cmc, split=split), output_dir / CMC_FIGURE)
    if settings.num_examples:
        rng = np.random.default_rng(0)
        chosen = rng.choice(len(query), min(settings.num_examples, len(query)), replace=False)
        figure = plot_retrieval_examples(
            sorted(chosen.tolist()),
            query,
            gallery,
            evaluation.rows,
            identity_names=identity_names,
            chosen="drawn at random (seed 0)",
        )
        save_figure(figure, output_dir / RETRIEVAL_EXAMPLES_FIGURE, dpi=110)
    save_embeddings(output_dir / QUERY_EMBEDDINGS, evaluation.query_features, query)
    save_embeddings(output_dir / GALLERY_EMBEDDINGS, evaluation.gallery_features, gallery)
    average_precisions = evaluation.ranking.query_average_precisions
    files.write_atomically(output_dir / QUERY_AVERAGE_PRECISIONS, lambda path: _save_array(path, average_precisions))
    write_json(output_dir / METRICS, metrics)  # last: with it, the folder's report is whole (runs.METRICS)
    logger.info(metrics_table(metrics, f"Evaluation on the {split} split"))
    return metrics


def _save_array(path, array):
    with open(path, "wb") as handle:
        np.save(handle, array)
