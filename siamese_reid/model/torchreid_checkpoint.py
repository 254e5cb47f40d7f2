"""torchreid's checkpoint files: which state dict they hold, under which names, for which network.

torchreid writes two kinds of `.pth` file, both read here (through `pytorch_file`, which runs no
code from the file):

- a bare state dict {parameter name: tensor}: its ImageNet backbones (`osnet_x1_0_imagenet.pth`,
  1000-way classifier) and the model-zoo re-ID models;
- a checkpoint dict {'state_dict': ..., 'epoch': ..., 'rank1': ..., 'optimizer': ...,
  'scheduler': ...} (`torchreid.utils.save_checkpoint`, `model.pth.tar-<epoch>`).

Names carry a `module.` prefix when the model was wrapped in nn.DataParallel. The classifier
(`classifier.weight`, `classifier.bias`: ImageNet's 1000 classes or the training identities) is
dropped: an embedding needs the features before it.
"""

import dataclasses
import zipfile
from pathlib import Path

import numpy as np

from siamese_reid.errors import ReIDError
from siamese_reid.model.pytorch_file import LEGACY_MAGIC_NUMBER, ZIP_SIGNATURE, read_torch_file

DATA_PARALLEL_PREFIX = "module."
CLASSIFIER_PREFIX = "classifier."
# Names of torch.save files: torchreid's `model.pth.tar-60`, `osnet_x1_0_imagenet.pth`, `.pt`.
_TORCH_SUFFIXES = (".pth", ".pt", ".tar", ".bin")
# The first bytes of a legacy torch.save file: pickle protocol 2, then the magic number as a
# 10-byte LONG1 (opcode 0x8a, length 10).
_LEGACY_START = b"\x80\x02\x8a\x0a" + LEGACY_MAGIC_NUMBER.to_bytes(10, "little")


@dataclasses.dataclass(frozen=True)
class TorchreidWeights:
    """The state dict of a torchreid checkpoint, ready to map onto a Keras network.

    Attributes:
      state_dict: parameter name (no `module.` prefix) -> numpy array, classifier left out.
      num_classes: the dropped classifier's classes (1000: an ImageNet backbone; else the
        training identities), or None without a classifier.
      epoch: the checkpoint dict's epoch, or None (a bare state dict).
      path: the file read.
    """

    state_dict: dict
    num_classes: int | None
    epoch: int | None
    path: str


def looks_like_torch_file(path):
    """Whether `path` is meant as a torch.save file: by its name (`.pth`, `.pth.tar-60`, `.pt`)
    or its first bytes. A Keras `.weights.h5` or `.keras` file is not."""
    path = Path(path)
    if any(suffix in _TORCH_SUFFIXES or suffix.startswith(".tar-") for suffix in path.suffixes):
        return True
    if not path.is_file():
        return False
    with open(path, "rb") as file:
        start = file.read(len(_LEGACY_START))
    if start == _LEGACY_START:
        return True
    if start.startswith(ZIP_SIGNATURE) and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/data.pkl") for name in archive.namelist())
    return False


def _state_dict_of(saved, path):
    """The state dict inside what the file holds: the dict itself, or its 'state_dict'."""
    if not isinstance(saved, dict):
        raise ReIDError(f"'{path}' holds a {type(saved).__name__}, not a state dict or a torchreid checkpoint dict")
    if "state_dict" in saved:
        state_dict, epoch = saved["state_dict"], saved.get("epoch")
    else:
        state_dict, epoch = saved, None
    if not isinstance(state_dict, dict) or not state_dict:
        raise ReIDError(f"'{path}' has an empty or malformed state dict")
    for name, value in state_dict.items():
        if not isinstance(name, str) or not isinstance(value, np.ndarray):
            keys = ", ".join(repr(key) for key in list(saved)[:6])
            raise ReIDError(
                f"'{path}' is not a state dict: its entry {name!r} is a {type(value).__name__}, not a tensor "
                f"(top-level keys: {keys}); a torchreid checkpoint dict keeps its weights under 'state_dict'"
            )
    return state_dict, epoch if isinstance(epoch, int) else None


def _without_data_parallel_prefix(state_dict, path):
    # torchreid's load_pretrained_weights strips the prefix name by name; so does this.
    renamed = {}
    for name, value in state_dict.items():
        bare = name[len(DATA_PARALLEL_PREFIX) :] if name.startswith(DATA_PARALLEL_PREFIX) else name
        if bare in renamed:
            raise ReIDError(f"'{path}' holds '{bare}' twice, with and without the '{DATA_PARALLEL_PREFIX}' prefix")
        renamed[bare] = value
    return renamed


