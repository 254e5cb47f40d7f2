"""CMC, mAP and mINP under the Market-1501 protocol. Pure numpy.

Speed and memory: no argsort of the distance matrix. For each query only the ranks of its
true matches matter, and the rank of a match is the number of scored gallery images that come
before it: those with a smaller distance, plus those with an equal distance and a smaller
gallery index (ties keep gallery order, as a stable sort would). Only images no farther than
the query's farthest match can come before one, and their count below each match follows from
one histogram against the sorted match distances. Rows of distances are consumed block by
block: `evaluate_ranking` reads a given matrix, `evaluate_embeddings` computes the rows from
the features and never holds the matrix.
"""

import dataclasses

import numpy as np

from siamese_reid.errors import ReIDError
from siamese_reid.evaluation.distances import DEFAULT_MEMORY_BUDGET_BYTES, QueryGalleryDistances, as_rows
from siamese_reid.evaluation.protocol import JUNK_PID

# Bytes a query block holds per true match while it is ranked: its column (int64), distance
# (float32), column in ranking order (int64) and count of images before it (int64), and slack.
_MATCH_BYTES = 32


@dataclasses.dataclass(frozen=True)
class RankingResult:
    """Metrics as fractions in [0, 1]; `cmc[k]` is the rank-(k+1) accuracy.

    `query_average_precisions` holds each query's AP (NaN for skipped queries), for finding
    failure cases; `query_first_match_ranks` the 0-based rank of each query's first true match
    (-1 for skipped queries), from which rank-k of any subset of queries follows.
    """

    cmc: np.ndarray
    mean_ap: float
    mean_inp: float
    num_valid_queries: int
    num_skipped_queries: int
    query_average_precisions: np.ndarray
    query_first_match_ranks: np.ndarray


def _check_inputs(shape, query_pids, gallery_pids, query_camids, gallery_camids):
    num_query, num_gallery = shape
    if num_query == 0 or num_gallery == 0:
        raise ReIDError(f"empty query or gallery set (distances of shape {shape})")
    for name, array, expected in (
        ("query_pids", query_pids, num_query),
        ("query_camids", query_camids, num_query),
        ("gallery_pids", gallery_pids, num_gallery),
        ("gallery_camids", gallery_camids, num_gallery),
    ):
        if array.shape != (expected,):
            raise ReIDError(f"{name} has shape {array.shape}, expected ({expected},) to match distances")


def _check_finite(chunk, start):
    if not np.isfinite(chunk).all():
        row = start + int(np.argwhere(~np.isfinite(chunk))[0, 0])
        raise ReIDError(f"distances contain NaN or infinity (first at query {row})")


def _torchreid_average_precision(ranks):
    """Mean of the precision at each correct match (torchreid, fast-reid).

    `ranks`: sorted 0-based ranks, among valid gallery images, of all true matches.
    """
    hits = np.arange(1, len(ranks) + 1)
    return np.mean(hits / (ranks + 1))


def _market_official_average_precision(ranks):
    """Market-1501's official `compute_AP.m`: the trapezoid rule over recall.

    The official loop walks the valid ranking and updates the "old precision" at every
    position, not only at matches; each match adds (1 / matches) x (old + new precision) / 2.
    At a match of rank r (0-based) with i matches up to it, the new precision is i / (r + 1)
    and the old one, from position r - 1, is (i - 1) / r (1 at r = 0, its initial value).
    A single match at rank 100 thus scores (0 + 1/100) / 2 = 0.005.
    """
    hits = np.arange(1, len(ranks) + 1)
    precision = hits / (ranks + 1)
    previous = np.where(ranks > 0, (hits - 1) / np.maximum(ranks, 1), 1.0)
    return np.sum((previous + precision) / 2) / len(ranks)


# evaluation.ap_definition -> AP from the sorted 0-based ranks of a query's true matches
AP_DEFINITIONS = {
    "torchreid": _torchreid_average_precision,
    "market_official": _market_official_average_precision,
}


