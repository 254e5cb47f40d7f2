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
from siamese_reid.evaluation.evaluator import same_image_pairs
from siamese_reid.evaluation.ranking import protocol_gallery_mask


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


def pair_distances(distances, query_samples, gallery_samples):
    """Distances of same-identity (positive) and different-identity (negative) pairs.

    Only pairs the protocol scores: same identity and camera, junk, and an image paired with
    itself (a folder used as both query and gallery) are left out.
    Returns (positive distances, negative distances), 1-D arrays.
    """
    gallery_pids = np.array([s.pid for s in gallery_samples])
    gallery_camids = np.array([s.camid for s in gallery_samples])
    itself = same_image_pairs(query_samples, gallery_samples)
    positives, negatives = [], []
    for row, query in enumerate(query_samples):
        keep = protocol_gallery_mask(query.pid, query.camid, gallery_pids, gallery_camids)
        keep[itself[itself[:, 0] == row, 1]] = False
        same = gallery_pids == query.pid
        positives.append(distances[row, keep & same])
        negatives.append(distances[row, keep & ~same])
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
