"""Embed query and gallery images with a model, rank, and score under the Market protocol.

No query x gallery matrix is kept: an `Evaluation` holds the features and a `rows` object that
recomputes any query's distances on demand (for figures and failure cases).
"""

import dataclasses
from pathlib import Path

import numpy as np

from siamese_reid.evaluation.distances import QueryGalleryDistances
from siamese_reid.evaluation.protocol import same_image_pairs
from siamese_reid.evaluation.ranking import RankingResult, evaluate_embeddings, evaluate_ranking
from siamese_reid.evaluation.rerank import RERANK_PARAMETERS, KReciprocalReranker

RERANKED = "k-reciprocal re-ranking"


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """A scored evaluation with everything needed to draw or inspect it.

    `rows` gives the distances the ranking was scored on (re-ranked ones when re-ranking was
    on), a query at a time (`rows[query_index]`) or a block at a time
    (`rows.distances(start, stop)`); `distance` says what they are, as recorded in
    metrics.json.
    """

    ranking: RankingResult
    rows: object
    distance: dict
    query_features: np.ndarray
    gallery_features: np.ndarray


def describe_distance(metric, rerank):
    """What `scoring_distance_rows` computes for these settings, as recorded in metrics.json."""
    if rerank:
        # The authors' re-ranking starts from squared euclidean distances whatever the metric.
        return {"name": RERANKED, "base": "squared euclidean", **RERANK_PARAMETERS}
    return {"name": metric}


def scoring_distance_rows(query_features, gallery_features, metric, rerank, rerank_parameters=None, verbose=False):
    """The query x gallery distances an evaluation ranks, as rows computed on demand:
    `metric`, or re-ranked ones (with `rerank_parameters`, by default the authors'; their
    preparation prints progress with `verbose`)."""
    if rerank:
        parameters = rerank_parameters or RERANK_PARAMETERS
        return KReciprocalReranker(query_features, gallery_features, verbose=verbose, **parameters)
    return QueryGalleryDistances(query_features, gallery_features, metric)


def evaluate_features(query_features, gallery_features, query_samples, gallery_samples, settings, verbose=False):
    """Scores precomputed features; `settings` is an `EvaluationConfig`.

    The plain metric is ranked by `evaluate_embeddings`, tile by tile, without the query x
    gallery matrix; re-ranked distances row block by row block.
    """
    labels = (
        np.array([s.pid for s in query_samples]),
        np.array([s.pid for s in gallery_samples]),
        np.array([s.camid for s in query_samples]),
        np.array([s.camid for s in gallery_samples]),
    )
    pairs = same_image_pairs(query_samples, gallery_samples)
    rows = scoring_distance_rows(query_features, gallery_features, settings.metric, settings.rerank, verbose=verbose)
    if settings.rerank:
        ranking = evaluate_ranking(rows, *labels, settings.max_rank, settings.ap_definition, same_image_pairs=pairs)
    else:
        ranking = evaluate_embeddings(
            query_features,
            gallery_features,
            *labels,
            metric=settings.metric,
            max_rank=settings.max_rank,
            ap_definition=settings.ap_definition,
            same_image_pairs=pairs,
        )
    distance = describe_distance(settings.metric, settings.rerank)
    return Evaluation(ranking, rows, distance, query_features, gallery_features)


def evaluate_model(model, query_samples, gallery_samples, image_size, settings, verbose=0, embeddings_dir=None):
    """Embeds both sets with `model` (flip test-time augmentation per settings) and scores.

    With `embeddings_dir`, the embeddings are written there batch by batch as they are
    computed (query_features.npy, gallery_features.npy) instead of being gathered in memory.
    """
    from siamese_reid.evaluation.embeddings import extract_embeddings  # imports TensorFlow

    def embed(samples, name):
        output_path = None if embeddings_dir is None else Path(embeddings_dir) / f"{name}_features.npy"
        return extract_embeddings(
            model,
            [s.path for s in samples],
            image_size,
            settings.batch_size,
            settings.flip_test,
            verbose,
            output_path=output_path,
        )

    query_features, gallery_features = embed(query_samples, "query"), embed(gallery_samples, "gallery")
    return evaluate_features(query_features, gallery_features, query_samples, gallery_samples, settings, verbose)
