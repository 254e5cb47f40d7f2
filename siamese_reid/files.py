"""Writing files whole: a temporary file in the same folder, then an atomic rename.

A crash, Ctrl-C or a full disk never leaves a truncated file where a good one was: readers see
the previous version or the new one. A full disk becomes one line naming the file.

Also what makes two spellings of a folder one folder (`resolve_folder`).
"""

import errno
import json
import os
import uuid
from pathlib import Path

from siamese_reid.errors import ReIDError


def resolve_folder(folder):
    """The resolved absolute path of `folder` as a string (it need not exist): the same folder
    given through another relative path, `~` or a symbolic link gives the same string."""
    return str(Path(folder).expanduser().resolve())


def write_atomically(path, write, suffix=""):
    """Calls write(temporary path), then renames the temporary file to `path`.

    Args:
      path: the file to (re)place.
      write: function of one path that writes the whole content there.
      suffix: ending the temporary name must keep for writers that check it (".keras").
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ReIDError(f"cannot write '{path}': '{path.parent}' is not an existing folder")
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial{suffix}")
    try:
        write(temporary)
        os.replace(temporary, path)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            written = temporary.stat().st_size if temporary.exists() else 0
            previous = "the previous version is kept" if path.exists() else "nothing was written"
            raise ReIDError(
                f"no space left on the device to write '{path}' (needs more than {written / 2**20:.1f} MiB "
                f"free); {previous}"
            ) from None
        raise
    finally:
        if temporary.exists():
            temporary.unlink()
    return path


def write_text(path, text):
    return write_atomically(path, lambda temporary: Path(temporary).write_text(text))


def write_json(path, data):
    return write_text(path, json.dumps(data, indent=2) + "\n")


def create_folder(path, exist_ok=False):
    """Creates the folder `path` and its parents, or says in one line why it cannot be.

    A file in the way, no permission or a read-only disk is a ReIDError naming the path.
    An existing folder raises FileExistsError unchanged unless `exist_ok` (callers that want
    a new folder pick another name).
    """
    path = Path(path)
    blocking = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ReIDError(f"cannot create folder '{path}': '{blocking}' is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=exist_ok)
    except FileExistsError:
        raise
    except OSError as error:
        raise ReIDError(f"cannot create folder '{path}': {error.strerror}") from None
    return path
