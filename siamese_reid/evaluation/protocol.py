"""The Market-1501 evaluation protocol's rules, in one place.

- Identity -1 is junk (a bad detection): ignored in the gallery, never a query to score, and
  never trained on. Identity 0 is a distractor: nobody the dataset follows, kept in the gallery
  as a negative and never trained on. Every other identity (> 0) is a person.
- For each query, gallery images of its own identity seen by its own camera are ignored:
  re-ID asks to find a person across cameras, and same-camera shots are near-duplicates.
- A file that is both a query and a gallery image (one folder given as both) never counts as
  its own match.

Reference: Zheng et al., Scalable Person Re-identification: A Benchmark, ICCV 2015 (the
official evaluation code).
"""

import os

import numpy as np

from siamese_reid.errors import ReIDError

JUNK_PID = -1
DISTRACTOR_PID = 0


def is_person(pid):
    """Whether an identity is a person to learn and to find (neither junk nor a distractor)."""
    return pid > DISTRACTOR_PID


def protocol_gallery_mask(query_pid, query_camid, gallery_pids, gallery_camids):
    """Gallery images the protocol keeps for one query (bool [num_gallery])."""
    same_view = (gallery_pids == query_pid) & (gallery_camids == query_camid)
    return ~same_view & (gallery_pids != JUNK_PID)


def _real_paths(samples):
    """Each sample's file with links and relative parts resolved. Each folder is resolved
    once, and only files that are links themselves are resolved one by one: resolving every
    file of a gallery of millions took minutes."""
    folders = {}
    paths = []
    for sample in samples:
        folder, name = os.path.split(sample.path)
        if folder not in folders:
            folders[folder] = os.path.realpath(folder or ".")
        path = os.path.join(folders[folder], name)
        paths.append(os.path.realpath(path) if os.path.islink(path) else path)
    return paths


def same_image_pairs(query_samples, gallery_samples):
    """(query index, gallery index) of every image file that is in both sets, as an int array
    [n, 2]: a folder given as both query and gallery must not match itself."""
    gallery_rows = {}
    for column, path in enumerate(_real_paths(gallery_samples)):
        gallery_rows.setdefault(path, []).append(column)
    pairs = [
        (row, column) for row, path in enumerate(_real_paths(query_samples)) for column in gallery_rows.get(path, [])
    ]
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def protocol_record(settings, distance):
    """The protocol entry of metrics.json: what was really used to score."""
    return {
        "ap_definition": settings.ap_definition,
        "distance": distance,
        "flip_test": settings.flip_test,
        "same_camera_same_identity": "ignored",
        f"junk_identity_{JUNK_PID}": "ignored",
        f"distractor_identity_{DISTRACTOR_PID}": "kept as negatives",
        "ties": "gallery order",
    }


def check_queries_have_matches(query, gallery):
    """Raises a ReIDError when no query could ever be scored: no query identity has a gallery
    image from another camera (checked before training, which would otherwise find out at its
    first evaluation, minutes later)."""
    cameras_of = {}
    for sample in gallery:
        cameras_of.setdefault(sample.pid, set()).add(sample.camid)
    if not any(cameras_of.get(q.pid, set()) - {q.camid} for q in query if q.pid != JUNK_PID):
        raise ReIDError(
            "no query identity has a gallery image from another camera: nothing could be scored; "
            "check that the query and gallery folders hold the same people"
        )
