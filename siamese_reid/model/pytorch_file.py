"""Reads a file written by `torch.save` (a state dict, a checkpoint dict) into numpy arrays,
without PyTorch and without running any code the file's pickle asks for.

`torch.load` unpickles whatever the file holds, and a pickle can call any Python function (a
`.pth` found on the web can run `os.system`). This reader unpickles with `find_class` limited
to the handful of globals a state dict and a torchreid checkpoint dict are made of (ordered
dicts, tensors rebuilt from storages, storage types, numpy scalars); anything else is refused
before it is called. Tensors come back as numpy arrays.

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
import dataclasses
import io
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

from siamese_reid.errors import ReIDError

ZIP_SIGNATURE = b"PK\x03\x04"
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# torch.<Name>Storage -> element type. bfloat16 has no numpy type: read as its 16 bits.
STORAGE_DTYPES = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}


# slots: a pickle's BUILD instruction sets attributes through __dict__, which these do not have
@dataclasses.dataclass(frozen=True, slots=True)
class StorageType:
    """What find_class gives for `torch.FloatStorage` and its kind: the element type."""

    name: str

    @property
    def dtype(self):
        # little-endian on disk: zip files say otherwise in their byteorder record
        if self.name == "BFloat16Storage":
            return np.dtype("<u2")
        return np.dtype(STORAGE_DTYPES[self.name]).newbyteorder("<")


@dataclasses.dataclass(frozen=True, slots=True)
class StorageReference:
    """A storage named by the pickle; its bytes are read once the whole pickle is read."""

    key: str
    storage_type: StorageType
    num_elements: int


@dataclasses.dataclass(frozen=True, slots=True)
class PendingTensor:
    """A tensor the pickle rebuilds: its storage, offset, size and stride (in elements)."""

    storage: StorageReference
    offset: int
    size: tuple
    stride: tuple


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """Stands in for torch._utils._rebuild_tensor_v2: records the tensor, reads nothing yet."""
    if not isinstance(storage, StorageReference) or not _are_counts((storage_offset,), size, stride):
        raise _Corrupt("a tensor record does not have the form torch.save writes")
    if len(size) != len(stride):
        raise _Corrupt(f"a tensor of size {tuple(size)} has stride {tuple(stride)}")
    return PendingTensor(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    """Stands in for torch._utils._rebuild_parameter: a parameter is its tensor."""
    if not isinstance(data, PendingTensor):
        raise _Corrupt("a parameter record does not hold a tensor")
    return data


def _are_counts(*groups):
    return all(isinstance(group, tuple | list) and all(type(n) is int and n >= 0 for n in group) for group in groups)


# numpy scalars, as torchreid saves them (its rank-1 accuracy is a numpy.float32): rebuilt from
# their bytes here, for numeric types only, never by numpy's own reconstructor.
_NUMPY_SCALAR_KINDS = "biuf"


def _numpy_dtype(name, align=False, copy=True):
    # a copy (numpy's own pickles ask for one too): the BUILD that follows sets its state, which
    # must not change numpy's shared float32 type for the whole process
    simple_name = isinstance(name, str) and len(name) <= 4 and name.isalnum()
    dtype = np.dtype(name, align=False, copy=True) if simple_name else None
    if dtype is None or dtype.kind not in _NUMPY_SCALAR_KINDS:
        raise _Corrupt(f"a numpy scalar of type {name!r}, which a checkpoint does not hold")
    return dtype


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.kind not in _NUMPY_SCALAR_KINDS or not isinstance(data, bytes):
        raise _Corrupt("a numpy scalar record does not have the form numpy writes")
    if len(data) != dtype.itemsize:
        raise _Corrupt(f"a numpy {dtype} scalar of {len(data)} bytes")
    return np.frombuffer(data, dtype)[0]


def _latin1_bytes(text, encoding="latin1"):
    """Stands in for _codecs.encode: pickle protocol 2 writes bytes (a numpy scalar's) as a
    latin-1 string and this call."""
    if not isinstance(text, str) or encoding != "latin1":
        raise _Corrupt("an encoded string record does not have the form pickle writes")
    return text.encode("latin1")


# (module, name) -> what unpickling may call for it. Nothing else is ever looked up.
ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "Counter"): collections.Counter,  # torch's MultiStepLR state: its milestones
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
    ("_codecs", "encode"): _latin1_bytes,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,  # pickle protocol 2 spells builtins this way
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "frozenset"): frozenset,
} | {("torch", name): StorageType(name) for name in STORAGE_DTYPES}


class _Corrupt(Exception):
    """Raised inside unpickling; becomes a ReIDError naming the file."""


class _Refused(Exception):
    """A global outside ALLOWED_GLOBALS; becomes a ReIDError naming the file and the global."""

    def __init__(self, module, name):
        super().__init__(f"{module}.{name}")
        self.module, self.name = module, name


class _AllowedCall:
    """An allowed global as the pickle sees it: a new wrapper at every lookup, on which no
    attribute can be set. Handed the class itself (collections.Counter), a pickle's BUILD
    instruction could replace its methods for the rest of the process."""

    __slots__ = ("_target",)

    def __init__(self, target):
        object.__setattr__(self, "_target", target)

    def __setattr__(self, name, value):
        raise _Corrupt(f"the pickle sets attribute {name!r} of a class or function")

    def __call__(self, *args):
        return self._target(*args)


class _RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler that looks up only ALLOWED_GLOBALS and turns persistent ids into
    `StorageReference`s ("Restricting Globals", Python's pickle documentation)."""

    def find_class(self, module, name):
        allowed = ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise _Refused(module, name)
        if isinstance(allowed, StorageType):
            return StorageType(allowed.name)
        return _AllowedCall(allowed)

    def persistent_load(self, saved_id):
        if not isinstance(saved_id, tuple) or not saved_id:
            raise _Corrupt(f"an unknown persistent id {saved_id!r}")
        kind = saved_id[0].decode("ascii") if isinstance(saved_id[0], bytes) else saved_id[0]
        if kind == "module":  # legacy files of whole models name their classes (and source code)
            raise _Refused("torch.nn", "Module")
        if kind != "storage" or len(saved_id) not in (5, 6):
            raise _Corrupt(f"an unknown persistent id {saved_id[:1]!r}")
        storage_type, key, _device, num_elements = saved_id[1:5]
        if len(saved_id) == 6 and saved_id[5] is not None:
            raise _Corrupt("it holds a storage view, written only by PyTorch before 0.4, which is not read")
        if not isinstance(storage_type, StorageType) or not _are_counts((num_elements,)):
            raise _Corrupt("a storage record does not have the form torch.save writes")
        return StorageReference(str(key), storage_type, num_elements)


def _unpickle(data):
    return _RestrictedUnpickler(io.BytesIO(data) if isinstance(data, bytes) else data).load()


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
        stored = _unpickle(_record(archive, pickles[0]))

        def storage_bytes(reference):
            raw = _record(archive, f"{top}data/{reference.key}")
            if raw is None:
                raise _Corrupt(f"storage {reference.key} is missing from the archive")
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
        raise _Corrupt(f"entry {name} cannot be read ({error})") from None


def _read_legacy(path):
    with open(path, "rb") as file:
        try:
            magic_number = _unpickle(file)
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError):
            magic_number = None
        if magic_number != LEGACY_MAGIC_NUMBER:
            raise ReIDError(
                f"'{path}' is not a PyTorch checkpoint (neither a zip archive nor a legacy torch.save file)"
            )
        protocol_version = _unpickle(file)
        if protocol_version != LEGACY_PROTOCOL_VERSION:
            raise ReIDError(f"'{path}' is a legacy PyTorch file of unknown protocol version {protocol_version!r}")
        system = _unpickle(file)
        if not isinstance(system, dict) or not system.get("little_endian", False):
            raise ReIDError(f"'{path}' was written on a big-endian machine in the legacy format, which is not read")
        stored = _unpickle(file)
        keys = _unpickle(file)
        if not isinstance(keys, list):
            raise _Corrupt("the storage list is not a list")
        references = {reference.key: reference for reference in _references_in(stored)}
        data = {}
        for key in keys:
            if key not in references:
                raise _Corrupt(f"storage {key} is listed but not used")
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
                raise _Corrupt(f"storage {reference.key} holds fewer elements than its tensors use")
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
            raise _Corrupt(f"a tensor of size {tensor.size} reads past the end of storage {storage.key}")
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
    except _Refused as refused:
        raise ReIDError(_refusal(path, refused)) from None
    except (EOFError, struct.error):
        raise ReIDError(_CUT_SHORT.format(path=path)) from None
    except pickle.UnpicklingError as error:
        if "truncated" in str(error):  # the C unpickler's word for a pickle that stops early
            raise ReIDError(_CUT_SHORT.format(path=path)) from None
        raise ReIDError(f"'{path}' is not a readable PyTorch checkpoint (UnpicklingError: {error})") from None
    except RecursionError:
        raise ReIDError(f"'{path}' is not a readable PyTorch checkpoint: its contents are nested too deeply") from None
    except _Corrupt as error:
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
