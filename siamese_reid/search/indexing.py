"""Build or update a gallery index from a trained run: embed the images under its folders.

from siamese_reid.search import update_index

update_index("runs/my-run", ["photos/"], "my-index")      # IndexSummary
update_index("runs/my-run", ["more-photos/"], "my-index") # photos/ stays indexed
update_index(None, [], "my-index")                        # refresh both folders
update_index(None, [], "my-index", remove=["photos/"])    # its images leave the index
"""

import contextlib
import dataclasses
import datetime
import fcntl
from pathlib import Path

import numpy as np

from siamese_reid.console import progress_bar
from siamese_reid.data.demo import is_demo_run
from siamese_reid.data.readers import Sample
from siamese_reid.data.scan import scan_samples
from siamese_reid.errors import ArgumentError, ReIDError
from siamese_reid.files import create_folder, resolve_folder
from siamese_reid.runs import load_run_config
from siamese_reid.search import folders as index_folders
from siamese_reid.search import index as index_files


@dataclasses.dataclass(frozen=True)
class IndexSummary:
    """What one update did. `removed` counts images no longer under any indexed folder (deleted
    or moved away); `dropped` those of folders taken out of the index on request."""

    added: int
    updated: int
    removed: int
    unchanged: int
    skipped: list  # (path, reason) of files that could not be read
    dropped: int = 0
    warnings: list = dataclasses.field(default_factory=list)  # one sentence each
    folders: list = dataclasses.field(default_factory=list)  # the index's folders afterwards
    trained_on_demo: bool | None = None

    def line(self):
        dropped = f", {self.dropped} dropped with their folder" if self.dropped else ""
        return (
            f"indexed: {self.added} added, {self.updated} updated, {self.removed} removed, "
            f"{self.unchanged} unchanged{dropped}"
        )


def _run_settings(run_dir):
    """The evaluation section of a run's config: the metric and flip test its embeddings use."""
    return load_run_config(run_dir).evaluation


def _load_run_model(run_dir, checkpoint):
    from siamese_reid.model.embedding import load_embedding_model
    from siamese_reid.runs import run_model_path

    model_path = run_model_path(run_dir, checkpoint)
    return model_path, load_embedding_model(model_path)


def _embed(tower, paths, settings):
    from siamese_reid.evaluation.embeddings import embedding_input_size, extract_embeddings

    size = embedding_input_size(tower)
    return extract_embeddings(tower, paths, size, settings.batch_size, settings.flip_test, verbose=0)


def update_index(run_dir, folders, index_dir, checkpoint=None, identity_from_folder=None, batch_images=256, remove=()):
    """Builds `index_dir` from every image under `folders`, or updates it.

    An index remembers every folder it was given, and each update refreshes all of them: only
    new or changed files (by size and modification time) are embedded, in batches of
    `batch_images` that are each written as they finish, and files no longer under any folder
    are dropped. The folders in `remove` leave the index with their images (nothing on disk is
    touched). A remembered folder missing from disk, or empty where the index holds images of
    it (an unmounted drive, or its bare mount point), keeps its images and is reported in the
    summary's warnings. An index made by another model is refused.

    Args:
      run_dir: the training run whose model embeds the images; None for an existing index
        updates it with the run it was built from.
      folders: folders to add (searched recursively); empty refreshes the remembered ones.
      index_dir: the index folder, created if needed.
      checkpoint: "last" or "best"; None means the index's own, or "last" for a new index.
      identity_from_folder: take identities from parent folder names; None means as the index
        was built (False for a new index).
      batch_images: images embedded and written per shard.
      remove: remembered folders to take out of the index.

    Returns:
      An `IndexSummary`.
    """
    index_dir, folders = Path(index_dir), list(folders or [])
    header = index_files.read_header(index_dir) if (index_dir / index_files.INDEX_FILE).exists() else None
    if header is None:
        _check_new_index(index_dir, run_dir, folders, remove)
    run_dir = Path(run_dir if run_dir is not None else header["run"]["dir"])
    checkpoint = checkpoint or (header["run"]["checkpoint"] if header else "last")
    _run_settings(run_dir)
    # everything that can be refused is, before anything is created or written
    if folders:
        index_files.find_images(folders, exclude=index_dir)
    model_path, tower = _load_run_model(run_dir, checkpoint)
    create_folder(index_dir, exist_ok=True)
    request = _Request(run_dir, folders, list(remove), checkpoint, identity_from_folder, batch_images)
    with _exclusive(index_dir):
        return _update(request, index_dir, model_path, tower)


