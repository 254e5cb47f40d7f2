"""Evaluation under the Market-1501 protocol: distances, ranking metrics, re-ranking, models.

The ranking code is pure numpy and imports no TensorFlow; `evaluate_model`,
`extract_embeddings` and the embedding files need TensorFlow and are imported on first use.
"""

from siamese_reid.evaluation.distances import MatrixRows, QueryGalleryDistances, compute_distances
from siamese_reid.evaluation.evaluator import (
    Evaluation,
    describe_distance,
    evaluate_features,
    evaluate_model,
    scoring_distance_rows,
)
from siamese_reid.evaluation.protocol import DISTRACTOR_PID, JUNK_PID, protocol_gallery_mask, same_image_pairs
from siamese_reid.evaluation.ranking import (
    AP_DEFINITIONS,
    RankingResult,
    evaluate_embeddings,
    evaluate_ranking,
    top_k_gallery,
)
from siamese_reid.evaluation.rerank import KReciprocalReranker, rerank_distances

_NEEDS_TENSORFLOW = {"extract_embeddings", "save_embeddings", "load_embeddings", "embedding_input_size"}

__all__ = [
    "AP_DEFINITIONS",
    "DISTRACTOR_PID",
    "JUNK_PID",
    "Evaluation",
    "KReciprocalReranker",
    "RankingResult",
    "MatrixRows",
    "QueryGalleryDistances",
    "compute_distances",
    "describe_distance",
    "evaluate_embeddings",
    "evaluate_features",
    "evaluate_model",
    "evaluate_ranking",
    "protocol_gallery_mask",
    "rerank_distances",
    "same_image_pairs",
    "scoring_distance_rows",
    "top_k_gallery",
    *sorted(_NEEDS_TENSORFLOW),
]


def __getattr__(name):
    # PEP 562: the TensorFlow-backed functions load when first asked for, so a numpy-only user
    # of the ranking code does not pay TensorFlow's import time.
    if name in _NEEDS_TENSORFLOW:
        from siamese_reid.evaluation import embeddings

        return getattr(embeddings, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
