"""Unpickling what torch.save pickles, and nothing else: no code named in the file ever runs.

`torch.load` unpickles whatever the file holds, and a pickle can call any Python function (a
`.pth` found on the web can run `os.system`). `RestrictedUnpickler.find_class` allows only the
handful of globals a state dict and a torchreid checkpoint dict are made of (ordered dicts,
tensors rebuilt from storages, storage types, numpy scalars) and refuses anything else before
it is called ("Restricting Globals", Python's pickle documentation).

Storages and tensors are not read here: persistent ids become `StorageReference`s and
`torch._utils._rebuild_tensor_v2` calls become `PendingTensor`s (storage, offset, size, stride
in elements), which `pytorch_file` turns into numpy arrays once it has the storages' bytes.
"""

import collections
import dataclasses
import io
import pickle

import numpy as np

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
        # little-endian on disk (a file that says otherwise is refused before storages are read)
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
    if not isinstance(storage, StorageReference) or not are_counts((storage_offset,), size, stride):
        raise CorruptCheckpoint("a tensor record does not have the form torch.save writes")
    if len(size) != len(stride):
        raise CorruptCheckpoint(f"a tensor of size {tuple(size)} has stride {tuple(stride)}")
    return PendingTensor(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    """Stands in for torch._utils._rebuild_parameter: a parameter is its tensor."""
    if not isinstance(data, PendingTensor):
        raise CorruptCheckpoint("a parameter record does not hold a tensor")
    return data


def are_counts(*groups):
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
        raise CorruptCheckpoint(f"a numpy scalar of type {name!r}, which a checkpoint does not hold")
    return dtype


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.kind not in _NUMPY_SCALAR_KINDS or not isinstance(data, bytes):
        raise CorruptCheckpoint("a numpy scalar record does not have the form numpy writes")
    if len(data) != dtype.itemsize:
        raise CorruptCheckpoint(f"a numpy {dtype} scalar of {len(data)} bytes")
    return np.frombuffer(data, dtype)[0]


def _latin1_bytes(text, encoding="latin1"):
    """Stands in for _codecs.encode: pickle protocol 2 writes bytes (a numpy scalar's) as a
    latin-1 string and this call."""
    if not isinstance(text, str) or encoding != "latin1":
        raise CorruptCheckpoint("an encoded string record does not have the form pickle writes")
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


class CorruptCheckpoint(Exception):
    """Raised while reading; the reader turns it into a ReIDError naming the file."""


class RefusedGlobal(Exception):
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
        raise CorruptCheckpoint(f"the pickle sets attribute {name!r} of a class or function")

    def __call__(self, *args):
        return self._target(*args)


class RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler that looks up only ALLOWED_GLOBALS and turns persistent ids into
    `StorageReference`s ("Restricting Globals", Python's pickle documentation)."""

    def find_class(self, module, name):
        allowed = ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise RefusedGlobal(module, name)
        if isinstance(allowed, StorageType):
            return StorageType(allowed.name)
        return _AllowedCall(allowed)

    def persistent_load(self, saved_id):
        if not isinstance(saved_id, tuple) or not saved_id:
            raise CorruptCheckpoint(f"an unknown persistent id {saved_id!r}")
        kind = saved_id[0].decode("ascii") if isinstance(saved_id[0], bytes) else saved_id[0]
        if kind == "module":  # legacy files of whole models name their classes (and source code)
            raise RefusedGlobal("torch.nn", "Module")
        if kind != "storage" or len(saved_id) not in (5, 6):
            raise CorruptCheckpoint(f"an unknown persistent id {saved_id[:1]!r}")
        storage_type, key, _device, num_elements = saved_id[1:5]
        if len(saved_id) == 6 and saved_id[5] is not None:
            raise CorruptCheckpoint("it holds a storage view, written only by PyTorch before 0.4, which is not read")
        if not isinstance(storage_type, StorageType) or not are_counts((num_elements,)):
            raise CorruptCheckpoint("a storage record does not have the form torch.save writes")
        return StorageReference(str(key), storage_type, num_elements)


def unpickle(data):
    """Unpickles bytes or the next pickle of a binary file, restricted."""
    return RestrictedUnpickler(io.BytesIO(data) if isinstance(data, bytes) else data).load()