@dataclasses.dataclass(frozen=True)
class _Request:
    run_dir: Path
    folders: list
    remove: list
    checkpoint: str
    identity_from_folder: bool | None
    batch_images: int


def _check_new_index(index_dir, run_dir, folders, remove):
    if index_dir.is_dir() and any(p.name != ".lock" for p in index_dir.iterdir()):
        raise ReIDError(f"'{index_dir}' is not empty and is not a siamese-reid index: choose a new index folder")
    if remove:
        raise ReIDError(f"index '{index_dir}' does not exist: it has no folder to remove")
    if not folders:
        raise ArgumentError(
            "folders", f"index '{index_dir}' does not exist yet: give {{argument}}, the images to index"
        )
    if run_dir is None:
        raise ArgumentError(
            "run_dir", f"index '{index_dir}' does not exist yet: give {{argument}}, the run to embed with"
        )


def trained_on_demo(header):
    """Whether the index's run trained on the built-in demo dataset: recorded by the update
    that created the index, else read from the run's config.yaml; None when unknowable."""
    recorded = header["run"].get("trained_on_demo")
    if recorded is not None:
        return recorded
    try:
        config = load_run_config(header["run"]["dir"])
    except ReIDError:  # no config.yaml there any more, or one this version cannot read: search on
        return None
    return is_demo_run(config.data, config.demo)


