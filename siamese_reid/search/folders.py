"""The folders a gallery index remembers: which images it holds, and which it refreshes.

A folder is known by its resolved absolute path, so the same folder given through another
relative path or a symbolic link is the same folder. The list never nests: a folder inside a
known one is already covered by it, and a folder that contains known ones replaces them. An
image then belongs to exactly one folder, which is what `--remove` drops and `info` counts.
"""

import os
from pathlib import Path

from siamese_reid.errors import ReIDError
from siamese_reid.files import resolve_folder


def is_inside(path, folder):
    """True when `path` is `folder` or lies under it (both resolved absolute strings); plain
    string prefixes, fast enough for a million indexed paths."""
    prefix = folder if folder.endswith(os.sep) else folder + os.sep
    return path == folder or path.startswith(prefix)


def add_folders(known, given):
    """`known` with the folders of `given` added, without nesting.

    Args:
      known: resolved folder paths already remembered.
      given: folders to add, any spelling.

    Returns:
      (new sorted list of resolved folders, notes: one sentence per given folder that was
      already covered by a known folder).
    """
    folders, notes = list(known), []
    for folder in map(resolve_folder, given):
        covering = [known_folder for known_folder in folders if is_inside(folder, known_folder)]
        if covering:
            if covering[0] != folder:
                notes.append(f"folder '{folder}' is inside indexed folder '{covering[0]}', which covers it")
            continue
        folders = [known_folder for known_folder in folders if not is_inside(known_folder, folder)] + [folder]
    return sorted(folders), notes


def remove_folder(known, folder, index_dir):
    """`known` without `folder`; a folder the index does not remember is refused, naming the
    ones it does."""
    resolved = resolve_folder(folder)
    if resolved in known:
        return [known_folder for known_folder in known if known_folder != resolved]
    covering = [known_folder for known_folder in known if is_inside(resolved, known_folder)]
    if covering:
        raise ReIDError(
            f"folder '{resolved}' is inside indexed folder '{covering[0]}' of index '{index_dir}': "
            "only a whole indexed folder can be removed"
        )
    listed = ", ".join(f"'{known_folder}'" for known_folder in known) or "none"
    raise ReIDError(f"index '{index_dir}' has no folder '{resolved}' (its folders: {listed}); nothing was changed")


def infer_folders(paths, identity_from_folder):
    """The folders of an index written before indexes recorded them (format version 1).

    Such an index held exactly the images under the folders given to its last update, which
    were not recorded. Each image's own folder is the narrowest guess that still covers every
    image (its grandparent with identities from folder names, where the parent is a person);
    nested guesses collapse into the outermost. A wider guess, such as the common ancestor of
    all images, could sweep in unrelated folders the user never indexed.

    Args:
      paths: resolved absolute paths of the indexed images.
      identity_from_folder: whether the index takes identities from parent folder names.

    Returns:
      Sorted list of resolved folder paths.
    """
    level = 1 if identity_from_folder else 0
    candidates = {str(Path(path).parents[min(level, len(Path(path).parents) - 1)]) for path in paths}
    folders, _ = add_folders([], sorted(candidates, key=len))
    return folders


def folder_of(path, folders):
    """The remembered folder holding `path`, or None (an image reached through a link)."""
    return next((folder for folder in folders if is_inside(path, folder)), None)
