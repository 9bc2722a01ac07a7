"""MindSpore's graph compile cache, on by default, keyed so that a stale graph is never loaded.

MindSpore (2.10) saves every graph it compiles as ``<MS_COMPILER_CACHE_PATH>/rank_<id>/
graph_cache/compile_cache_<N>.mindir`` when ``MS_COMPILER_CACHE_ENABLE=1``, and on the next run
loads graph N from file N: it checks neither the graph's input shapes nor the library's code
(only the entry script and its top-level imports outside ``sys.path``), so a cache folder must
only ever be shared by runs that compile the very same graphs in the same order. Hence one
folder per key (:func:`key_parts`): MindSpore and Python version, device, mode, precision, rank,
a hash of the library's source files and the entry script, and what the script says decides
its graphs (the config and the input shapes; by default its whole command line and the
content of the files it names).

A folder is only ever read once complete: a run without a folder for its key compiles into a
private ``.tmp/<key>-<pid>-<random>`` folder and, when the job succeeded
(:func:`finish`, called by ``cli.run_cli``), renames it to ``<key>`` in one atomic step; when
two processes race, the first rename wins and the other's copy is deleted. A run that fails or
is interrupted leaves nothing behind.

Where: ``--compile_cache_dir``, else ``$MIND_DIFFUSION_COMPILE_CACHE``, else
``$XDG_CACHE_HOME/mind_diffusion/compile`` (``~/.cache/mind_diffusion/compile``). Off:
``--no_compile_cache`` or ``MIND_DIFFUSION_COMPILE_CACHE=off``. Key folders unused for
:data:`MAX_AGE_DAYS` days are removed when a new one is published.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

ENV = "MIND_DIFFUSION_COMPILE_CACHE"
OFF_VALUES = ("0", "off", "false", "no", "none")
MAX_AGE_DAYS = 30
STAMP = "last_used"
PACKAGE_DIR = Path(__file__).resolve().parent

_active: "CompileCache | None" = None
_setups = 0


def default_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "mind_diffusion" / "compile"


def resolve_root(setting=None) -> Path | None:
    """``setting``: False = off, a path = that folder, None = ``$MIND_DIFFUSION_COMPILE_CACHE``
    (a folder, or off / 0 / false), else the per-user default."""
    if setting is False:
        return None
    if setting in (None, True, ""):
        setting = os.environ.get(ENV, "")
    if str(setting).strip().lower() in OFF_VALUES:
        return None
    return Path(setting).expanduser() if str(setting).strip() else default_root()


def _hash_files(paths, base: Path | None = None) -> str:
    """sha256 over (name, content) of each file; names relative to ``base`` when given."""
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        h.update(str(p.relative_to(base) if base else p).encode() + b"\0")
        h.update(p.read_bytes() if p.is_file() else b"<missing>")
    return h.hexdigest()[:16]


_CODE_VERSION = None


def code_version() -> str:
    """A hash over every source file of the library (any code change gives new keys)."""
    global _CODE_VERSION
    if _CODE_VERSION is None:
        sources = list(PACKAGE_DIR.rglob("*.py")) + list(PACKAGE_DIR.rglob("*.cc"))
        _CODE_VERSION = _hash_files(sorted(sources), PACKAGE_DIR)
    return _CODE_VERSION


def _entry_script() -> str | None:
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    return str(Path(path).resolve()) if path else None


def default_script_key(argv=None) -> dict:
    """The command line and the content of every existing file it names (config files)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    files = []
    for a in argv:
        for part in {str(a), str(a).split("=", 1)[-1]}:
            p = Path(part).expanduser()
            try:
                if p.is_file() and p.stat().st_size < 4 * 2**20:
                    files.append(str(p.resolve()))
            except OSError:
                continue
    return {"argv": argv, "files": _hash_files(sorted(set(files)))}


def _plain(obj):
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(obj):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def key_parts(*, device_target: str, mode: str, precision: str, rank: int = 0,
              script_key: dict | None = None) -> dict:
    import platform

    import mindspore as ms

    entry = _entry_script()
    parts = {
        "mindspore": ms.__version__,
        "python": platform.python_version(),
        "device_target": device_target,
        "mode": mode,
        "precision": precision,
        "rank": rank,
        "code": code_version(),
        "entry": Path(entry).name if entry else None,
        "entry_hash": _hash_files([entry], Path(entry).parent) if entry else None,
        "script": _plain(script_key if script_key is not None else default_script_key()),
    }
    if device_target == "CPU":
        # graphs built with the fused CPU attention kernel differ from the composed ones, and so do
        # those whose convolutions and dense layers run through OpenBLAS
        from . import cpu_attention, cpu_gemm

        parts["attention"] = cpu_attention.key_part()
        parts["gemm"] = cpu_gemm.key_part()
    return parts


