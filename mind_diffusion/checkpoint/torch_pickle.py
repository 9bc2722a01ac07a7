"""Read torch weight files without torch and without running code from them.

``read_torch_file`` reads a ``.pt`` / ``.pth`` / ``.ckpt`` / ``.bin`` file with a restricted
unpickler that constructs only tensors, storages, OrderedDicts, int lists and inert state
holders for ``__torch__.*`` module classes; it never imports or runs anything the file names.
Both the zip format (``<root>/data.pkl`` + ``<root>/data/<key>``, TorchScript or
``torch.save``) and the legacy pre-1.6 ``torch.save`` stream are understood.
"""
from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .io import CheckpointError


class TorchFileError(CheckpointError):
    """A torch weights file cannot be read safely (not a torch file, truncated, or it names
    code outside the allow-list)."""

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    """A storage referenced by the pickle; ``data`` (flat numpy) is filled in when read."""

    def __init__(self, key, stype: _StorageType, numel):
        self.key, self.stype, self.numel = str(key), stype, int(numel)
        self.data: np.ndarray | None = None


class _TensorRef:
    """A tensor rebuilt lazily from (storage, offset, size, stride): legacy files store the
    storage bytes after the pickle, so arrays are materialised once everything is read."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset = storage, int(offset)
        self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)

    def numpy(self) -> np.ndarray:
        st = self.storage
        if st.data is None:
            raise TorchFileError(f"tensor storage {st.key} has no data in the file")
        flat = st.data
        if len(self.size) == 0:
            return np.array(flat[self.offset])
        if any(s == 0 for s in self.size):
            return np.zeros(self.size, flat.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if self.offset < 0 or last >= flat.size or any(s < 0 for s in self.stride):
            raise TorchFileError(f"tensor view out of bounds of storage {st.key}")
        view = np.lib.stride_tricks.as_strided(flat[self.offset:], shape=self.size,
                                               strides=[s * flat.itemsize for s in self.stride])
        return np.array(view)  # contiguous copy


def _rebuild_tensor(storage, storage_offset, size, stride, *_unused):
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("tensor without a storage")
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *_unused):
    return data


def _build_list(items):
    return list(items)


class StateHolder:
    """Inert stand-in for a pickled TorchScript module object: keeps its state dict only."""

    _torch_class = "?"

    def __init__(self, *args, **kwargs):  # inert: a REDUCE of an unknown class lands here
        pass

    def __setstate__(self, state):
        self.__dict__["_state"] = state if isinstance(state, dict) else {"_value": state}

    @property
    def state(self) -> dict:
        return self.__dict__.get("_state", {})

    def __repr__(self):
        return f"<{self._torch_class}>"


_HOLDER_TYPES: dict = {}


def _holder_type(module, name):
    key = f"{module}.{name}"
    if key not in _HOLDER_TYPES:
        _HOLDER_TYPES[key] = type(name, (StateHolder,), {"_torch_class": key})
    return _HOLDER_TYPES[key]


class RestrictedTorchUnpickler(pickle.Unpickler):
    """Unpickler for torch weight files that resolves only an allow-list of globals."""

    _FUNCS = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch.jit._pickle", "build_intlist"): _build_list,
        ("torch.jit._pickle", "build_doublelist"): _build_list,
        ("torch.jit._pickle", "build_boollist"): _build_list,
    }

    def __init__(self, file, storages: dict, load_storage=None, lenient: bool = False):
        super().__init__(file)
        self._lenient = lenient            # unknown globals -> inert holders (never imported)
        self._storages = storages          # key -> _Storage (shared across a file)
        self._load_storage = load_storage  # callable(_Storage) filling .data (zip format)

    def find_class(self, module, name):
        if (module, name) in self._FUNCS:
            return self._FUNCS[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "__torch__" or module.startswith("__torch__."):
            return _holder_type(module, name)
        if self._lenient:  # e.g. Lightning callbacks pickled into SD .ckpt files
            return _holder_type(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file "
                                     f"(not a plain tensor / module-state object)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        stype, key, _location, numel = pid[1], str(pid[2]), pid[3], pid[4]
        if not isinstance(stype, _StorageType):
            raise pickle.UnpicklingError(f"unsupported storage type {stype!r:.80}")
        view = pid[5] if len(pid) > 5 else None
        st = self._storages.get(key)
        if st is None:
            st = _Storage(key, stype, numel)
            self._storages[key] = st
            if self._load_storage is not None:
                self._load_storage(st)
        if view is not None:  # legacy: (view_key, offset, view_size) into the root storage
            view_key, offset, view_size = view
            vk = f"{key}/view/{view_key}"
            if vk not in self._storages:
                v = _Storage(vk, stype, view_size)
                v._root, v._offset = st, int(offset)  # resolved after the data is read
                self._storages[vk] = v
            return self._storages[vk]
        return st


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


@dataclass
class TorchFile:
    """What a torch weights file holds: tensors by dotted name, and non-tensor attributes
    (ints / lists such as stride and padding of TorchScript modules) by dotted name."""

    tensors: dict
    attributes: dict
    kind: str  # "torchscript" or "state_dict"


def _flatten(obj, prefix, tensors, attrs, depth=0):
    if depth > 64:
        raise TorchFileError("weights file nests too deeply")
    if isinstance(obj, StateHolder):
        for k, v in obj.state.items():
            _flatten(v, f"{prefix}{k}.", tensors, attrs, depth + 1)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(v, f"{prefix}{k}.", tensors, attrs, depth + 1)
    elif isinstance(obj, _TensorRef):
        tensors[prefix[:-1]] = obj.numpy()
    elif isinstance(obj, (int, float, bool, str, list, tuple)) or obj is None:
        attrs[prefix[:-1]] = obj


def _zip_root(names) -> str:
    roots = [n[: -len("data.pkl")] for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if len(roots) != 1:
        raise TorchFileError("zip file has no single '<root>/data.pkl' record (not a torch file?)")
    return roots[0]


def _read_zip(path: Path, lenient: bool = False):
    storages: dict = {}
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        root = _zip_root(names)
        byteorder = "little"
        if f"{root}byteorder" in names:
            byteorder = zf.read(f"{root}byteorder").decode().strip()
        if byteorder != "little":
            raise TorchFileError(f"{path}: big-endian torch files are not supported")

        def load_storage(st: _Storage):
            rec = f"{root}data/{st.key}"
            try:
                raw = zf.read(rec)
            except KeyError:
                raise TorchFileError(f"{path}: storage record {rec} missing") from None
            need = st.numel * st.stype.dtype.itemsize
            if len(raw) < need:
                raise TorchFileError(f"{path}: storage {rec} has {len(raw)} bytes, expected {need}")
            st.data = np.frombuffer(raw[:need], dtype=st.stype.dtype.newbyteorder("<"))

        with zf.open(f"{root}data.pkl") as f:
            obj = RestrictedTorchUnpickler(io.BytesIO(f.read()), storages, load_storage,
                                           lenient=lenient).load()
    return obj


def _read_legacy(path: Path, lenient: bool = False):
    storages: dict = {}
    with open(path, "rb") as fh:
        f = io.BytesIO(fh.read())

    def unp():
        return RestrictedTorchUnpickler(f, storages, lenient=lenient).load()

    try:
        magic = unp()
    except Exception as exc:
        raise TorchFileError(f"{path} is neither a torch zip file nor a legacy torch file "
                              f"({type(exc).__name__}: {str(exc)[:120]})") from None
    if magic != _LEGACY_MAGIC:
        raise TorchFileError(f"{path} is not a torch weights file (bad magic number)")
    protocol = unp()
    if protocol != _LEGACY_PROTOCOL:
        raise TorchFileError(f"{path}: unsupported legacy torch protocol {protocol}")
    sys_info = unp()
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise TorchFileError(f"{path}: big-endian torch files are not supported")
    obj = unp()
    keys = unp()
    for key in keys:
        st = storages.get(str(key))
        if st is None:
            raise TorchFileError(f"{path}: storage {key} listed but never referenced")
        head = f.read(8)
        if len(head) != 8:
            raise TorchFileError(f"{path} is truncated (storage {key})")
        (numel,) = struct.unpack("<q", head)
        nbytes = numel * st.stype.dtype.itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise TorchFileError(f"{path} is truncated (storage {key})")
        st.data = np.frombuffer(raw, dtype=st.stype.dtype.newbyteorder("<"))
    for st in list(storages.values()):
        root = getattr(st, "_root", None)
        if root is not None and root.data is not None:
            st.data = root.data[st._offset: st._offset + st.numel]
    return obj


def read_torch_file(path, lenient: bool = False) -> TorchFile:
    """Read tensors (as numpy) and plain attributes from a torch ``.pt`` / ``.pth`` file with the
    restricted unpickler. Raises ``TorchFileError`` for anything it cannot read safely.

    ``lenient``: globals outside the allow-list (e.g. training callbacks pickled into Stable
    Diffusion ``.ckpt`` files) become inert placeholder objects instead of an error; nothing
    is imported or executed either way."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        if zipfile.is_zipfile(path):
            obj = _read_zip(path, lenient)
        else:
            obj = _read_legacy(path, lenient)
    except TorchFileError:
        raise
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, TypeError,
            AttributeError, KeyError, IndexError) as exc:
        raise TorchFileError(f"cannot read {path} as torch weights: {type(exc).__name__}: "
                              f"{str(exc)[:200]}") from None
    tensors, attrs = {}, {}
    kind = "torchscript" if isinstance(obj, StateHolder) else "state_dict"
    if kind == "state_dict" and isinstance(obj, dict) and "state_dict" in obj \
            and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, (dict, StateHolder)):
        raise TorchFileError(f"{path}: expected a module or a state dict, got {type(obj).__name__}")
    _flatten(obj, "", tensors, attrs)
    return TorchFile(tensors, attrs, kind)