class _Gallery:
    """The gallery side of the protocol, indexed once: which columns share an identity, which
    are junk, and which are the same image file as a query. O(gallery) memory."""

    def __init__(self, gallery_pids, gallery_camids, num_query, same_image_pairs):
        self.pids, self.camids = gallery_pids, gallery_camids
        self.by_pid = np.argsort(gallery_pids, kind="stable")  # columns grouped by identity, in order
        self.sorted_pids = gallery_pids[self.by_pid]
        pairs = np.zeros((0, 2), np.int64) if same_image_pairs is None else np.asarray(same_image_pairs, np.int64)
        pairs = pairs.reshape(-1, 2)
        pairs = pairs[np.argsort(pairs[:, 0], kind="stable")]
        self.same_image_columns = pairs[:, 1]
        self.same_image_bounds = np.searchsorted(pairs[:, 0], np.arange(num_query + 1))

    def identity_sizes(self, query_pids):
        """Gallery images of each query's identity: at least its true matches (junk queries: 0)."""
        sizes = np.searchsorted(self.sorted_pids, query_pids, "right") - np.searchsorted(self.sorted_pids, query_pids)
        return np.where(query_pids == JUNK_PID, 0, sizes)

    def same_image(self, query_index):
        start, stop = self.same_image_bounds[query_index], self.same_image_bounds[query_index + 1]
        return self.same_image_columns[start:stop]

    def true_matches(self, query_index, query_pid, query_camid):
        """Columns of the query's identity from another camera, itself excluded, in order."""
        if query_pid == JUNK_PID:  # a junk query has only junk "matches", which the protocol ignores
            return np.zeros(0, np.int64)
        start, stop = np.searchsorted(self.sorted_pids, [query_pid, query_pid + 1])
        columns = self.by_pid[start:stop]
        columns = columns[self.camids[columns] != query_camid]
        itself = self.same_image(query_index)
        return columns[~np.isin(columns, itself)] if len(itself) else columns

    def scored(self, columns, query_index, query_pid, query_camid):
        """Which of `columns` the protocol keeps for this query (bool)."""
        pids = self.pids[columns]
        keep = (pids != JUNK_PID) & ~((pids == query_pid) & (self.camids[columns] == query_camid))
        itself = self.same_image(query_index)
        return keep & ~np.isin(columns, itself) if len(itself) else keep


def _sorted_matches(match_distances, match_columns):
    """The matches in ranking order: by distance, ties by gallery column (columns ascend)."""
    order = np.argsort(match_distances, kind="stable")
    return match_distances[order], match_columns[order]


def _count_before(sorted_match_distances, sorted_match_columns, distances, columns):
    """How many of the scored non-match gallery images (`distances`, `columns`) come before
    each match, for matches in ranking order. Additive over any split of the gallery.

    An image comes before a match when it is nearer, or as near with a smaller column. Counted
    with a histogram against the sorted match distances: O(images x log matches) time and
    O(images + matches) memory, however many matches a query has.
    """
    num_matches = len(sorted_match_distances)
    # bins[i] = number of matches at distance <= d_i: image i is strictly nearer than the k-th
    # match exactly when bins[i] <= k.
    bins = np.searchsorted(sorted_match_distances, distances, side="right")
    before = np.cumsum(np.bincount(bins, minlength=num_matches + 1))[:num_matches]
    tied = bins > np.searchsorted(sorted_match_distances, distances, side="left")
    if tied.any():
        before += _ties_before(sorted_match_distances, sorted_match_columns, distances[tied], columns[tied])
    return before


def _ties_before(sorted_match_distances, sorted_match_columns, tied_distances, tied_columns):
    """For each match, the tied images (at exactly its distance) with a smaller column."""
    values = np.unique(sorted_match_distances)
    stride = int(max(sorted_match_columns.max(), tied_columns.max())) + 1
    tied_keys = np.sort(np.searchsorted(values, tied_distances) * stride + tied_columns)
    group = np.searchsorted(values, sorted_match_distances) * stride
    return np.searchsorted(tied_keys, group + sorted_match_columns) - np.searchsorted(tied_keys, group)


def _is_member(columns, sorted_columns):
    """Whether each of `columns` is in the ascending array `sorted_columns` (bool)."""
    positions = np.minimum(np.searchsorted(sorted_columns, columns), len(sorted_columns) - 1)
    return sorted_columns[positions] == columns


def _scored_non_matches(columns, matches, gallery, query_index, query_pid, query_camid):
    keep = gallery.scored(columns, query_index, query_pid, query_camid) & ~_is_member(columns, matches)
    return columns[keep]