def key_hash(parts: dict) -> str:
    text = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def graph_files(folder: Path) -> list:
    return sorted(Path(folder).glob("rank_*/graph_cache/*.mindir"))


@dataclass
class CompileCache:
    root: Path
    key: str
    parts: dict
    path: Path      # the folder MindSpore reads / writes (MS_COMPILER_CACHE_PATH)
    hit: bool
    published: bool = False

    @property
    def final(self) -> Path:
        return self.root / self.key

    def describe(self) -> str:
        return f"compile cache {'hit' if self.hit else 'new'} {self.final}"

    def publish(self):
        """Rename the private folder to its key folder (atomic; the first process wins)."""
        if self.hit or self.published:
            return
        self.published = True
        if not graph_files(self.path):
            shutil.rmtree(self.path, ignore_errors=True)
            return
        (self.path / "key.json").write_text(json.dumps(self.parts, indent=1, sort_keys=True,
                                                       ensure_ascii=False, default=str))
        (self.path / STAMP).touch()
        try:
            os.rename(self.path, self.final)
        except OSError:  # another process published this key first: keep theirs
            shutil.rmtree(self.path, ignore_errors=True)
        prune(self.root)

    def discard(self):
        if not self.hit and not self.published:
            self.published = True
            shutil.rmtree(self.path, ignore_errors=True)


def prune(root: Path, max_age_days: float = MAX_AGE_DAYS):
    """Remove key folders unused for ``max_age_days`` and private folders of dead runs."""
    now = time.time()
    try:
        entries = list(Path(root).iterdir())
        tmp = list((Path(root) / ".tmp").iterdir()) if (Path(root) / ".tmp").is_dir() else []
    except OSError:
        return
    for d in entries:
        if d.name.startswith(".") or not d.is_dir():
            continue
        stamp = d / STAMP
        try:
            age = now - (stamp.stat().st_mtime if stamp.exists() else d.stat().st_mtime)
        except OSError:
            continue
        if age > max_age_days * 86400:
            shutil.rmtree(d, ignore_errors=True)
    for d in tmp:
        try:
            pid = int(d.name.rsplit("-", 2)[-2])
            os.kill(pid, 0)
            alive = True
        except (ValueError, IndexError, ProcessLookupError):
            alive = False
        except PermissionError:
            alive = True
        if not alive:
            shutil.rmtree(d, ignore_errors=True)


def _set_env(path: Path | None):
    if path is None:
        os.environ["MS_COMPILER_CACHE_ENABLE"] = "0"
        os.environ.pop("MS_COMPILER_CACHE_PATH", None)
    else:
        os.environ["MS_COMPILER_CACHE_ENABLE"] = "1"
        os.environ["MS_COMPILER_CACHE_PATH"] = str(path)


def setup(setting=None, *, device_target: str, mode: str, precision: str, rank: int = 0,
          script_key: dict | None = None) -> CompileCache | None:
    """Point MindSpore at the folder of this run's key (must run before the first compile).
    Returns the cache, or None when it is off. A second call in one process turns it off: the
    graph numbering would no longer match a fresh run's."""
    global _active, _setups
    _setups += 1
    if _active is not None:
        _active.discard()
        _active = None
    root = resolve_root(setting)
    if root is None or _setups > 1:
        _set_env(None)
        return None
    parts = key_parts(device_target=device_target, mode=mode, precision=precision, rank=rank,
                      script_key=script_key)
    key = key_hash(parts)
    final = root / key
    try:
        if graph_files(final):
            try:
                (final / STAMP).touch()
            except OSError:
                pass
            cache = CompileCache(root, key, parts, final, hit=True)
        else:
            private = root / ".tmp" / f"{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            private.mkdir(parents=True)
            cache = CompileCache(root, key, parts, private, hit=False)
    except OSError as exc:
        print(f"note: compile cache off ({root} is not writable: {exc.strerror}); "
              f"pass --compile_cache_dir DIR or --no_compile_cache", file=sys.stderr)
        _set_env(None)
        return None
    _set_env(cache.path)
    _active = cache
    return cache


def active() -> CompileCache | None:
    return _active


def finish(success: bool = True):
    """End of the job: publish this run's graphs when it succeeded, else delete them."""
    global _active
    if _active is None:
        return
    if success:
        _active.publish()
    else:
        _active.discard()
    _active = None


atexit.register(finish, False)
