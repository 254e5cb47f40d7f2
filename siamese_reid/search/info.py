"""What an index holds, without loading its model: folders with image counts, model, run, age."""

import dataclasses
from pathlib import Path

from siamese_reid.search import folders as index_folders
from siamese_reid.search import index as index_files
from siamese_reid.search.indexing import trained_on_demo


@dataclasses.dataclass(frozen=True)
class FolderInfo:
    path: str  # resolved absolute
    images: int  # indexed images under it
    present: bool  # False: missing from disk (its images are kept)


@dataclasses.dataclass(frozen=True)
class IndexInfo:
    index: str
    images: int
    folders: list  # FolderInfo
    folders_inferred: bool  # a version 1 index, whose folders are guessed from its images
    elsewhere: int  # images reached through links from outside every folder
    model: str
    run: str
    checkpoint: str
    metric: str
    identity_from_folder: bool
    updated: str | None  # ISO 8601, UTC; None for indexes written before it was recorded
    trained_on_demo: bool | None  # None: the run's config is gone

    def lines(self):
        """Plain readable lines, one fact each."""
        lines = [
            f"index: {self.index}",
            f"images: {self.images}",
            f"model: {self.model} (run {self.run}, checkpoint {self.checkpoint}, metric {self.metric})",
            f"last updated: {self.updated or 'unknown (index written before updates were dated)'}",
        ]
        if self.identity_from_folder:
            lines.append("identities: from parent folder names")
        note = " (guessed from the images: the index predates folder lists)" if self.folders_inferred else ""
        lines.append(f"folders: {len(self.folders)}{note}")
        for folder in self.folders:
            missing = "" if folder.present else "  (missing from disk: images kept)"
            lines.append(f"  {folder.path}  {folder.images} images{missing}")
        if self.elsewhere:
            lines.append(f"  (elsewhere, reached through links)  {self.elsewhere} images")
        return lines

    def to_json(self):
        return dataclasses.asdict(self)


def index_info(index_dir):
    """An `IndexInfo` of `index_dir` (reads index.json and the shards' paths only)."""
    header, paths = index_files.load_paths(index_dir)
    recorded = header.get("folders")
    folder_paths = (
        recorded
        if recorded is not None
        else index_folders.infer_folders(paths, header.get("identity_from_folder", False))
    )
    counts = dict.fromkeys(folder_paths, 0)
    elsewhere = 0
    for path in paths:
        folder = index_folders.folder_of(path, folder_paths)
        if folder is None:
            elsewhere += 1
        else:
            counts[folder] += 1
    return IndexInfo(
        index=str(Path(index_dir).resolve()),
        images=len(paths),
        folders=[FolderInfo(path, counts[path], Path(path).is_dir()) for path in folder_paths],
        folders_inferred=recorded is None,
        elsewhere=elsewhere,
        model=header["model"]["path"],
        run=header["run"]["dir"],
        checkpoint=header["run"]["checkpoint"],
        metric=header["run"]["metric"],
        identity_from_folder=header.get("identity_from_folder", False),
        updated=header.get("updated"),
        trained_on_demo=trained_on_demo(header),
    )
