"""Index sampling in numpy with a seeded Generator, before anything reaches tf.data.

Both samplers take `pids` and `camids` arrays (one entry per training image) and return index
arrays; the pipeline turns indices into images. The same seed and epoch give the same output.
"""

import numpy as np

from siamese_reid.errors import ReIDError


def _group_by_identity(pids):
    order = np.argsort(pids, kind="stable")
    unique_pids, starts = np.unique(pids[order], return_index=True)
    return dict(zip(unique_pids.tolist(), np.split(order, starts[1:]), strict=True))


def check_trainable(pids):
    """Raises unless there are at least two identities (a triplet needs a negative)."""
    if len(np.unique(pids)) < 2:
        raise ReIDError("the training split has fewer than 2 identities: triplets need negatives")


def sample_triplets(pids, camids, num_triplets, seed, epoch=0):
    """Draws (anchor, positive, negative) index triplets; returns int64 [num_triplets, 3].

    Anchors cycle through a shuffled list of images whose identity has another image.
    positive: same identity, another image, from another camera whenever the identity has one;
    negative: an image of a different identity (drawn by identity first, so frequent
    identities do not dominate the negatives).
    """
    pids, camids = np.asarray(pids), np.asarray(camids)
    check_trainable(pids)
    rng = np.random.default_rng([seed, epoch])
    groups = _group_by_identity(pids)
    identities = np.array(list(groups))
    anchor_groups = [members for members in groups.values() if len(members) > 1]
    if not anchor_groups:
        raise ReIDError("no training identity has two images: a positive pair is impossible")
    anchors = np.concatenate(anchor_groups)
    anchors = rng.permutation(np.resize(rng.permutation(anchors), num_triplets))
    triplets = np.empty((num_triplets, 3), dtype=np.int64)
    for row, anchor in enumerate(anchors):
        members = groups[pids[anchor]]
        others = members[members != anchor]
        other_camera = others[camids[others] != camids[anchor]]
        candidates = other_camera if len(other_camera) else others
        negative_pid = rng.choice(identities[identities != pids[anchor]])
        triplets[row] = anchor, rng.choice(candidates), rng.choice(groups[negative_pid])
    return triplets


def pk_batches(pids, identities_per_batch, images_per_identity, num_batches, seed, epoch=0):
    """Draws P x K batches; returns int64 [num_batches, P * K] image indices.

    Identities are visited in a shuffled order (a new order each pass), P per batch; each
    contributes K distinct images when it has K or more, else its images are sampled with
    replacement (`singleton_identities` reports which identities have one image only: they
    can never form a positive pair and are left out of P x K sampling).
    """
    pids = np.asarray(pids)
    check_trainable(pids)
    groups = {pid: members for pid, members in _group_by_identity(pids).items() if len(members) > 1}
    if len(groups) < 2:
        raise ReIDError("fewer than 2 training identities have two or more images")
    if identities_per_batch > len(groups):
        raise ReIDError(
            f"training.identities_per_batch ({identities_per_batch}) exceeds the "
            f"{len(groups)} identities with two or more images"
        )
    rng = np.random.default_rng([seed, epoch])
    identities = np.array(list(groups))
    order = np.empty(0, dtype=identities.dtype)
    batches = np.empty((num_batches, identities_per_batch * images_per_identity), dtype=np.int64)
    for row in range(num_batches):
        if len(order) < identities_per_batch:
            order = np.concatenate([order, rng.permutation(identities)])
        chosen, order = order[:identities_per_batch], order[identities_per_batch:]
        # A wrap-around can repeat an identity at the seam; swap in one not in the batch.
        if len(set(chosen.tolist())) < len(chosen):
            chosen = rng.choice(identities, identities_per_batch, replace=False)
        batch = [
            rng.choice(groups[pid], images_per_identity, replace=len(groups[pid]) < images_per_identity)
            for pid in chosen
        ]
        batches[row] = np.concatenate(batch)
    return batches


def singleton_identities(pids):
    """Identities with exactly one image (no positive pair possible)."""
    unique_pids, counts = np.unique(np.asarray(pids), return_counts=True)
    return unique_pids[counts == 1].tolist()


def identities_below(pids, count):
    """Identities with fewer than `count` images (sampled with replacement in P x K batches)."""
    unique_pids, counts = np.unique(np.asarray(pids), return_counts=True)
    return unique_pids[counts < count].tolist()
