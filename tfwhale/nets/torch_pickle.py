"""Stage 2 (train) weights input: read a PyTorch legacy (pre-zip) `.pth` state dict into numpy, without torch.

The legacy format is a run of pickles (magic number, protocol version, system info, the state dict, the
storage keys) followed by each storage's raw bytes. The state dict's pickle may name only the few
globals a plain tensor state dict needs; any other global is refused, so a crafted file cannot run code.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C  # torch/serialization.py
PROTOCOL_VERSION = 1001

# torch storage class -> numpy dtype (little-endian, as the files this reads declare)
_STORAGE_DTYPES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class TorchPickleError(ValueError):
    """The file is not a legacy PyTorch state dict this reader accepts (or it names a forbidden global)."""


@dataclass(frozen=True)
class _StorageType:
    dtype: str


class _Storage:
    def __init__(self, key: str, dtype: str, numel: int):
        self.key, self.dtype, self.numel = key, np.dtype(dtype), numel
        self.data: np.ndarray | None = None


@dataclass(frozen=True)
class _TensorRef:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    def to_numpy(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise TorchPickleError(f"storage {self.storage.key} has no data in the file")
        if not self.shape:
            return data[self.offset].copy()
        needed = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride, strict=True)) + 1
        if min(self.shape) > 0 and needed > data.size:
            raise TorchPickleError(f"a tensor reaches past its storage {self.storage.key}")
        strides = tuple(s * data.itemsize for s in self.stride)
        view = np.lib.stride_tricks.as_strided(data[self.offset :], self.shape, strides, writeable=False)
        return np.array(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, hooks=None, *metadata):
    if not isinstance(storage, _Storage):
        raise TorchPickleError("_rebuild_tensor_v2 got something other than a storage")
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


class _StateDictUnpickler(pickle.Unpickler):
    """Resolves exactly the globals of a tensor state dict; refuses every other one."""

    def __init__(self, file: BinaryIO):
        super().__init__(file)
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise TorchPickleError(f"refusing to load global {module}.{name}: not part of a tensor state dict")

    def persistent_load(self, pid: Any) -> _Storage:
        # ('storage', storage type, key, location, numel[, view metadata])
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise TorchPickleError(f"unexpected persistent id {pid!r}")
        storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
        if not isinstance(storage_type, _StorageType):
            raise TorchPickleError(f"storage {key} has no known storage type")
        if len(pid) > 5 and pid[5] is not None:
            raise TorchPickleError(f"storage {key} is a view; this reader takes plain storages only")
        if key not in self.storages:
            self.storages[key] = _Storage(key, storage_type.dtype, numel)
        return self.storages[key]


def _load_plain(f: BinaryIO, what: str) -> Any:
    """A header pickle: plain data only (no globals at all)."""

    class _NoGlobals(pickle.Unpickler):
        def find_class(self, module, name):
            raise TorchPickleError(f"refusing to load global {module}.{name} in the {what}")

    return _NoGlobals(f).load()


def load_state_dict(source: str | bytes | BinaryIO) -> dict[str, np.ndarray]:
    """{name: numpy array} from a legacy `.pth` (path, bytes or binary file); else TorchPickleError."""
    if isinstance(source, bytes):
        return _read(io.BytesIO(source))
    if isinstance(source, str):
        with open(source, "rb") as f:
            try:
                return _read(f)
            except TorchPickleError as err:
                raise TorchPickleError(f"{source}: {err}") from None
    return _read(source)


def _read(f: BinaryIO) -> dict[str, np.ndarray]:
    if f.read(2) == b"PK":
        raise TorchPickleError("this is PyTorch's zip format; only the legacy (pre-1.6) format is read here")
    f.seek(-2, io.SEEK_CUR)
    try:
        if _load_plain(f, "header") != MAGIC_NUMBER:
            raise TorchPickleError("not a PyTorch legacy file (wrong magic number)")
        if _load_plain(f, "header") != PROTOCOL_VERSION:
            raise TorchPickleError("unsupported PyTorch legacy protocol version")
        _load_plain(f, "system info")
        unpickler = _StateDictUnpickler(f)
        state = unpickler.load()
        keys = _load_plain(f, "storage keys")
    except (pickle.UnpicklingError, EOFError, struct.error) as err:
        raise TorchPickleError(f"not a readable PyTorch legacy file: {err}") from None
    for key in keys:
        _read_storage(f, unpickler.storages.get(str(key)), str(key))
    if not isinstance(state, dict):
        raise TorchPickleError(f"expected a state dict, found {type(state).__name__}")
    return {str(name): _as_array(name, value) for name, value in state.items()}


def _read_storage(f: BinaryIO, storage: _Storage | None, key: str) -> None:
    if storage is None:
        raise TorchPickleError(f"storage {key} is listed but no tensor uses it")
    header = f.read(8)
    if len(header) != 8:
        raise TorchPickleError(f"file ends before storage {key}")
    (numel,) = struct.unpack("<q", header)
    if numel != storage.numel:
        raise TorchPickleError(f"storage {key}: {numel} elements in the file, {storage.numel} declared")
    raw = f.read(numel * storage.dtype.itemsize)
    if len(raw) != numel * storage.dtype.itemsize:
        raise TorchPickleError(f"file ends inside storage {key}")
    storage.data = np.frombuffer(raw, storage.dtype)


def _as_array(name: Any, value: Any) -> np.ndarray:
    if not isinstance(value, _TensorRef):
        raise TorchPickleError(f"entry {name!r} is {type(value).__name__}, not a tensor")
    return value.to_numpy()
