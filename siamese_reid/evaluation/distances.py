"""Query x gallery distance matrices, computed in chunks of queries. Pure numpy."""

import numpy as np

from siamese_reid.errors import ReIDError

METRICS = ("euclidean", "cosine")


def compute_distances(query_features, gallery_features, metric="euclidean", chunk_size=2048):
    """Returns float32 distances [num_query, num_gallery]; smaller is more similar.

    euclidean: ||q - g||_2, computed as sqrt(|q|^2 + |g|^2 - 2 q.g) clipped at 0;
    cosine: 1 - cos(q, g).
    Only one chunk of float64 intermediates exists at a time.
    """
    if metric not in METRICS:
        raise ReIDError(f"distance metric must be one of {METRICS}, got {metric!r}")
    query_features = np.asarray(query_features, dtype=np.float32)
    gallery_features = np.asarray(gallery_features, dtype=np.float32)
    if query_features.ndim != 2 or gallery_features.ndim != 2:
        raise ReIDError("features must be 2-D arrays [num_images, embedding_dim]")
    if query_features.shape[1] != gallery_features.shape[1]:
        raise ReIDError(
            f"query and gallery features differ in size: {query_features.shape[1]} vs "
            f"{gallery_features.shape[1]}"
        )
    if metric == "cosine":
        query_features = _unit_rows(query_features)
        gallery_features = _unit_rows(gallery_features)
    gallery_squared = np.square(gallery_features, dtype=np.float64).sum(axis=1)
    output = np.empty((len(query_features), len(gallery_features)), dtype=np.float32)
    for start in range(0, len(query_features), chunk_size):
        query_chunk = query_features[start : start + chunk_size]
        products = query_chunk.astype(np.float64) @ gallery_features.T.astype(np.float64)
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
