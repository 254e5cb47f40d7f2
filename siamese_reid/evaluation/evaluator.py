"""Embed query and gallery images with a model, rank, and score under the Market protocol."""

import dataclasses

import numpy as np

from siamese_reid.evaluation.distances import compute_distances
from siamese_reid.evaluation.embeddings import extract_embeddings
from siamese_reid.evaluation.ranking import evaluate_ranking
from siamese_reid.evaluation.rerank import rerank_distances


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """A scored evaluation with everything needed to draw or inspect it."""

    ranking: object  # RankingResult
    distances: np.ndarray
    query_features: np.ndarray
    gallery_features: np.ndarray


def evaluate_features(query_features, gallery_features, query_samples, gallery_samples, settings):
    """Scores precomputed features; `settings` is an `EvaluationConfig`."""
    if settings.rerank:
        distances = rerank_distances(query_features, gallery_features)
    else:
        distances = compute_distances(query_features, gallery_features, settings.metric)
    ranking = evaluate_ranking(
        distances,
        np.array([s.pid for s in query_samples]),
        np.array([s.pid for s in gallery_samples]),
        np.array([s.camid for s in query_samples]),
        np.array([s.camid for s in gallery_samples]),
        max_rank=settings.max_rank,
        ap_definition=settings.ap_definition,
    )
    return Evaluation(ranking, distances, query_features, gallery_features)


def evaluate_model(model, query_samples, gallery_samples, image_size, settings, verbose=0):
    """Embeds both sets with `model` (flip test-time augmentation per settings) and scores."""

    def embed(samples):
        return extract_embeddings(
            model, [s.path for s in samples], image_size, settings.batch_size, settings.flip_test, verbose
        )

    return evaluate_features(embed(query_samples), embed(gallery_samples), query_samples, gallery_samples, settings)