@contextlib.contextmanager
def _exclusive(index_dir):
    """One update of an index at a time: a second one waits (two at once would delete each
    other's shards)."""
    with open(Path(index_dir) / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _update(request, index_dir, model_path, tower):
    settings = _run_settings(request.run_dir)
    header, features, entries = _open_or_create(request, index_dir, model_path, tower, settings)
    identity_from_folder = header.get("identity_from_folder", False)
    known_folders = header.get("folders")
    if known_folders is None:  # a version 1 index: no folder list was recorded
        known_folders = index_folders.infer_folders([entry.path for entry in entries], identity_from_folder)
    for folder in request.remove:
        known_folders = index_folders.remove_folder(known_folders, folder, index_dir)
    removed_folders = [resolve_folder(folder) for folder in request.remove]
    known_folders, warnings = index_folders.add_folders(known_folders, request.folders)
    unavailable = _unavailable_folders(known_folders, entries)
    missing = list(unavailable)
    on_disk, identities = index_files.find_images(
        [folder for folder in known_folders if folder not in missing],
        identity_from_folder,
        header.get("identities"),
        exclude=index_dir,
        require_images=False,
    )
    plan = _plan(entries, on_disk, missing, removed_folders)
    for folder, state in unavailable.items():
        kept = sum(index_folders.is_inside(entries[row].path, folder) for row in plan.kept_rows)
        warnings.append(
            f"indexed folder '{folder}' is {state} (an unmounted drive?): its {kept} images are kept; "
            "remove the folder from the index to drop them"
        )
    header.update(identities=identities, folders=known_folders, version=2, updated=_now())
    rows = plan.unchanged_rows + plan.kept_rows
    if len(rows) < len(entries) or len(header["shards"]) > 1:
        # keep only the rows still valid, in one shard, before anything new is appended
        index_files.replace_shards(index_dir, header, features[rows], [entries[row] for row in rows])
    else:
        index_files.save_header(index_dir, header)
    embedded, skipped = _embed_new(plan.to_embed, index_dir, header, tower, settings, request.batch_images)
    header["updated"] = _now()
    index_files.save_header(index_dir, header)
    known_paths = {entry.path for entry in entries}
    return IndexSummary(
        added=sum(image.path not in known_paths for image in embedded),
        updated=sum(image.path in known_paths for image in embedded),
        removed=plan.removed,
        unchanged=len(plan.unchanged_rows),
        skipped=skipped,
        dropped=plan.dropped,
        warnings=warnings,
        folders=known_folders,
        trained_on_demo=trained_on_demo(header),
    )


def _now():
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _open_or_create(request, index_dir, model_path, tower, settings):
    """(header, features, entries) of the index, checked against this update's model and
    identity mode; a new index's header is written first."""
    fingerprint = index_files.model_fingerprint(tower)
    if (index_dir / index_files.INDEX_FILE).exists():
        current = index_files.load_index(index_dir)
        if current.header["model"]["fingerprint"] != fingerprint:
            raise ReIDError(
                f"index '{index_dir}' was built by another model ({current.header['model']['path']}); "
                "use a new index folder for this model"
            )
        built_with = current.header.get("identity_from_folder", False)
        if request.identity_from_folder is not None and built_with != request.identity_from_folder:
            raise ReIDError(
                f"index '{index_dir}' was built {'with' if built_with else 'without'} identities from folder "
                f"names (identity_from_folder={built_with}): update it the same way, or use a new index folder"
            )
        return current.header, current.features, current.entries
    header = index_files.new_header(
        {
            "path": str(model_path.resolve()),
            "fingerprint": fingerprint,
            "input_size": list(tower.input_shape[1:3]),
            "embedding_dim": int(tower.output_shape[-1]),
        },
        {
            "dir": str(request.run_dir.resolve()),
            "checkpoint": request.checkpoint,
            "metric": settings.metric,
            "flip_test": settings.flip_test,
        },
        {},
    )
    header["run"]["trained_on_demo"] = trained_on_demo(header)
    header["identity_from_folder"] = bool(request.identity_from_folder)
    header["updated"] = _now()
    index_files.save_header(index_dir, header)
    return header, np.zeros((0, header["model"]["embedding_dim"]), np.float32), []


def _unavailable_folders(known_folders, entries):
    """{folder: "missing" or "empty"} of the remembered folders whose images cannot be seen: a
    folder that is gone, or empty while the index holds images of it. Both are what an
    unmounted drive looks like (its mount point stays as an empty folder), so its images are
    kept rather than reported removed; deleting them means removing the folder explicitly."""
    unavailable = {}
    for folder in known_folders:
        path = Path(folder)
        if not path.is_dir():
            unavailable[folder] = "missing"
        elif not any(path.iterdir()) and any(index_folders.is_inside(entry.path, folder) for entry in entries):
            unavailable[folder] = "empty"
    return unavailable


@dataclasses.dataclass(frozen=True)
class _Plan:
    unchanged_rows: list  # rows found on disk as they were
    kept_rows: list  # rows of folders missing from disk or empty
    to_embed: list  # ImageFile: new or changed
    removed: int
    dropped: int


def _plan(entries, on_disk, missing_folders, removed_folders):
    """Which rows stay, which images are embedded, and why the other rows go."""
    known = {entry.path: row for row, entry in enumerate(entries)}
    found = {image.path for image in on_disk}
    unchanged_rows, to_embed = [], []
    for image in on_disk:
        row = known.get(image.path)
        if row is not None and (entries[row].size, entries[row].mtime_ns) == (image.size, image.mtime_ns):
            unchanged_rows.append(row)
        else:
            to_embed.append(image)
    kept_rows, removed, dropped = [], 0, 0
    for path, row in known.items():
        if path in found:
            continue
        if index_folders.folder_of(path, missing_folders) is not None:
            kept_rows.append(row)
        elif index_folders.folder_of(path, removed_folders) is not None:
            dropped += 1
        else:
            removed += 1
    return _Plan(unchanged_rows, kept_rows, to_embed, removed, dropped)


def _embed_new(images, index_dir, header, tower, settings, batch_images):
    """Embeds and appends `images` batch by batch; returns (embedded ImageFiles, skipped)."""
    readable, skipped = {}, []
    for image in images:  # one bad file is skipped and listed, never a failed run
        usable, problems = scan_samples([Sample(image.path, 0, 0)], index_dir / "converted_images")
        if usable:
            readable[image.path] = usable[0].path  # a PNG copy for formats TensorFlow cannot decode
        skipped += problems
    embed_list = [image for image in images if image.path in readable]
    progress = progress_bar(len(embed_list), "image") if embed_list else None
    for start in range(0, len(embed_list), batch_images):
        batch = embed_list[start : start + batch_images]
        batch_features = _embed(tower, [readable[image.path] for image in batch], settings)
        index_files.append_shard(index_dir, header, batch_features, batch)
        progress.add(len(batch))
    return embed_list, skipped