class _RankingAccumulator:
    """Collects per-query results as distances arrive: whole rows, or gallery slices."""

    def __init__(self, query_pids, query_camids, gallery, max_rank, ap_definition):
        self.query_pids, self.query_camids, self.gallery = query_pids, query_camids, gallery
        self.max_rank = max_rank
        self.average_precision = AP_DEFINITIONS[ap_definition]
        self.first_match_counts = np.zeros(max_rank + 1, dtype=np.int64)
        self.average_precisions = np.full(len(query_pids), np.nan)
        self.first_match_ranks = np.full(len(query_pids), -1, dtype=np.int64)
        self.inverse_negative_penalties = []

    def matches(self, query_index):
        return self.gallery.true_matches(query_index, self.query_pids[query_index], self.query_camids[query_index])

    def non_matches(self, columns, matches, query_index):
        """The scored gallery images among `columns` that are not true matches."""
        pid, camid = self.query_pids[query_index], self.query_camids[query_index]
        return _scored_non_matches(columns, matches, self.gallery, query_index, pid, camid)

    def add_rows(self, start, rows):
        """Scores queries start, start + 1, ... from their whole rows of distances."""
        _check_finite(rows, start)
        for offset, query_distances in enumerate(rows):
            index = start + offset
            matches = self.matches(index)
            if len(matches) == 0:
                continue
            sorted_distances, sorted_columns = _sorted_matches(query_distances[matches], matches)
            nearer = np.flatnonzero(query_distances <= sorted_distances[-1])
            others = self.non_matches(nearer, matches, index)
            before = _count_before(sorted_distances, sorted_columns, query_distances[others], others)
            self.add_ranks(index, np.arange(len(matches)) + before)

    def add_ranks(self, index, ranks):
        """Records a query from the increasing 0-based ranks of its true matches."""
        self.first_match_counts[min(ranks[0], self.max_rank)] += 1
        self.first_match_ranks[index] = ranks[0]
        self.average_precisions[index] = self.average_precision(ranks)
        self.inverse_negative_penalties.append(len(ranks) / (ranks[-1] + 1))

    def result(self):
        num_valid = len(self.inverse_negative_penalties)
        if num_valid == 0:
            raise ReIDError("no query has a valid match in the gallery (all matches filtered out)")
        return RankingResult(
            cmc=np.cumsum(self.first_match_counts[: self.max_rank]) / num_valid,
            mean_ap=float(np.nanmean(self.average_precisions)),
            mean_inp=float(np.mean(self.inverse_negative_penalties)),
            num_valid_queries=num_valid,
            num_skipped_queries=len(self.query_pids) - num_valid,
            query_average_precisions=self.average_precisions,
            query_first_match_ranks=self.first_match_ranks,
        )


def _accumulator(query_pids, gallery_pids, query_camids, gallery_camids, max_rank, ap_definition, pairs):
    if ap_definition not in AP_DEFINITIONS:
        raise ReIDError(f"ap_definition must be one of {list(AP_DEFINITIONS)}, got {ap_definition!r}")
    if max_rank < 1:
        raise ReIDError(f"max_rank must be >= 1, got {max_rank}")
    gallery = _Gallery(gallery_pids, gallery_camids, len(query_pids), pairs)
    return _RankingAccumulator(query_pids, query_camids, gallery, max_rank, ap_definition)


def evaluate_ranking(
    distances,
    query_pids,
    gallery_pids,
    query_camids,
    gallery_camids,
    max_rank=50,
    ap_definition="torchreid",
    chunk_size=None,
    same_image_pairs=None,
):
    """Evaluates query x gallery distances under the Market-1501 protocol, block by block.

    Protocol, for each query:
      * gallery images of the same identity taken by the same camera are ignored: re-ID asks
        to find a person across cameras, and same-camera shots are near-duplicates;
      * gallery images with identity -1 (junk: bad detections) are ignored, as in the
        official code, so they count neither as matches nor as errors;
      * identity 0 (distractors) stays in the gallery as a negative;
      * a query left with no valid match is skipped (and counted in `num_skipped_queries`),
        since no rank or AP can be defined for it;
      * tied distances keep gallery order (the earlier gallery image ranks first).

    Args:
      distances: float array [num_query, num_gallery], or distances computed on demand: any
        object with `shape`, `rows_per_block` and `distances(start, stop)`, such as
        `QueryGalleryDistances` or a re-ranker (no query x gallery matrix is then held).
        Smaller means more similar.
      query_pids, gallery_pids: int arrays [num_query], [num_gallery].
      query_camids, gallery_camids: int arrays, same shapes.
      max_rank: length of the CMC curve (may exceed the gallery size).
      ap_definition: a key of `AP_DEFINITIONS`: "torchreid" (mean precision at each match)
        or "market_official" (the official Market-1501 code's trapezoid rule).
      chunk_size: with a matrix, queries ranked together (bounds each block's temporaries).
      same_image_pairs: optional int array [n, 2] of (query index, gallery index) pairs that
        are the same image file (a folder used as both query and gallery): each is ignored for
        its query, so no image ever counts as its own match.

    Returns:
      A `RankingResult`. mINP follows Ye et al.: for each query, the number of matches divided
      by the 1-based rank of the last (hardest) match.

    Reference: Zheng et al., Scalable Person Re-identification: A Benchmark, ICCV 2015;
    Ye et al., Deep Learning for Person Re-identification: A Survey and Outlook, TPAMI 2021.
    """
    rows = as_rows(distances, chunk_size)
    query_pids, gallery_pids = np.asarray(query_pids), np.asarray(gallery_pids)
    query_camids, gallery_camids = np.asarray(query_camids), np.asarray(gallery_camids)
    _check_inputs(rows.shape, query_pids, gallery_pids, query_camids, gallery_camids)
    accumulator = _accumulator(
        query_pids, gallery_pids, query_camids, gallery_camids, max_rank, ap_definition, same_image_pairs
    )
    for start in range(0, rows.shape[0], rows.rows_per_block):
        accumulator.add_rows(start, rows.distances(start, start + rows.rows_per_block))
    return accumulator.result()


