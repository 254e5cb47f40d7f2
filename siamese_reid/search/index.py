"""A gallery index: the embeddings of a user's images, tied to the model that made them.

Layout of an index folder:

    index.json          what the index is: its model (path, fingerprint, input size), metric,
                        flip test, the run it came from (and whether it trained on the demo),
                        identity names, the folders it indexes (resolved absolute paths; absent
                        in version 1 indexes), when it was last updated, and its shard files
    shard-<id>.npz      features [n, dim] float32 and, per image: path, size, mtime, pid and
                        camid (-1 with has_pid / has_camid false when unknown)

Every file is written to a temporary name and renamed into place, and index.json is rewritten
after each batch of embeddings: a crash or Ctrl-C keeps every finished batch, and the index is
never left unreadable. Updating embeds only new or changed files and drops removed ones.
"""

import dataclasses
import hashlib
import json
import uuid
import zipfile
from pathlib import Path

import numpy as np

from siamese_reid.data.readers import IMAGE_SUFFIXES, parse_market_name
from siamese_reid.errors import ReIDError
from siamese_reid.files import write_atomically, write_json

INDEX_FORMAT = "siamese-reid-index"
INDEX_FILE = "index.json"


@dataclasses.dataclass(frozen=True)
class ImageFile:
    """One image under the indexed folders, as found on disk."""

    path: str  # absolute
    size: int
    mtime_ns: int
    pid: int | None
    camid: int | None


_COLUMNS = ("paths", "sizes", "mtimes_ns", "pids", "has_pid", "camids", "has_camid")


@dataclasses.dataclass
class GalleryIndex:
    """An index folder's content in memory: the features of all shards concatenated, and one
    numpy column per image attribute (no Python object per image: a million of them would
    cost memory and slow every garbage collection of a long-lived search process)."""

    folder: Path
    header: dict
    features: np.ndarray
    columns: dict  # name in _COLUMNS -> array with one entry per row of `features`

    def __len__(self):
        return len(self.features)

    def entry(self, row):
        """Row `row` as an ImageFile."""
        columns = self.columns
        return ImageFile(
            str(columns["paths"][row]),
            int(columns["sizes"][row]),
            int(columns["mtimes_ns"][row]),
            int(columns["pids"][row]) if columns["has_pid"][row] else None,
            int(columns["camids"][row]) if columns["has_camid"][row] else None,
        )

    @property
    def entries(self):
        return [self.entry(row) for row in range(len(self))]

    @property
    def identity_names(self):
        """pid -> folder name, for indexes built with identities from folder names."""
        return {pid: name for name, pid in self.header.get("identities", {}).items()}


def model_fingerprint(tower):
    """SHA-256 of the tower's input shape and every weight: two towers with the same
    fingerprint give the same embeddings."""
    digest = hashlib.sha256(repr(tuple(tower.input_shape)).encode())
    for weight in tower.weights:
        digest.update(np.ascontiguousarray(np.asarray(weight)).tobytes())
    return digest.hexdigest()


def find_images(folders, identity_from_folder=False, identities=None, exclude=None, require_images=True):
    """Every image file under `folders`, recursively, in sorted order.

    Identity and camera come from Market-1501-style names; otherwise both are None, or with
    `identity_from_folder` the parent folder's name is the identity (numbered through
    `identities`, a dict name -> pid that this call extends). Files under `exclude` (the index
    folder itself, with its converted copies) are left out, and a file reached twice (through
    overlapping folders or links) is listed once. Folders holding no image at all are refused
    unless `require_images` is False (refreshing folders that have since been emptied).

    Returns:
      (list of ImageFile, identities dict).
    """
    identities = dict(identities or {})
    excluded = Path(exclude).resolve() if exclude is not None else None
    found, seen = [], set()
    for folder in folders:
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise ReIDError(f"image folder '{folder}' does not exist or is not a folder")
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        for path in files:
            resolved = path.resolve()
            if resolved in seen or (excluded is not None and resolved.is_relative_to(excluded)):
                continue
            seen.add(resolved)
            parsed = parse_market_name(path.name)
            pid, camid = parsed if parsed else (None, None)
            if identity_from_folder:
                pid = identities.setdefault(path.parent.name, len(identities) + 1)
            stat = path.stat()
            found.append(ImageFile(str(resolved), stat.st_size, stat.st_mtime_ns, pid, camid))
    if not found and require_images:
        raise ReIDError(f"no image files under {', '.join(str(f) for f in folders)}")
    return found, identities


