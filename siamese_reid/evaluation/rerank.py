"""k-reciprocal re-ranking (Zhong et al., CVPR 2017). Pure numpy.

Memory: at its peak five dense 4-byte (Q + G) x (Q + G) matrices (distances, neighbour ranks,
encodings, expanded encodings, one temporary): about 20 (Q + G)^2 bytes, i.e. 6.9 GiB for
Market-1501 (19,281 images).
Use it on query/gallery sets of that size or smaller.

Reference: Zhong et al., Re-ranking Person Re-identification with k-reciprocal Encoding,
https://arxiv.org/abs/1701.08398
"""

import numpy as np

# The authors' defaults, used for every evaluation and recorded in its metrics.json.
RERANK_PARAMETERS = {"k1": 20, "k2": 6, "lambda_value": 0.3}


def _all_distances(query_features, gallery_features):
    features = np.concatenate([query_features, gallery_features]).astype(np.float32)
    squared = np.square(features).sum(axis=1)
    distances = squared[:, None] + squared[None, :] - 2.0 * features @ features.T
    np.maximum(distances, 0.0, out=distances)
    return distances


def _reciprocal_neighbours(ranks, index, k):
    """Images among the k nearest of `index` that also have `index` among their k nearest."""
    forward = ranks[index, : k + 1]
    backward = ranks[forward, : k + 1]
    return forward[np.any(backward == index, axis=1)]


def _expanded_neighbours(ranks, index, k1):
    """R*(p, k1): the k-reciprocal set, expanded by candidates' half-size sets that overlap it."""
    neighbours = _reciprocal_neighbours(ranks, index, k1)
    expansion = [neighbours]
    half = int(round(k1 / 2))
    for candidate in neighbours:
        candidate_neighbours = _reciprocal_neighbours(ranks, candidate, half)
        overlap = np.intersect1d(candidate_neighbours, neighbours).size
        if overlap > 2.0 / 3.0 * candidate_neighbours.size:
            expansion.append(candidate_neighbours)
    return np.unique(np.concatenate(expansion))


def rerank_distances(query_features, gallery_features, k1=20, k2=6, lambda_value=0.3):
    """Returns re-ranked distances [num_query, num_gallery] (float32).

    Args:
      query_features, gallery_features: float arrays [n, dim].
      k1, k2: neighbourhood sizes of the k-reciprocal set and of the local query expansion.
      lambda_value: weight of the original distance in the final one.
    """
    num_query = len(query_features)
    distances = _all_distances(query_features, gallery_features)
    # Each column is scaled by its maximum, as in the authors' code.
    distances /= np.maximum(distances.max(axis=0, keepdims=True), 1e-12)
    distances = distances.T.copy()
    num_all = len(distances)
    ranks = np.argsort(distances, axis=1, kind="stable").astype(np.int32)
    encoding = np.zeros_like(distances)
    for index in range(num_all):
        neighbours = _expanded_neighbours(ranks, index, k1)
        weights = np.exp(-distances[index, neighbours])
        encoding[index, neighbours] = weights / weights.sum()
    if k2 > 1:  # local query expansion: average the encodings of the k2 nearest neighbours
        expanded = np.zeros_like(encoding)
        for column in range(k2):
            expanded += encoding[ranks[:, column]]
        encoding = expanded / k2
    jaccard = np.empty((num_query, num_all), dtype=np.float32)
    for index in range(num_query):
        support = np.flatnonzero(encoding[index])
        intersection = np.minimum(encoding[index, support][None, :], encoding[:, support]).sum(axis=1)
        jaccard[index] = 1.0 - intersection / (2.0 - intersection)
    final = jaccard * (1 - lambda_value) + distances[:num_query] * lambda_value
    return final[:, num_query:].astype(np.float32)
