"""Query x gallery distance matrices, computed in chunks of queries. Pure numpy."""

import numpy as np

from siamese_reid.errors import ReIDError

# float64 intermediates per chunk are bounded to this many elements (2 arrays of 256 MiB).
_CHUNK_ELEMENTS = 2**25


def compute_distances(query_features, gallery_features, metric="euclidean", chunk_size=None):
    """Returns float32 distances [num_query, num_gallery]; smaller is more similar.

    euclidean: ||q - g||_2, computed as sqrt(|q|^2 + |g|^2 - 2 q.g) clipped at 0;
    cosine: 1 - cos(q, g).
    Queries are processed `chunk_size` at a time (default: as many as keep the float64
    intermediates of one chunk under 2 x 256 MiB), so memory beyond the output is bounded
    whatever the gallery size.
    """
    if metric not in METRICS:
        raise ReIDError(f"distance metric must be one of {list(METRICS)}, got {metric!r}")
    query_features = np.asarray(query_features, dtype=np.float32)
    gallery_features = np.asarray(gallery_features, dtype=np.float32)
    if query_features.ndim != 2 or gallery_features.ndim != 2:
        raise ReIDError("features must be 2-D arrays [num_images, embedding_dim]")
    if query_features.shape[1] != gallery_features.shape[1]:
        raise ReIDError(
            f"query and gallery features differ in size: {query_features.shape[1]} vs {gallery_features.shape[1]}"
        )
    query_features, gallery_features = METRICS[metric](query_features), METRICS[metric](gallery_features)
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_ELEMENTS // max(len(gallery_features), 1))
    gallery_squared = np.square(gallery_features, dtype=np.float64).sum(axis=1)
    output = np.empty((len(query_features), len(gallery_features)), dtype=np.float32)
    gallery_transposed = gallery_features.T.astype(np.float64)
    for start in range(0, len(query_features), chunk_size):
        query_chunk = query_features[start : start + chunk_size]
        products = query_chunk.astype(np.float64) @ gallery_transposed
        if metric == "cosine":
            output[start : start + chunk_size] = 1.0 - products
            continue
        query_squared = np.square(query_chunk, dtype=np.float64).sum(axis=1)
        squared = query_squared[:, None] + gallery_squared[None, :] - 2.0 * products
        output[start : start + chunk_size] = np.sqrt(np.maximum(squared, 0.0))
    return output


def _unit_rows(features):
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


# evaluation.metric -> the feature normalisation it implies (cosine distance is computed as
# 1 - q.g of unit rows; euclidean uses the features as they are)
METRICS = {"euclidean": lambda features: features, "cosine": _unit_rows}
