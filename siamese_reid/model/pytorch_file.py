"""Reads a file written by `torch.save` (a state dict, a checkpoint dict) into numpy arrays,
without PyTorch and without running any code the file's pickle asks for (`torch_pickle`).

Two layouts of `torch.save`, both read (facts from torch/serialization.py, torch 2.x):

- zip (torch >= 1.6): an archive whose entries share one top folder; `<top>/data.pkl` is the
  pickled object, `<top>/data/<key>` the raw bytes of storage `<key>`, `<top>/byteorder`
  "little" or "big" (little when absent; only little-endian files are read: those of every
  x86 and ARM machine).
- legacy (torch < 1.6, or `_use_new_zipfile_serialization=False`): five things in a row: a
  pickled magic number, a pickled protocol version (1001), a pickled dict of system facts
  (`little_endian`), the pickled object, a pickled list of storage keys; then, for each key
  in that order, the storage's element count as a little-endian int64 and its raw
  little-endian bytes.

In both, the object's pickle names storages by "persistent id" tuples ('storage', storage
type, key, device, number of elements[, legacy view: None since PyTorch 0.4]) and tensors by
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` (offsets and strides in
elements).
"""

import collections
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

from siamese_reid.errors import ReIDError
from siamese_reid.model.torch_pickle import CorruptCheckpoint, PendingTensor, RefusedGlobal, unpickle

ZIP_SIGNATURE = b"PK\x03\x04"
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001


# ---------------------------------------------------------------------------------------------
# The two layouts: each returns (the unpickled object, {storage key: its bytes as a flat array})


def _read_zip(path):
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ReIDError(_CUT_SHORT.format(path=path)) from None
    with archive:
        pickles = [name for name in archive.namelist() if name.count("/") == 1 and name.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ReIDError(f"'{path}' is a zip archive but not a torch.save checkpoint (no single <folder>/data.pkl)")
        top = pickles[0][: -len("data.pkl")]
        byte_order = (_record(archive, top + "byteorder") or b"little").decode("ascii", "replace")
        if byte_order != "little":
            raise ReIDError(f"'{path}' was written with byte order {byte_order!r}; only little-endian files are read")
        stored = unpickle(_record(archive, pickles[0]))

        def storage_bytes(reference):
            raw = _record(archive, f"{top}data/{reference.key}")
            if raw is None:
                raise CorruptCheckpoint(f"storage {reference.key} is missing from the archive")
            dtype = reference.storage_type.dtype
            return np.frombuffer(raw, dtype)

        return stored, _storages_of(stored, storage_bytes)


def _record(archive, name):
    """The bytes of entry `name`, or None when the archive has none."""
    try:
        return archive.read(name)
    except KeyError:
        return None
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise CorruptCheckpoint(f"entry {name} cannot be read ({error})") from None


def _read_legacy(path):
    with open(path, "rb") as file:
        try:
            magic_number = unpickle(file)
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError):
            magic_number = None
        if magic_number != LEGACY_MAGIC_NUMBER:
            raise ReIDError(
                f"'{path}' is not a PyTorch checkpoint (neither a zip archive nor a legacy torch.save file)"
            )
        protocol_version = unpickle(file)
        if protocol_version != LEGACY_PROTOCOL_VERSION:
            raise ReIDError(f"'{path}' is a legacy PyTorch file of unknown protocol version {protocol_version!r}")
        system = unpickle(file)
        if not isinstance(system, dict) or not system.get("little_endian", False):
            raise ReIDError(f"'{path}' was written on a big-endian machine in the legacy format, which is not read")
        stored = unpickle(file)
        keys = unpickle(file)
        if not isinstance(keys, list):
            raise CorruptCheckpoint("the storage list is not a list")
        references = {reference.key: reference for reference in _references_in(stored)}
        data = {}
        for key in keys:
            if key not in references:
                raise CorruptCheckpoint(f"storage {key} is listed but not used")
            dtype = references[key].storage_type.dtype
            (count,) = struct.unpack("<q", _read_exactly(file, 8))
            data[key] = np.frombuffer(_read_exactly(file, count * dtype.itemsize), dtype)
    return stored, _storages_of(stored, lambda reference: data.get(reference.key))


def _read_exactly(file, num_bytes):
    content = file.read(num_bytes)
    if len(content) != num_bytes:
        raise EOFError
    return content


def _references_in(stored):
    return [tensor.storage for tensor in _walk(stored) if isinstance(tensor, PendingTensor)]


def _storages_of(stored, storage_bytes):
    """{key: flat array} for every storage a tensor of `stored` uses, each read once."""
    storages = {}
    for reference in _references_in(stored):
        if reference.key not in storages:
            flat = storage_bytes(reference)
            if flat is None or len(flat) < reference.num_elements:
                raise CorruptCheckpoint(f"storage {reference.key} holds fewer elements than its tensors use")
            storages[reference.key] = flat
    return storages


