"""Embed query and gallery images with a model, rank, and score under the Market protocol."""

import dataclasses
from pathlib import Path

import numpy as np

from siamese_reid.evaluation.distances import compute_distances
from siamese_reid.evaluation.ranking import RankingResult, evaluate_ranking
from siamese_reid.evaluation.rerank import RERANK_PARAMETERS, rerank_distances

RERANKED = "k-reciprocal re-ranking"


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """A scored evaluation with everything needed to draw or inspect it.

    `distances` are the ones the ranking was scored on (re-ranked ones when re-ranking was
    on), and `distance` says what they are, as recorded in metrics.json.
    """

    ranking: RankingResult
    distances: np.ndarray
    distance: dict
    query_features: np.ndarray
    gallery_features: np.ndarray


def describe_distance(metric, rerank):
    """What `scoring_distances` computes for these settings, as recorded in metrics.json."""
    if rerank:
        # The authors' re-ranking starts from squared euclidean distances whatever the metric.
        return {"name": RERANKED, "base": "squared euclidean", **RERANK_PARAMETERS}
    return {"name": metric}


def scoring_distances(query_features, gallery_features, metric, rerank):
    """The query x gallery distances an evaluation ranks: `metric`, or re-ranked ones."""
    if rerank:
        return rerank_distances(query_features, gallery_features, **RERANK_PARAMETERS)
    return compute_distances(query_features, gallery_features, metric)


def same_image_pairs(query_samples, gallery_samples):
    """(query index, gallery index) of every image file that is in both sets, as an int array
    [n, 2]: a folder given as both query and gallery must not match itself."""
    gallery_rows = {}
    for column, sample in enumerate(gallery_samples):
        gallery_rows.setdefault(str(Path(sample.path).resolve()), []).append(column)
    pairs = [
        (row, column)
        for row, sample in enumerate(query_samples)
        for column in gallery_rows.get(str(Path(sample.path).resolve()), [])
    ]
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def evaluate_features(query_features, gallery_features, query_samples, gallery_samples, settings):
    """Scores precomputed features; `settings` is an `EvaluationConfig`."""
    distances = scoring_distances(query_features, gallery_features, settings.metric, settings.rerank)
    ranking = evaluate_ranking(
        distances,
        np.array([s.pid for s in query_samples]),
        np.array([s.pid for s in gallery_samples]),
        np.array([s.camid for s in query_samples]),
        np.array([s.camid for s in gallery_samples]),
        max_rank=settings.max_rank,
        ap_definition=settings.ap_definition,
        same_image_pairs=same_image_pairs(query_samples, gallery_samples),
    )
    distance = describe_distance(settings.metric, settings.rerank)
    return Evaluation(ranking, distances, distance, query_features, gallery_features)


def evaluate_model(model, query_samples, gallery_samples, image_size, settings, verbose=0):
    """Embeds both sets with `model` (flip test-time augmentation per settings) and scores."""
    from siamese_reid.evaluation.embeddings import extract_embeddings  # imports TensorFlow

    def embed(samples):
        return extract_embeddings(
            model, [s.path for s in samples], image_size, settings.batch_size, settings.flip_test, verbose
        )

    return evaluate_features(embed(query_samples), embed(gallery_samples), query_samples, gallery_samples, settings)
