"""CMC, mAP and mINP under the Market-1501 protocol. Pure numpy.

Speed and memory: no argsort of the distance matrix. For each query only the ranks of its
true matches matter, and the rank of a match is the number of valid gallery images that come
before it: those with a smaller distance, plus those with an equal distance and a smaller
gallery index (ties keep gallery order, as a stable sort would). Counting that is one pass of
comparisons over the gallery per match, and queries are processed in chunks, so memory is
O(chunk_size x gallery) whatever the size of the problem, and the distance matrix is read in its
own dtype (a float32 matrix is never copied to float64).
"""

import dataclasses

import numpy as np

from siamese_reid.errors import ReIDError


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


def _check_inputs(distances, query_pids, gallery_pids, query_camids, gallery_camids):
    if distances.ndim != 2:
        raise ReIDError(f"distances must be a 2-D [queries, gallery] array, got shape {distances.shape}")
    num_query, num_gallery = distances.shape
    if num_query == 0 or num_gallery == 0:
        raise ReIDError(f"empty query or gallery set (distances of shape {distances.shape})")
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


def _match_ranks(query_distances, valid, matches):
    """0-based ranks among valid gallery images of the true matches, in increasing order."""
    match_columns = np.flatnonzero(matches)
    valid_distances = query_distances[valid]
    valid_columns = np.flatnonzero(valid)
    match_distances = query_distances[match_columns][:, None]
    before = valid_distances[None, :] < match_distances
    # Equal distance: the gallery image with the smaller index comes first (stable order).
    tied = (valid_distances[None, :] == match_distances) & (valid_columns[None, :] < match_columns[:, None])
    return np.sort(np.count_nonzero(before | tied, axis=1))


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
    """Evaluates a query x gallery distance matrix under the Market-1501 protocol.

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
      distances: float array [num_query, num_gallery]; smaller means more similar.
      query_pids, gallery_pids: int arrays [num_query], [num_gallery].
      query_camids, gallery_camids: int arrays, same shapes.
      max_rank: length of the CMC curve (may exceed the gallery size).
      ap_definition: a key of `AP_DEFINITIONS`: "torchreid" (mean precision at each match)
        or "market_official" (the official Market-1501 code's trapezoid rule).
      chunk_size: queries processed together; by default as many as keep each of the chunk's
        boolean masks under 32 MiB (2^25 elements), whatever the gallery size.
      same_image_pairs: optional int array [n, 2] of (query index, gallery index) pairs that
        are the same image file (a folder used as both query and gallery): each is ignored for
        its query, so no image ever counts as its own match.

    Returns:
      A `RankingResult`. mINP follows Ye et al.: for each query, the number of matches divided
      by the 1-based rank of the last (hardest) match.

    Reference: Zheng et al., Scalable Person Re-identification: A Benchmark, ICCV 2015;
    Ye et al., Deep Learning for Person Re-identification: A Survey and Outlook, TPAMI 2021.
    """
    distances = np.asarray(distances)
    query_pids, gallery_pids = np.asarray(query_pids), np.asarray(gallery_pids)
    query_camids, gallery_camids = np.asarray(query_camids), np.asarray(gallery_camids)
    _check_inputs(distances, query_pids, gallery_pids, query_camids, gallery_camids)
    if ap_definition not in AP_DEFINITIONS:
        raise ReIDError(f"ap_definition must be one of {list(AP_DEFINITIONS)}, got {ap_definition!r}")
    average_precision = AP_DEFINITIONS[ap_definition]
    if max_rank < 1:
        raise ReIDError(f"max_rank must be >= 1, got {max_rank}")

    if chunk_size is None:
        chunk_size = max(1, 2**25 // distances.shape[1])
    first_match_counts = np.zeros(max_rank + 1, dtype=np.int64)
    average_precisions = np.full(len(query_pids), np.nan)
    first_match_ranks = np.full(len(query_pids), -1, dtype=np.int64)
    inverse_negative_penalties = []
    gallery_is_junk = gallery_pids == -1
    same_image_pairs = np.zeros((0, 2), np.int64) if same_image_pairs is None else np.asarray(same_image_pairs)
    for start in range(0, len(query_pids), chunk_size):
        stop = start + chunk_size
        chunk = distances[start:stop]
        _check_finite(chunk, start)
        same_pid = query_pids[start:stop, None] == gallery_pids[None, :]
        same_camera = query_camids[start:stop, None] == gallery_camids[None, :]
        valid = ~(same_pid & same_camera) & ~gallery_is_junk[None, :]
        in_chunk = (same_image_pairs[:, 0] >= start) & (same_image_pairs[:, 0] < stop)
        valid[same_image_pairs[in_chunk, 0] - start, same_image_pairs[in_chunk, 1]] = False
        matches = same_pid & valid
        for row in range(len(chunk)):
            if not matches[row].any():
                continue
            ranks = _match_ranks(chunk[row], valid[row], matches[row])
            first_match_counts[min(ranks[0], max_rank)] += 1
            first_match_ranks[start + row] = ranks[0]
            average_precisions[start + row] = average_precision(ranks)
            inverse_negative_penalties.append(len(ranks) / (ranks[-1] + 1))

    num_valid = len(inverse_negative_penalties)
    if num_valid == 0:
        raise ReIDError("no query has a valid match in the gallery (all matches filtered out)")
    cmc = np.cumsum(first_match_counts[:max_rank]) / num_valid
    return RankingResult(
        cmc=cmc,
        mean_ap=float(np.nanmean(average_precisions)),
        mean_inp=float(np.mean(inverse_negative_penalties)),
        num_valid_queries=num_valid,
        num_skipped_queries=len(query_pids) - num_valid,
        query_average_precisions=average_precisions,
        query_first_match_ranks=first_match_ranks,
    )


def protocol_gallery_mask(query_pid, query_camid, gallery_pids, gallery_camids):
    """Gallery images the protocol keeps for one query (bool [num_gallery])."""
    same_view = (gallery_pids == query_pid) & (gallery_camids == query_camid)
    return ~same_view & (gallery_pids != -1)


def top_k_gallery(query_distances, keep, top_k):
    """Indices of the `top_k` nearest kept gallery images, ties in gallery order."""
    candidates = np.flatnonzero(keep)
    order = np.argsort(query_distances[candidates], kind="stable")[:top_k]
    return candidates[order]
