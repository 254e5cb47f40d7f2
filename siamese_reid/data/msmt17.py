"""Reader of MSMT17's release layout (V1 and V2).

MSMT17 gives its split in list files, one `<identity folder>/<file name> <identity>` per line,
such as `0000/0000_000_01_0303morning_0008_0.jpg 0`. The camera (1..15) is the third field of
the file name. Listed identities start at 0, which this project reserves for distractors, and
the test lists number their people from 0 again: training identity k becomes k + 1 and test
identity k becomes k + 1 + (the largest training identity + 1), so that within the dataset one
number always names one person (1..4,101 for the release), as in Market-1501. Figures name
each identity by its folder (e.g. mask_test_v2/0004) through `DatasetSplits.identity_names`.

Reference:
  Wei et al., Person Transfer GAN to Bridge Domain Gap for Person Re-Identification, CVPR 2018.
"""

import os
import re

from siamese_reid.data.readers import DatasetSplits, Sample, existing_folder, require_root_only
from siamese_reid.errors import ReIDError

# release folder -> (training image folder, test image folder); both have the same list files
MSMT17_VERSIONS = {"MSMT17_V1": ("train", "test"), "MSMT17_V2": ("mask_train_v2", "mask_test_v2")}
MSMT17_LISTS = ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")

# data.msmt17_val: what becomes of list_val.txt, 2,373 more images of the training identities.
# torchreid, fast-reid and reid-strong-baseline leave them out (30,248 training images), and
# the published numbers compared against are theirs; the paper's training set includes them.
MSMT17_VAL = {"unused": "not read", "train": "added to the training split (the paper's 32,621 images)"}

# <identity folder>/<file name> <identity>; the camera is checked in the file name afterwards
_MSMT17_LINE = re.compile(r"^((?:(\S*)/)?([^/\s]+))\s+([0-9]+)$")
_DIGITS = re.compile(r"[0-9]+")
_MSMT17_EXPECTED = (
    f"MSMT17_V1/ (train/, test/) or MSMT17_V2/ (mask_train_v2/, mask_test_v2/), each with {', '.join(MSMT17_LISTS)}"
)


def find_msmt17(root):
    """The MSMT17 release folder at `root` or directly inside it (the archives often nest
    MSMT17_V2/MSMT17_V2/).

    Returns:
      (absolute release folder, "MSMT17_V1" or "MSMT17_V2").
    """
    root = existing_folder(root)
    inside = [root / version for version in MSMT17_VERSIONS if (root / version).is_dir()]
    if len(inside) > 1:
        raise ReIDError(f"'{root}' holds both MSMT17_V1/ and MSMT17_V2/: point data.root at the one to use")
    if inside:
        return inside[0].resolve(), inside[0].name
    for version, image_folders in MSMT17_VERSIONS.items():  # also a renamed release folder
        if all((root / folder).is_dir() for folder in image_folders) or root.name == version:
            return root.resolve(), version
    raise ReIDError(f"data.root '{root}' is not an MSMT17 release folder, {_MSMT17_EXPECTED}, nor holds one")


def _parse_msmt17_line(line):
    """(relative path, identity folder, listed identity, camera) of a list line, or None when it
    is malformed. Plain string operations: the release's lists have 126,441 lines."""
    match = _MSMT17_LINE.match(line.strip())
    if match is None:
        return None
    relative, folder, name, pid = match.groups()
    name_fields = name.split("_", 3)
    if len(name_fields) < 3 or not _DIGITS.fullmatch(name_fields[2]):
        return None
    return relative, folder or ".", int(pid), int(name_fields[2])


def read_msmt17_list(list_path, image_folder):
    """Reads one MSMT17 list file.

    Returns:
      ([(absolute image path, listed identity, camera, identity folder name)], warnings): listed
      files that do not exist are left out and named in `warnings`; a list none of whose files
      exists is an error (data.root is then not the folder the list belongs to).
    """
    if not list_path.is_file():
        raise ReIDError(
            f"MSMT17 list file '{list_path}' is missing ({', '.join(MSMT17_LISTS)} belong beside the image folders)"
        )
    try:
        lines = list_path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ReIDError(f"MSMT17 list file '{list_path}' is not a text file") from None
    entries, warnings, first_missing = [], [], None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parsed = _parse_msmt17_line(line)
        if parsed is None:
            raise ReIDError(
                f"{list_path}, line {number}: expected '<identity folder>/<identity>_<index>_<camera>_<...>.jpg "
                f"<identity>', got {line.strip()!r}"
            )
        relative, folder, pid, camid = parsed
        path = f"{image_folder}{os.sep}{relative}"
        if not os.path.isfile(path):
            first_missing = first_missing or (number, path)
            warnings.append(f"skipped '{path}': listed in {list_path.name} line {number} but missing")
            continue
        entries.append((path, pid, camid, f"{image_folder.name}/{folder}"))
    if first_missing and not entries:
        number, path = first_missing
        raise ReIDError(
            f"{list_path}, line {number} names '{path}', which does not exist, nor does any other listed file"
        )
    if not entries:
        raise ReIDError(f"MSMT17 list file '{list_path}' lists no image")
    return entries, warnings


def read_msmt17(data, need_train):
    """Layout msmt17: the split MSMT17's list files give (see the module docstring); list_val.txt
    joins training when data.msmt17_val is "train". `need_train` changes nothing: the training
    list numbers the test identities."""
    require_root_only(data, "msmt17")
    release, version = find_msmt17(data.root)
    train_folder, test_folder = (release / name for name in MSMT17_VERSIONS[version])
    for folder in (train_folder, test_folder):
        if not folder.is_dir():
            raise ReIDError(f"{version} image folder '{folder}' is missing")
    lists = {"train": ["list_train.txt"], "query": ["list_query.txt"], "gallery": ["list_gallery.txt"]}
    if data.msmt17_val == "train":
        lists["train"].append("list_val.txt")
    entries, warnings = {}, []
    for split, names in lists.items():
        entries[split] = []
        for name in names:
            listed, list_warnings = read_msmt17_list(release / name, train_folder if split == "train" else test_folder)
            entries[split] += listed
            warnings += list_warnings
    # listed training identities 0..n-1 become 1..n, and the test lists' 0.. become n+1..
    num_training = max(pid for _, pid, _, _ in entries["train"]) + 1
    offsets = {"train": 1, "query": num_training + 1, "gallery": num_training + 1}
    splits = {
        split: [Sample(path, pid + offsets[split], camid) for path, pid, camid, _ in listed]
        for split, listed in entries.items()
    }
    names = {pid + offsets[split]: folder for split, listed in entries.items() for _, pid, _, folder in listed}
    return DatasetSplits(splits["train"], splits["query"], splits["gallery"], warnings, names)
