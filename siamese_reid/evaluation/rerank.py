"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) on a sparse nearest-neighbour graph.

The authors' code holds (Q + G) x (Q + G) dense matrices, about 20 (Q + G)^2 bytes (164 GiB for
MSMT17). Everything the method needs follows from the k1 + 1 nearest neighbours of each of the
N = Q + G images (exact search with faiss) and from each image's farthest distance, so here:

- memory is O(N x k1 x k2): the neighbour graph and sparse encodings of a few hundred entries
  per image (an encoding is non-zero only on the expanded k-reciprocal set, k2 of them averaged);
- query x gallery distances are produced in chunks of queries (`KReciprocalReranker.distances`),
  each O(chunk x G), so no Q x G matrix needs to exist;
- time is two exact passes over the N x N distances (faiss for the neighbours, BLAS blocks for
  the row maxima) plus work proportional to the non-zeros and to Q x G.

Measured sizes and times are in docs/benchmarks.md (benchmarks/bench_rerank.py).

Reference: Zhong et al., Re-ranking Person Re-identification with k-reciprocal Encoding,
https://arxiv.org/abs/1701.08398 (authors' code: github.com/zhunzhong07/person-re-ranking)
"""

import logging
import time

import faiss
import numpy as np

from siamese_reid.errors import ReIDError
from siamese_reid.evaluation.distances import DistanceRows
from siamese_reid.evaluation.sparse_rows import (
    from_entries,
    gather_rows,
    ragged_arange,
    slice_rows,
    stack_rows,
    transpose,
)

logger = logging.getLogger(__name__)

# The authors' defaults, used for every evaluation and recorded in its metrics.json.
RERANK_PARAMETERS = {"k1": 20, "k2": 6, "lambda_value": 0.3}

# Working-set sizes (elements) of the chunked steps: about 64 MB of float32 per distance block,
# a few hundred MB for the Jaccard step's per-entry arrays.
_BLOCK_ELEMENTS = 2**24
_JACCARD_ENTRIES = 2**22
_ENCODING_ROWS = 2048


def _chunks(total, size, verbose=False, label=""):
    """[start, stop) chunks of range(total); when verbose, reports progress every ~10 s and at the end."""
    started = last_report = time.perf_counter()
    for start in range(0, total, size):
        stop = min(start + size, total)
        yield start, stop
        now = time.perf_counter()
        if verbose and (now - last_report >= 10.0 or stop == total):
            logger.info(f"re-ranking: {label} {stop:,}/{total:,} ({now - started:.0f} s)")
            last_report = now


def _squared_distances(left, left_norms, right, right_norms):
    """||left_i - right_j||^2 as float32 [len(left), len(right)], computed in place from one product."""
    block = left @ right.T
    block *= -2.0
    block += left_norms[:, None]
    block += right_norms[None, :]
    return np.maximum(block, 0.0, out=block)


def _nearest_neighbours(features, k, verbose):
    """The k nearest of every image by squared euclidean distance, itself first: int64 [N, k].

    Self is put first explicitly: with exact duplicates (or float rounding of a zero distance)
    the search may list another image before it, and the method assumes rank 0 is the image.
    Other exact ties keep faiss's order (the authors' unstable argsort leaves them unspecified).
    """
    index = faiss.IndexFlatL2(features.shape[1])
    index.add(features)
    ranks = np.empty((len(features), k), dtype=np.int64)
    for start, stop in _chunks(len(features), 8192, verbose, "nearest neighbours of"):
        ranks[start:stop] = index.search(features[start:stop], k)[1]
    own = np.arange(len(features))[:, None]
    others = np.where(ranks == own, -1, ranks)
    others = np.take_along_axis(others, np.argsort(others < 0, axis=1, kind="stable"), axis=1)
    return np.concatenate([own, others[:, : k - 1]], axis=1)


def _row_maxima(features, squared_norms, verbose):
    """Each image's largest squared distance to any image: the authors' normaliser."""
    maxima = np.empty(len(features), dtype=np.float32)
    rows = max(1, _BLOCK_ELEMENTS // len(features))
    for start, stop in _chunks(len(features), rows, verbose, "farthest distances of"):
        block = _squared_distances(features[start:stop], squared_norms[start:stop], features, squared_norms)
        maxima[start:stop] = block.max(axis=1)
    return np.maximum(maxima, 1e-12)


def _reciprocal(ranks, rows, k):
    """R(p, k) for p in `rows`: the k + 1 nearest of p, and which of them have p among their k + 1
    nearest. Returns (neighbours [len(rows), k + 1], reciprocal bool [len(rows), k + 1])."""
    neighbours = ranks[rows, : k + 1]
    backward = ranks[neighbours, : k + 1]
    return neighbours, (backward == rows[:, None, None]).any(axis=2)


def _expanded_sets(ranks, rows, k1):
    """R*(p, k1) for p in `rows`: the k-reciprocal set joined with each member's half-size set
    (k = round(k1 / 2)) that shares more than 2/3 of its images with it.

    Returns (sorted members padded with `len(ranks)` [len(rows), width], bool mask of real ones).
    """
    neighbours, reciprocal = _reciprocal(ranks, rows, k1)
    members = np.where(reciprocal, neighbours, -1)
    candidates, candidate_reciprocal = _reciprocal(ranks, neighbours.reshape(-1), int(round(k1 / 2)))
    candidate_members = np.where(candidate_reciprocal, candidates, -1).reshape(*neighbours.shape, -1)
    size = candidate_reciprocal.reshape(candidate_members.shape).sum(axis=2)
    in_set = (candidate_members[..., None] == members[:, None, None, :]) & (candidate_members[..., None] >= 0)
    shared = in_set.any(axis=3).sum(axis=2)
    accepted = reciprocal & (shared > 2.0 / 3.0 * size)
    expansion = np.where(accepted[..., None], candidate_members, -1).reshape(len(rows), -1)
    padded = np.concatenate([members, expansion], axis=1)
    padded = np.sort(np.where(padded < 0, len(ranks), padded), axis=1)
    real = padded < len(ranks)
    real[:, 1:] &= padded[:, 1:] != padded[:, :-1]
    return padded, real


def _encodings(features, ranks, row_maxima, k1, verbose):
    """V: for each image p, exp(-normalised distance) on R*(p, k1), normalised to sum 1."""
    parts = []
    for start, stop in _chunks(len(features), _ENCODING_ROWS, verbose, "k-reciprocal sets of"):
        rows = np.arange(start, stop)
        members, real = _expanded_sets(ranks, rows, k1)
        owners = np.repeat(np.arange(len(rows)), real.sum(axis=1))
        columns = members[real]
        difference = features[rows[owners]] - features[columns]
        distances = np.einsum("ij,ij->i", difference, difference) / row_maxima[rows[owners]]
        weights = np.exp(-distances.astype(np.float64))
        weights /= np.bincount(owners, weights=weights, minlength=len(rows))[owners]
        parts.append(from_entries(owners, columns, weights, len(rows)))
    return stack_rows(parts)


def _local_query_expansion(encodings, ranks, k2, verbose):
    """V_qe(p): the mean of the encodings of p's k2 nearest neighbours (p itself first)."""
    num_images = len(ranks)
    neighbours = ranks[:, :k2]
    k2 = neighbours.shape[1]
    parts = []
    rows = max(1, _ENCODING_ROWS // k2)
    for start, stop in _chunks(num_images, rows, verbose, "query expansion of"):
        owners, columns, values = gather_rows(encodings, neighbours[start:stop].reshape(-1))
        keys = (owners // k2) * num_images + columns
        unique_keys, inverse = np.unique(keys, return_inverse=True)
        means = np.bincount(inverse, weights=values) / k2
        parts.append(from_entries(unique_keys // num_images, unique_keys % num_images, means, stop - start))
    return stack_rows(parts)


def _check_inputs(query_features, gallery_features, k1, k2, lambda_value):
    for name, features in (("query_features", query_features), ("gallery_features", gallery_features)):
        if features.ndim != 2 or len(features) == 0:
            raise ReIDError(f"{name} must be a non-empty [images, dim] array, got shape {features.shape}")
        if not np.isfinite(features).all():
            raise ReIDError(f"{name} contain NaN or infinity; re-extract the embeddings")
    if query_features.shape[1] != gallery_features.shape[1]:
        raise ReIDError(
            f"query and gallery embeddings differ in size ({query_features.shape[1]} vs "
            f"{gallery_features.shape[1]}); extract both with the same model"
        )
    for name, value in (("k1", k1), ("k2", k2)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ReIDError(f"re-ranking needs a positive integer {name}, got {value!r}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ReIDError(f"re-ranking needs lambda_value in [0, 1], got {lambda_value!r}")


class KReciprocalReranker(DistanceRows):
    """k-reciprocal re-ranking with memory O((Q + G) x k1 x k2); distances in chunks of queries.

    The constructor does the work shared by all queries (neighbour graph, normalisers, sparse
    encodings with local query expansion); `distances(start, stop)` then gives the re-ranked
    distances of queries [start, stop) to the whole gallery. It has the row interface of
    `QueryGalleryDistances` (`shape`, `rows_per_block`, `distances`, `rows[query_index]`), so
    `evaluate_ranking` ranks it block by block without a Q x G matrix.

    As in the authors' code: distances are squared euclidean, each image's row of the
    (Q + G) x (Q + G) matrix is divided by its maximum, ranks come from those distances with the
    image itself first, the Jaccard distance is 1 - sum(min) / (2 - sum(min)) (encodings sum to
    1), and the result is (1 - lambda) x Jaccard + lambda x normalised distance.

    Args:
      query_features: float array [num_query, dim].
      gallery_features: float array [num_gallery, dim].
      k1: size of the k-reciprocal neighbourhood (its half-size sets expand it).
      k2: number of nearest neighbours averaged by the local query expansion (1: none).
      lambda_value: weight of the original distance in the final one.
      verbose: print progress of the precomputation (minutes at MSMT17 size).

    Memory held: the features (N x dim float32) and the sparse encodings, O(N x k1 x k2).

    Reference: Zhong et al., Re-ranking Person Re-identification with k-reciprocal Encoding,
    CVPR 2017, https://arxiv.org/abs/1701.08398
    """

    def __init__(self, query_features, gallery_features, k1=20, k2=6, lambda_value=0.3, verbose=False):
        query_features, gallery_features = np.asarray(query_features), np.asarray(gallery_features)
        _check_inputs(query_features, gallery_features, k1, k2, lambda_value)
        features = np.ascontiguousarray(np.concatenate([query_features, gallery_features]), dtype=np.float32)
        self.num_query, self.num_gallery = len(query_features), len(gallery_features)
        self.k1, self.k2, self.lambda_value = k1, k2, lambda_value
        self.rows_per_block = max(1, _BLOCK_ELEMENTS // self.num_gallery)  # 64 MB float32 blocks
        started = time.perf_counter()
        self._features = features
        self._squared_norms = np.square(features).sum(axis=1)
        self._gallery64 = None  # the gallery in float64, made on the first call of distances()
        self._row_maxima = _row_maxima(features, self._squared_norms, verbose)
        ranks = _nearest_neighbours(features, min(max(k1 + 1, k2), len(features)), verbose)
        encodings = _encodings(features, ranks, self._row_maxima, k1, verbose)
        if k2 > 1:
            encodings = _local_query_expansion(encodings, ranks, k2, verbose)
        self._query_encodings = slice_rows(encodings, 0, self.num_query)
        self._gallery_index = transpose(slice_rows(encodings, self.num_query, len(features)), len(features))
        # Entries each query's Jaccard step touches, to size the batches of `distances`.
        owners, columns, _ = gather_rows(self._query_encodings, np.arange(self.num_query))
        touched = self._gallery_index.indptr[columns + 1] - self._gallery_index.indptr[columns]
        self._query_work = np.bincount(owners, weights=touched, minlength=self.num_query).astype(np.int64)
        if verbose:
            logger.info(
                f"re-ranking: prepared {len(features):,} images in {time.perf_counter() - started:.0f} s, "
                f"holding {self.nbytes / 2**20:.0f} MiB"
            )

    @property
    def nbytes(self):
        """Bytes of the arrays this object holds (features, normalisers, encodings, index)."""
        arrays = [self._features, self._squared_norms, self._row_maxima, self._query_work]
        arrays += [*self._query_encodings, *self._gallery_index]
        return sum(array.nbytes for array in arrays)

    def distances(self, start, stop):
        """Re-ranked distances of queries [start, stop) to every gallery image; a `stop` past
        the last query is cut there, as in slicing.

        Returns:
          float32 array [stop - start, num_gallery]. Extra memory is O((stop - start) x num_gallery).
        """
        stop = min(stop, self.num_query)
        if not 0 <= start <= stop:
            raise ReIDError(f"query range [{start}, {stop}) is outside [0, {self.num_query})")
        result = np.empty((stop - start, self.num_gallery), dtype=np.float32)
        gallery = slice(self.num_query, None)
        for first, last in self._batches(start, stop):
            shared = self._shared_mass(first, last)
            jaccard = 1.0 - shared / (2.0 - shared)
            # float64 products: a float32 product rounds differently with the number of rows in
            # the call, and a query's row must not depend on which block computed it.
            original = _squared_distances(
                self._features[first:last].astype(np.float64),
                self._squared_norms[first:last],
                self._gallery_features64(),
                self._squared_norms[gallery],
            ).astype(np.float32)
            original /= self._row_maxima[first:last, None]
            result[first - start : last - start] = (1 - self.lambda_value) * jaccard + self.lambda_value * original
        return result

    def _gallery_features64(self):
        if self._gallery64 is None:
            self._gallery64 = self._features[self.num_query :].astype(np.float64)
        return self._gallery64

    def _batches(self, start, stop):
        """Query ranges whose Jaccard step stays within the working-set budget (one query at least)."""
        max_rows = max(1, _BLOCK_ELEMENTS // 4 // self.num_gallery)
        while start < stop:
            work = np.cumsum(self._query_work[start : min(stop, start + max_rows)])
            end = start + max(1, int(np.searchsorted(work, _JACCARD_ENTRIES, side="right")))
            yield start, end
            start = end

    def _shared_mass(self, start, stop):
        """sum_j min(V_q[j], V_g[j]) for queries [start, stop) x gallery: float64 [stop - start, G].

        Walks the inverted index from each query's non-zeros, so gallery images that share no
        support with the query get 0 (Jaccard distance 1) without being visited.
        """
        owners, columns, values = gather_rows(self._query_encodings, np.arange(start, stop))
        index = self._gallery_index
        starts = index.indptr[columns]
        lengths = index.indptr[columns + 1] - starts
        positions = ragged_arange(starts, lengths)
        minima = np.minimum(np.repeat(values, lengths), index.values[positions])
        keys = np.repeat(owners * self.num_gallery, lengths) + index.columns[positions]
        shared = np.bincount(keys, weights=minima, minlength=(stop - start) * self.num_gallery)
        return shared.reshape(stop - start, self.num_gallery)


def rerank_distances(query_features, gallery_features, k1=20, k2=6, lambda_value=0.3, verbose=False):
    """Re-ranked distances as one [num_query, num_gallery] float32 matrix.

    For sets whose Q x G matrix fits in memory; streaming evaluation calls
    `KReciprocalReranker.distances` chunk by chunk instead.

    Args:
      query_features, gallery_features: float arrays [n, dim].
      k1, k2: neighbourhood sizes of the k-reciprocal set and of the local query expansion.
      lambda_value: weight of the original distance in the final one.
      verbose: print progress.
    """
    reranker = KReciprocalReranker(query_features, gallery_features, k1, k2, lambda_value, verbose)
    result = np.empty((reranker.num_query, reranker.num_gallery), dtype=np.float32)
    for start, stop in _chunks(reranker.num_query, reranker.rows_per_block, verbose, "re-ranked queries"):
        result[start:stop] = reranker.distances(start, stop)
    return result
