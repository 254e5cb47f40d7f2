"""Build or update a gallery index from a trained run: embed the images under folders.

    from siamese_reid.search import update_index

    summary = update_index("runs/my-run", ["photos/"], "my-index")   # IndexSummary
"""

import contextlib
import dataclasses
import fcntl
from pathlib import Path

import numpy as np

from siamese_reid.config import load_config
from siamese_reid.console import progress_bar
from siamese_reid.data.records import Sample
from siamese_reid.data.scan import scan_samples
from siamese_reid.errors import ReIDError
from siamese_reid.files import create_folder
from siamese_reid.search import index as index_files


@dataclasses.dataclass(frozen=True)
class IndexSummary:
    added: int
    updated: int
    removed: int
    unchanged: int
    skipped: list  # (path, reason) of files that could not be read

    def line(self):
        return (
            f"indexed: {self.added} added, {self.updated} updated, {self.removed} removed, {self.unchanged} unchanged"
        )


def _run_settings(run_dir):
    """The evaluation section of a run's config: the metric and flip test its embeddings use."""
    config_path = Path(run_dir) / "config.yaml"
    if not config_path.is_file():
        raise ReIDError(f"'{run_dir}' is not a training run folder (no config.yaml in it)")
    return load_config(config_path).evaluation


def _load_run_model(run_dir, checkpoint):
    from siamese_reid.model.embedding import load_embedding_model
    from siamese_reid.runs import run_model_path

    model_path = run_model_path(run_dir, checkpoint)
    return model_path, load_embedding_model(model_path)


def _embed(tower, paths, settings):
    from siamese_reid.evaluation.embeddings import embedding_input_size, extract_embeddings

    size = embedding_input_size(tower)
    return extract_embeddings(tower, paths, size, settings.batch_size, settings.flip_test, verbose=0)


def update_index(run_dir, folders, index_dir, checkpoint="last", identity_from_folder=False, batch_images=256):
    """Builds `index_dir` from every image under `folders`, or updates it.

    Only new or changed files (by size and modification time) are embedded, in batches of
    `batch_images` that are each written as they finish; files no longer under the folders
    are dropped. An index made by another model is refused.

    Returns:
      An `IndexSummary`.
    """
    run_dir, index_dir = Path(run_dir), Path(index_dir)
    _run_settings(run_dir)
    # everything that can be refused is, before anything is created or written
    index_files.find_images(folders, exclude=index_dir)
    model_path, tower = _load_run_model(run_dir, checkpoint)
    is_index = (index_dir / index_files.INDEX_FILE).exists()
    if index_dir.is_dir() and not is_index and any(p.name != ".lock" for p in index_dir.iterdir()):
        raise ReIDError(f"'{index_dir}' is not empty and is not a siamese-reid index: choose a new --index folder")
    create_folder(index_dir, exist_ok=True)
    with _exclusive(index_dir):
        return _update(run_dir, folders, index_dir, checkpoint, identity_from_folder, batch_images, model_path, tower)


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


def _update(run_dir, folders, index_dir, checkpoint, identity_from_folder, batch_images, model_path, tower):
    settings = _run_settings(run_dir)
    fingerprint = index_files.model_fingerprint(tower)
    if index_dir.exists() and (index_dir / index_files.INDEX_FILE).exists():
        current = index_files.load_index(index_dir)
        if current.header["model"]["fingerprint"] != fingerprint:
            raise ReIDError(
                f"index '{index_dir}' was built by another model ({current.header['model']['path']}); "
                "use a new --index folder for this model"
            )
        if current.header.get("identity_from_folder", False) != identity_from_folder:
            raise ReIDError(
                f"index '{index_dir}' was built {'with' if not identity_from_folder else 'without'} "
                "--identity-from-folder: update it the same way, or use a new --index folder"
            )
        header, features, entries = current.header, current.features, current.entries
    else:
        header = index_files.new_header(
            {
                "path": str(model_path.resolve()),
                "fingerprint": fingerprint,
                "input_size": list(tower.input_shape[1:3]),
                "embedding_dim": int(tower.output_shape[-1]),
            },
            {
                "dir": str(run_dir.resolve()),
                "checkpoint": checkpoint,
                "metric": settings.metric,
                "flip_test": settings.flip_test,
            },
            {},
        )
        header["identity_from_folder"] = identity_from_folder
        index_files.save_header(index_dir, header)
        features, entries = np.zeros((0, header["model"]["embedding_dim"]), np.float32), []

    on_disk, identities = index_files.find_images(
        folders, identity_from_folder, header.get("identities"), exclude=index_dir
    )
    header["identities"] = identities
    known = {entry.path: (row, entry) for row, entry in enumerate(entries)}
    current_paths = {image.path for image in on_disk}
    unchanged_rows, to_embed = [], []
    for image in on_disk:
        row, entry = known.get(image.path, (None, None))
        if entry is not None and (entry.size, entry.mtime_ns) == (image.size, image.mtime_ns):
            unchanged_rows.append(row)
        else:
            to_embed.append(image)
    removed = sum(path not in current_paths for path in known)
    if len(unchanged_rows) < len(entries) or len(header["shards"]) > 1:
        # keep only the rows still valid, in one shard, before anything new is appended
        index_files.replace_shards(index_dir, header, features[unchanged_rows], [entries[r] for r in unchanged_rows])
    else:
        index_files.save_header(index_dir, header)

    readable, skipped = {}, []
    for image in to_embed:  # one bad file is skipped and listed, never a failed run
        usable, problems = scan_samples([Sample(image.path, 0, 0)], index_dir / "converted_images")
        if usable:
            readable[image.path] = usable[0].path  # a PNG copy for formats TensorFlow cannot decode
        skipped += problems
    embed_list = [image for image in to_embed if image.path in readable]
    progress = progress_bar(len(embed_list), "image") if embed_list else None
    for start in range(0, len(embed_list), batch_images):
        batch = embed_list[start : start + batch_images]
        batch_features = _embed(tower, [readable[image.path] for image in batch], settings)
        index_files.append_shard(index_dir, header, batch_features, batch)
        progress.add(len(batch))
    return IndexSummary(
        added=sum(image.path not in known for image in embed_list),
        updated=sum(image.path in known for image in embed_list),
        removed=removed,
        unchanged=len(unchanged_rows),
        skipped=skipped,
    )