def read_torchreid_weights(path):
    """Reads a torchreid `.pth` file: bare state dict or checkpoint dict, zip or legacy layout.

    Returns:
      `TorchreidWeights`, with the `module.` prefix removed and the classifier left out.

    Raises:
      ReIDError: one line saying why the file cannot be used.
    """
    state_dict, epoch = _state_dict_of(read_torch_file(path), path)
    state_dict = _without_data_parallel_prefix(state_dict, path)
    classifier = state_dict.get(CLASSIFIER_PREFIX + "weight")
    kept = {name: value for name, value in state_dict.items() if not name.startswith(CLASSIFIER_PREFIX)}
    if not kept:
        raise ReIDError(f"'{path}' holds only a classifier, no network weights")
    num_classes = int(classifier.shape[0]) if classifier is not None and classifier.ndim == 2 else None
    return TorchreidWeights(kept, num_classes, epoch, str(path))


# conv1's filters -> OSNet width (torchreid's osnet.py and osnet_ain.py)
_OSNET_WIDTH_OF_STEM = {64: "x1_0", 48: "x0_75", 32: "x0_5", 16: "x0_25"}


def guess_architecture(state_dict):
    """torchreid's name of the network a state dict belongs to, from its names and the width
    of its stem, or a description ("a ResNet") when it is not an OSNet; None when unknown.

    Tells a user which --arch a checkpoint needs when it does not fit the one given.
    """
    stem = state_dict.get("conv1.conv.weight")
    if stem is not None and stem.ndim == 4 and stem.shape[0] in _OSNET_WIDTH_OF_STEM:
        width = _OSNET_WIDTH_OF_STEM[stem.shape[0]]
        if "pool2.0.conv.weight" in state_dict:  # osnet_ain.py names its transitions pool2, pool3
            return f"osnet_ain_{width}"
        if any(name.startswith("conv2.0.IN.") for name in state_dict):
            return f"osnet_ibn_{width}"
        return f"osnet_{width}"
    if "conv1.weight" in state_dict and any(name.startswith("layer4.") for name in state_dict):
        return "a ResNet"
    if any(name.startswith("features.") for name in state_dict):
        return "a VGG- or MobileNet-style network"
    return None


def torchreid_checkpoint_path(backbone, weights):
    """The torchreid checkpoint `model.weights` names, or None (none, imagenet, a Keras file).

    Raises:
      ReIDError: a PyTorch checkpoint for a backbone that is not an OSNet.
    """
    from siamese_reid.model.osnet import OSNET_VARIANTS

    if weights in (None, "none", "random", "imagenet") or not looks_like_torch_file(weights):
        return None
    if backbone not in OSNET_VARIANTS:
        raise ReIDError(
            f"model.weights '{weights}' is a PyTorch checkpoint: those load into torchreid's OSNet backbones "
            f"({', '.join(OSNET_VARIANTS)}), not {backbone}"
        )
    return Path(weights).expanduser()


def load_torchreid_checkpoint(tower, path, architecture):
    """Reads the torchreid checkpoint `path` and sets `tower`'s OSNet backbone (and torchreid
    feature layer) from it (`osnet_weights.load_torchreid_state_dict`).

    Args:
      tower: an embedding tower whose `model.backbone` is `architecture` (an OSNet variant).
      path: a torchreid `.pth` file (`read_torchreid_weights`).
      architecture: the tower's model.backbone, named in the error when the checkpoint differs.

    Returns:
      The `TorchreidWeights` read.

    Raises:
      ReIDError: the file cannot be read, or its state dict does not fit the tower (naming the
        missing, unexpected or differently shaped tensors, and the architecture it looks like).
    """
    from siamese_reid.model.osnet_weights import load_torchreid_state_dict

    weights = read_torchreid_weights(path)
    try:
        load_torchreid_state_dict(tower, weights.state_dict)
    except ValueError as error:
        raise ReIDError(_mismatch(path, architecture, weights.state_dict, error)) from None
    return weights


def _mismatch(path, architecture, state_dict, error):
    """One line on why a state dict does not fit: another network, another OSNet, or names."""
    guess = guess_architecture(state_dict)
    if guess is None or not guess.startswith("osnet_"):
        names = ", ".join(list(state_dict)[:4])
        return (
            f"'{path}' holds {guess or 'another network'} (tensors {names}, ...), not torchreid's {architecture}: "
            "only torchreid OSNet checkpoints can be loaded"
        )
    if guess != architecture:
        return (
            f"'{path}' is a torchreid {guess} checkpoint, not {architecture}: "
            f"use {guess} as the architecture (--arch, or model.backbone)"
        )
    return f"'{path}' does not fit {architecture}: {error}"