# ---------------------------------------------------------------------------------------------
# From records to arrays


def _walk(value):
    """Every value inside dicts, lists, tuples and sets, `value` included."""
    yield value
    if isinstance(value, dict):
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from _walk(item)


def tensor_array(tensor, flat):
    """The numpy array of `tensor` (`PendingTensor`) whose storage is the flat array `flat`.

    A tensor is a strided view of its storage: element [i0, i1, ...] is
    flat[offset + i0 * stride0 + i1 * stride1 + ...] (a transposed or sliced tensor shares its
    storage with others). Returns a native-endian copy that owns its data.
    """
    storage = tensor.storage
    start = tensor.offset
    if any(n == 0 for n in tensor.size):
        values = np.zeros(tensor.size, flat.dtype)
    else:
        last = start + sum((n - 1) * step for n, step in zip(tensor.size, tensor.stride, strict=True))
        if last >= len(flat):
            raise CorruptCheckpoint(f"a tensor of size {tensor.size} reads past the end of storage {storage.key}")
        strides = tuple(step * flat.itemsize for step in tensor.stride)
        values = np.lib.stride_tricks.as_strided(flat[start:], tensor.size, strides, writeable=False)
    values = np.array(values, dtype=values.dtype.newbyteorder("="))
    if storage.storage_type.name == "BFloat16Storage":
        # bfloat16 is the top half of a float32
        values = (values.astype(np.uint32) << 16).view(np.float32)
    return values


def _with_arrays(value, storages):
    """`value` with every PendingTensor replaced by its array (containers rebuilt alike)."""
    if isinstance(value, PendingTensor):
        return tensor_array(value, storages[value.storage.key])
    if isinstance(value, dict):
        rebuilt = type(value)() if isinstance(value, collections.OrderedDict | collections.Counter) else {}
        for key, item in value.items():
            rebuilt[key] = _with_arrays(item, storages)
        return rebuilt
    if isinstance(value, list | tuple):
        return type(value)(_with_arrays(item, storages) for item in value)
    return value


def read_torch_file(path):
    """The object a `torch.save` file holds, with every tensor as a numpy array.

    Only state dicts, checkpoint dicts and plain values are read: a file whose pickle asks for
    any other Python object (a whole pickled model, a program) is refused before anything of
    it runs.

    Args:
      path: a file written by torch.save, zip or legacy layout.

    Returns:
      The saved object: dicts, lists, numbers, strings, and numpy arrays in place of tensors
      (float32, float16, int64, ... as saved; bfloat16 as float32).

    Raises:
      ReIDError: the file is missing, cut short, not a torch.save file, or asks for code.
    """
    path = Path(path)
    if not path.is_file():
        raise ReIDError(f"checkpoint file '{path}' does not exist")
    with open(path, "rb") as file:
        start = file.read(len(ZIP_SIGNATURE))
    try:
        stored, storages = _read_zip(path) if start == ZIP_SIGNATURE else _read_legacy(path)
        return _with_arrays(stored, storages)
    except ReIDError:
        raise
    except RefusedGlobal as refused:
        raise ReIDError(_refusal(path, refused)) from None
    except (EOFError, struct.error):
        raise ReIDError(_CUT_SHORT.format(path=path)) from None
    except pickle.UnpicklingError as error:
        if "truncated" in str(error):  # the C unpickler's word for a pickle that stops early
            raise ReIDError(_CUT_SHORT.format(path=path)) from None
        raise ReIDError(f"'{path}' is not a readable PyTorch checkpoint (UnpicklingError: {error})") from None
    except RecursionError:
        raise ReIDError(f"'{path}' is not a readable PyTorch checkpoint: its contents are nested too deeply") from None
    except CorruptCheckpoint as error:
        raise ReIDError(f"'{path}' is not a readable PyTorch checkpoint: {error}") from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
        raise ReIDError(f"'{path}' is not a readable PyTorch checkpoint ({type(error).__name__}: {error})") from None


_CUT_SHORT = "'{path}' is cut short: it ends inside a PyTorch checkpoint (an interrupted download or copy?)"


def _refusal(path, refused):
    what = f"{refused.module}.{refused.name}"
    if refused.module.startswith("__torch__"):
        return (
            f"'{path}' is a TorchScript model (torch.jit.save), not a state dict: refused, as loading it would run "
            "its code; in PyTorch, save model.state_dict() with torch.save instead"
        )
    if refused.module.startswith("torch.nn") or refused.module.startswith("torchreid"):
        return (
            f"'{path}' holds a whole pickled model ({what}), not a state dict: refused, as loading it would run "
            "code from the file; in PyTorch, save model.state_dict() instead"
        )
    return (
        f"'{path}' asks to call {what} while loading: refused without running it (a checkpoint holds only "
        "tensors and plain values; this file is something else)"
    )