def evaluate_embeddings(
    query_features,
    gallery_features,
    query_pids,
    gallery_pids,
    query_camids,
    gallery_camids,
    metric="euclidean",
    max_rank=50,
    ap_definition="torchreid",
    memory_budget_bytes=None,
    same_image_pairs=None,
):
    """`evaluate_ranking(compute_distances(...))` without the query x gallery matrix.

    Distances are computed a block of queries at a time (`QueryGalleryDistances`) and each
    block is ranked and dropped, so memory beyond the features stays within
    `memory_budget_bytes` (default 256 MiB) for the distances, a quarter more for the true
    matches of the queries being ranked (a block holds fewer queries when they have many), and
    O(gallery) index arrays: whatever the number of queries, and however many true matches
    they have (beyond a quarter of the budget only for a single query with more matches than
    that). Returns the same `RankingResult`: identical ranks, ties in gallery order.

    Args: as `evaluate_ranking`, with the features [num_query, dim] and [num_gallery, dim] in
      place of the matrix and `metric` ("euclidean" or "cosine") to compare them with.
    """
    distances = QueryGalleryDistances(query_features, gallery_features, metric, memory_budget_bytes)
    query_pids, gallery_pids = np.asarray(query_pids), np.asarray(gallery_pids)
    query_camids, gallery_camids = np.asarray(query_camids), np.asarray(gallery_camids)
    _check_inputs(distances.shape, query_pids, gallery_pids, query_camids, gallery_camids)
    accumulator = _accumulator(
        query_pids, gallery_pids, query_camids, gallery_camids, max_rank, ap_definition, same_image_pairs
    )
    match_counts = accumulator.gallery.identity_sizes(query_pids)
    max_matches = (memory_budget_bytes or DEFAULT_MEMORY_BUDGET_BYTES) // 4 // _MATCH_BYTES
    for query_start, query_stop in distances.query_blocks():
        for start, stop in _cut_by_matches(match_counts, query_start, query_stop, max_matches):
            _rank_query_block(distances, accumulator, start, stop)
    return accumulator.result()


def _cut_by_matches(match_counts, start, stop, max_matches):
    """[start, stop) cut into consecutive ranges of queries with at most `max_matches` true
    matches in all (a single query at least)."""
    while start < stop:
        total = np.cumsum(match_counts[start:stop])
        end = start + max(1, int(np.searchsorted(total, max_matches, side="right")))
        yield start, end
        start = end


def _rank_query_block(distances, accumulator, query_start, query_stop):
    """Scores queries [query_start, query_stop) from tiles of their distances: their matches
    first (O(matches of the block)), then each gallery slice adds what it holds to the counts
    of the matches it can precede."""
    indices = range(query_start, query_stop)
    all_matches = {index: accumulator.matches(index) for index in indices}
    sorted_matches = {
        index: _sorted_matches(distances.pairs(index, matches), matches)
        for index, matches in all_matches.items()
        if len(matches)
    }
    before = {index: np.zeros(len(matches[0]), np.int64) for index, matches in sorted_matches.items()}
    for gallery_start, tile in distances.gallery_tiles(query_start, query_stop):
        _check_finite(tile, query_start)
        for index, counts in before.items():
            matches, row = all_matches[index], tile[index - query_start]
            counts += _count_row_slice(accumulator, index, sorted_matches[index], matches, row, gallery_start)
        tile = row = None  # freed before the next tile is computed: the budget holds one tile, not two
    for index, counts in before.items():
        accumulator.add_ranks(index, np.arange(len(counts)) + counts)


def _count_row_slice(accumulator, index, sorted_matches, matches, row, gallery_start):
    """What a slice of one query's row (gallery images from `gallery_start`) adds to the
    counts of images before each of its matches."""
    nearer = np.flatnonzero(row <= sorted_matches[0][-1])
    others = accumulator.non_matches(nearer + gallery_start, matches, index)
    return _count_before(*sorted_matches, row[others - gallery_start], others)


def top_k_gallery(query_distances, keep, top_k):
    """Indices of the `top_k` nearest kept gallery images, ties in gallery order."""
    candidates = np.flatnonzero(keep)
    order = np.argsort(query_distances[candidates], kind="stable")[:top_k]
    return candidates[order]
