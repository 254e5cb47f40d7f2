"""From a dataset's splits to what training and evaluation use. Pure Python and numpy.

* Junk (-1) and distractor (0) images are not people: they are negatives for the evaluator,
  but trained as identities they would make every junk box one "person".
* An optional validation split holds out whole training identities, so a recipe can be tuned
  and a checkpoint chosen without looking at the test split.
* Training identities become contiguous integer labels 0..N-1: Keras casts `y_true` to float32,
  which is exact only below 2^24, and datasets use arbitrary identity numbers.
"""

import numpy as np

from siamese_reid.data.readers import Sample
from siamese_reid.errors import ReIDError

# the protocol defines what the two non-person identities are; its module is pure Python
from siamese_reid.evaluation.protocol import DISTRACTOR_PID, JUNK_PID, is_person


def person_samples(samples):
    """Drops junk and distractor images from a training split.

    Returns:
      (samples of real identities, {"junk": count, "distractors": count} of those dropped).
    """
    kept = [s for s in samples if is_person(s.pid)]
    excluded = {
        "junk": sum(s.pid == JUNK_PID for s in samples),
        "distractors": sum(s.pid == DISTRACTOR_PID for s in samples),
    }
    return kept, excluded


def split_validation(train, fraction, seed):
    """Holds out `fraction` of the training identities as a validation query / gallery.

    For each held-out identity seen by two or more cameras, one image per camera (seeded) is a
    query and the rest are gallery images, as in Market-1501; a camera with a single image of
    the identity gives no query, so that every query keeps a match in the gallery from another
    camera. An identity that cannot be split that way (one camera, or one image per camera)
    joins the gallery whole, as a negative. When the whole split has one camera
    (folder-per-identity datasets), one image per identity with two or more is the query, with
    camera 1, and the rest the gallery, with camera 2 (see `records.assign_split_cameras`).

    Returns:
      (train, validation query, validation gallery), lists of `Sample`.
    """
    pids = sorted({s.pid for s in train})
    num_held_out = max(2, round(len(pids) * fraction))
    if len(pids) - num_held_out < 2:
        raise ReIDError(
            f"data.validation_fraction {fraction} leaves fewer than 2 of the {len(pids)} training "
            "identities for training: lower it or set it to 0"
        )
    rng = np.random.default_rng(seed)
    held_out = {pids[i] for i in rng.permutation(len(pids))[:num_held_out]}
    camera_less = len({s.camid for s in train}) == 1
    remaining = [s for s in train if s.pid not in held_out]
    query, gallery = [], []
    for pid in sorted(held_out):
        images = [s for s in train if s.pid == pid]
        if camera_less and len(images) < 2:
            gallery += [Sample(s.path, pid, 2) for s in images]
            continue
        if camera_less:
            pick = int(rng.integers(len(images)))
            query.append(Sample(images[pick].path, pid, 1))
            gallery += [Sample(s.path, pid, 2) for s in images[:pick] + images[pick + 1 :]]
            continue
        picks = set()
        if len({s.camid for s in images}) > 1:
            for camid in sorted({s.camid for s in images}):
                candidates = [i for i, s in enumerate(images) if s.camid == camid]
                if len(candidates) > 1:
                    picks.add(candidates[int(rng.integers(len(candidates)))])
        query += [images[i] for i in sorted(picks)]
        gallery += [s for i, s in enumerate(images) if i not in picks]
    if not query:
        raise ReIDError(
            f"the validation split of data.validation_fraction {fraction} has no identity with two "
            "images from one camera and another camera's image to match: raise the fraction or set it to 0"
        )
    return remaining, query, gallery


def contiguous_labels(pids):
    """Maps identity numbers to int32 labels 0..N-1 (in increasing identity order)."""
    unique_pids, labels = np.unique(np.asarray(pids, dtype=np.int64), return_inverse=True)
    return labels.astype(np.int32), unique_pids
