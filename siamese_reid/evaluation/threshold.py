"""The open-set "no match" threshold: fitted on cross-camera positive and negative pairs.

A search answers "match" when the nearest gallery image is closer than the threshold. The
threshold is fitted at a target false-accept rate (FAR: the fraction of different-identity
pairs accepted) from the pairs the protocol scores: same identity from another camera
(positives) and different identities, distractors included (negatives); same identity and
camera, and junk, are left out. Pure numpy.
"""

import dataclasses

import numpy as np

from siamese_reid.errors import ReIDError
from siamese_reid.evaluation.distances import as_rows
from siamese_reid.evaluation.protocol import JUNK_PID, protocol_gallery_mask, same_image_pairs


@dataclasses.dataclass(frozen=True)
class Threshold:
    """Pairs closer than `value` are accepted as the same person.

    Rates are fractions: `true_accept_rate` of positive pairs, `false_accept_rate` of negative
    pairs accepted at `value`; `equal_error_rate` is where FAR = 1 - TAR.
    """

    value: float
    target_false_accept_rate: float | None
    true_accept_rate: float
    false_accept_rate: float
    equal_error_rate: float
    num_positive_pairs: int
    num_negative_pairs: int


# Negative pairs grow as queries x gallery; a uniform sample of this many fixes the false-accept
# rate at the usual 1% target to within about 0.01 percentage points.
MAX_NEGATIVE_PAIRS = 1_000_000


def pair_distances(distances, query_samples, gallery_samples, max_negative_pairs=MAX_NEGATIVE_PAIRS, seed=0):
    """Distances of same-identity (positive) and different-identity (negative) pairs.

    Only pairs the protocol scores: same identity and camera, junk, and an image paired with
    itself (a folder used as both query and gallery) are left out. Every positive pair is
    kept; negative pairs, which grow as queries x gallery, are sampled uniformly (each kept
    with the same probability, seeded) down to about `max_negative_pairs` when there are more.

    Args:
      distances: a [num_query, num_gallery] matrix, or rows computed on demand
        (`QueryGalleryDistances`, `Evaluation.rows`): read a block of queries at a time.
      query_samples, gallery_samples: lists of `Sample`.
      max_negative_pairs: the size of the negative sample (None: all pairs).
      seed: seed of the sample.

    Returns (positive distances, negative distances), 1-D arrays.
    """
    rows = as_rows(distances)
    gallery_pids = np.array([s.pid for s in gallery_samples])
    gallery_camids = np.array([s.camid for s in gallery_samples])
    itself = same_image_pairs(query_samples, gallery_samples)
    query_pids = np.array([s.pid for s in query_samples])
    identities, counts = np.unique(gallery_pids, return_counts=True)
    same_identity = dict(zip(identities.tolist(), counts.tolist(), strict=True))
    people = np.count_nonzero(gallery_pids != JUNK_PID)
    total_negative = sum(people - same_identity.get(pid, 0) for pid in query_pids.tolist())
    keep_rate = 1.0 if not max_negative_pairs else min(1.0, max_negative_pairs / max(total_negative, 1))
    rng = np.random.default_rng(seed)
    positives, negatives = [], []
    for start in range(0, len(query_samples), rows.rows_per_block):
        for offset, query_distances in enumerate(rows.distances(start, start + rows.rows_per_block)):
            row = start + offset
            query = query_samples[row]
            keep = protocol_gallery_mask(query.pid, query.camid, gallery_pids, gallery_camids)
            keep[itself[itself[:, 0] == row, 1]] = False
            same = gallery_pids == query.pid
            positives.append(query_distances[keep & same])
            negative = np.flatnonzero(keep & ~same)
            if keep_rate < 1.0:
                negative = rng.choice(negative, rng.binomial(len(negative), keep_rate), replace=False)
            negatives.append(query_distances[np.sort(negative)])
    return np.concatenate(positives), np.concatenate(negatives)


def accept_rates(positive, negative, threshold):
    """(true accept rate, false accept rate) of accepting pairs with distance < threshold."""
    return float(np.mean(positive < threshold)), float(np.mean(negative < threshold))


def fit_threshold(positive, negative, target_false_accept_rate=None):
    """The largest threshold whose false-accept rate stays at or below the target, or, without
    a target, the threshold at the equal error rate (TAR = 1 - FAR)."""
    if len(positive) == 0 or len(negative) == 0:
        raise ReIDError("need both positive and negative pairs to fit a threshold")
    positive, negative = np.sort(positive), np.sort(negative)
    candidates = np.unique(np.concatenate([positive, negative]))
    candidates = np.concatenate([candidates, [candidates[-1] + 1e-6]])
    false_accepts = np.searchsorted(negative, candidates, side="left") / len(negative)
    true_accepts = np.searchsorted(positive, candidates, side="left") / len(positive)
    equal_error = int(np.argmin(np.abs(true_accepts - (1.0 - false_accepts))))
    if target_false_accept_rate is None:
        index = equal_error
    else:
        allowed = np.flatnonzero(false_accepts <= target_false_accept_rate)
        index = int(allowed[-1]) if len(allowed) else 0
    return Threshold(
        value=float(candidates[index]),
        target_false_accept_rate=target_false_accept_rate,
        true_accept_rate=float(true_accepts[index]),
        false_accept_rate=float(false_accepts[index]),
        equal_error_rate=float((false_accepts[equal_error] + 1.0 - true_accepts[equal_error]) / 2),
        num_positive_pairs=len(positive),
        num_negative_pairs=len(negative),
    )