def _shard_arrays(features, entries):
    return {
        "features": np.asarray(features, dtype=np.float32),
        "paths": np.array([e.path for e in entries], dtype=str),
        "sizes": np.array([e.size for e in entries], dtype=np.int64),
        "mtimes_ns": np.array([e.mtime_ns for e in entries], dtype=np.int64),
        "pids": np.array([-1 if e.pid is None else e.pid for e in entries], dtype=np.int64),
        "has_pid": np.array([e.pid is not None for e in entries]),
        "camids": np.array([-1 if e.camid is None else e.camid for e in entries], dtype=np.int64),
        "has_camid": np.array([e.camid is not None for e in entries]),
    }


def _read_shard(path, names=("features", *_COLUMNS)):
    """The arrays `names` of one shard (an npz file reads only the arrays asked for)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in names}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        # written atomically by this package: damage comes from outside (a cut-short copy, a disk fault)
        raise ReIDError(
            f"index shard '{path}' is damaged ({type(error).__name__}): build the index again in a new folder"
        ) from None


def read_header(folder):
    """index.json of an index folder, with a clear error for anything that is not one."""
    path = Path(folder) / INDEX_FILE
    if not path.is_file():
        raise ReIDError(f"'{folder}' is not a siamese-reid index (no {INDEX_FILE}); build one with search.py index")
    try:
        header = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ReIDError(f"'{path}' is not a valid index file (unreadable JSON)") from None
    if not isinstance(header, dict) or header.get("format") != INDEX_FORMAT:
        raise ReIDError(f"'{folder}' is not a siamese-reid index ({INDEX_FILE} of another format)")
    absent = [key for key in ("model", "run", "shards") if key not in header]
    if absent:
        raise ReIDError(f"'{path}' is damaged (no '{absent[0]}' entry): build the index again in a new folder")
    return header


def load_index(folder):
    """The whole index of `folder`, features concatenated in shard order."""
    folder = Path(folder)
    header = read_header(folder)
    missing = [shard for shard in header["shards"] if not (folder / shard).is_file()]
    if missing:
        raise ReIDError(
            f"index '{folder}' lists {missing[0]}, which is gone (another update running at the same time?): "
            "run search.py index on it again"
        )
    shards = [_read_shard(folder / shard) for shard in header["shards"]]
    if not shards:
        empty = _shard_arrays(np.zeros((0, header["model"]["embedding_dim"]), np.float32), [])
        return GalleryIndex(folder, header, empty["features"], {name: empty[name] for name in _COLUMNS})
    features = np.concatenate([shard["features"] for shard in shards])
    columns = {name: np.concatenate([shard[name] for shard in shards]) for name in _COLUMNS}
    return GalleryIndex(folder, header, features, columns)


def load_paths(folder):
    """(header, the indexed image paths) of `folder`, without reading any features."""
    folder = Path(folder)
    header = read_header(folder)
    paths = []
    for shard in header["shards"]:
        if not (folder / shard).is_file():
            raise ReIDError(f"index '{folder}' lists {shard}, which is gone: run search.py index on it again")
        paths += [str(path) for path in _read_shard(folder / shard, ("paths",))["paths"]]
    return header, paths


def new_header(model_record, run_record, identities):
    return {
        "format": INDEX_FORMAT,
        "version": 2,
        "model": model_record,
        "run": run_record,
        "identities": identities,
        "folders": [],
        "shards": [],
    }


def save_header(folder, header):
    write_json(Path(folder) / INDEX_FILE, header)


def append_shard(folder, header, features, entries):
    """Writes one shard and then the header that lists it (both atomically)."""
    name = f"shard-{uuid.uuid4().hex[:12]}.npz"

    def write(temporary):
        with open(temporary, "wb") as handle:
            np.savez(handle, **_shard_arrays(features, entries))

    write_atomically(Path(folder) / name, write)
    header["shards"].append(name)
    save_header(folder, header)


def replace_shards(folder, header, features, entries):
    """Rewrites the index as one shard holding `entries` and deletes the shards it replaces
    (files this index wrote itself, listed in its header)."""
    old = list(header["shards"])
    header["shards"] = []
    if len(entries):
        append_shard(folder, header, features, entries)
    else:
        save_header(folder, header)
    for name in old:
        (Path(folder) / name).unlink(missing_ok=True)
