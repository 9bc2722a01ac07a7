"""Checkpoint files: atomic writes, readable reads, strict loading with a report.

- ``save_atomic``: write to a temp file in the target folder, fsync, then ``os.replace``; an
  interrupted save never leaves a truncated checkpoint under the final name.
- ``read_checkpoint``: MindSpore ``.ckpt`` -> {name: numpy array}, with a clear error when the
  file is missing, truncated or not a checkpoint.
- ``load_strict``: every checkpoint tensor maps to exactly one parameter of the cell (through an
  optional declared name map) and back; anything missing, unexpected or misshapen raises a
  ``CheckpointMismatchError`` that lists them. Declared exceptions (``allow_missing``,
  ``allow_unexpected``, ``allow_dtypes``) cover known quirks of official files.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np

import mindspore as ms
from mindspore import Tensor


META_PREFIX = "meta."  # small scalars saved beside the tensors (step, seed, ...)


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be used; the message names the file and what to do."""


class CheckpointMismatchError(CheckpointError):
    def __init__(self, report: "LoadReport", path: str = ""):
        self.report = report
        super().__init__(report.format(path))


def _writable_dir(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(path.parent, os.W_OK):
        raise CheckpointError(f"cannot write checkpoint: folder {path.parent} is not writable "
                              f"(choose another output folder)")


def save_atomic(params: Mapping[str, np.ndarray] | list, path: str | Path,
                extra: Mapping[str, object] | None = None) -> Path:
    """Save {name: array} (or a list of Parameters) to ``path`` atomically; ``extra`` holds
    small scalars / strings stored alongside (MindSpore ``append_dict``)."""
    path = Path(path)
    _writable_dir(path)
    if isinstance(params, Mapping):
        plist = [{"name": k, "data": v if isinstance(v, Tensor) else Tensor(np.asarray(v))}
                 for k, v in params.items()]
    else:
        plist = list(params)
    # MindSpore appends ".ckpt" to names without it, so the temp name must end in ".ckpt"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp.ckpt", dir=path.parent)
    os.close(fd)
    try:
        ms.save_checkpoint(plist, tmp, append_dict=dict(extra) if extra else None)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # MindSpore writes checkpoints read-only (0400)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_checkpoint(path: str | Path, what: str = "checkpoint") -> dict[str, np.ndarray]:
    """{name: numpy array} from a MindSpore .ckpt; scalars from append_dict included."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"{what} not found: {p}")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{what} {p} is empty (an interrupted download or copy?)")
    try:
        raw = ms.load_checkpoint(str(p))
    except Exception as exc:
        raise CheckpointError(f"{what} {p} cannot be read as a MindSpore checkpoint "
                              f"(truncated or another format?): {str(exc).splitlines()[0][:200]}") from None
    out = {}
    for name in list(raw):  # pop as we go: peak memory ~ one copy of the file, not two
        value = raw.pop(name)
        out[name] = value.asnumpy() if hasattr(value, "asnumpy") else np.asarray(value)
        del value
    return out


def file_sha256(path: str | Path, length: int = 10) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


@dataclass
class LoadReport:
    missing: list = field(default_factory=list)      # our params with no checkpoint tensor
    unexpected: list = field(default_factory=list)   # checkpoint tensors with no param
    mismatched: list = field(default_factory=list)   # (name, ckpt shape, param shape)
    loaded: int = 0
    cast: list = field(default_factory=list)         # (name, from dtype, to dtype)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def format(self, path: str = "") -> str:
        def block(title, items, limit=20):
            if not items:
                return []
            lines = [f"  {title} ({len(items)}):"]
            lines += [f"    {it}" for it in items[:limit]]
            if len(items) > limit:
                lines.append(f"    ... and {len(items) - limit} more")
            return lines
        where = f" {path}" if path else ""
        lines = [f"checkpoint{where} does not match the model "
                 f"({self.loaded} tensors matched):"]
        lines += block("missing from the checkpoint", self.missing)
        lines += block("unexpected in the checkpoint", self.unexpected)
        lines += block("shape mismatch (checkpoint vs model)",
                       [f"{n}: {a} vs {b}" for n, a, b in self.mismatched])
        lines.append("  -> is this checkpoint for this model and config? "
                     "(check --config / model size options)")
        return "\n".join(lines)


def load_strict(net, state: Mapping[str, np.ndarray], *, name_map: Callable[[str], str | None] | None = None,
                allow_missing: Iterable[str] = (), allow_unexpected: Iterable[str] = (),
                path: str = "", dry_run: bool = False) -> LoadReport:
    """Copy checkpoint tensors into ``net``'s parameters (a Cell, or an iterable of
    Parameters such as a trainer's full state), strictly.

    ``name_map(ckpt_name) -> our_name`` (None = drop the tensor, i.e. declared unused).
    Tensors are cast to the parameter's dtype (recorded in ``report.cast``).
    """
    params = {p.name: p for p in (net.get_parameters() if hasattr(net, "get_parameters") else net)}
    allow_missing, allow_unexpected = set(allow_missing), set(allow_unexpected)
    report = LoadReport()
    mapped: dict[str, tuple[str, np.ndarray]] = {}
    for ck_name, value in state.items():
        ours = name_map(ck_name) if name_map else ck_name
        if ours is None:
            continue
        if ours not in params:
            if ck_name not in allow_unexpected:
                report.unexpected.append(ck_name)
            continue
        if ours in mapped:
            report.unexpected.append(f"{ck_name} (duplicates {mapped[ours][0]})")
            continue
        mapped[ours] = (ck_name, np.asarray(value))
    for name, p in params.items():
        if name not in mapped:
            if name not in allow_missing:
                report.missing.append(name)
            continue
        ck_name, arr = mapped[name]
        if tuple(arr.shape) != tuple(p.shape):
            report.mismatched.append((name, tuple(arr.shape), tuple(p.shape)))
    if not report.ok:
        raise CheckpointMismatchError(report, path)
    for name, (ck_name, arr) in mapped.items():
        p = params[name]
        target = ms.dtype_to_nptype(p.dtype)
        if arr.dtype != target:
            report.cast.append((name, str(arr.dtype), str(np.dtype(target))))
        if not dry_run:
            p.set_data(Tensor(arr.astype(target, copy=False)))
        report.loaded += 1
    return report


def load_into(net, path: str | Path, *, prefix: str = "", what: str = "checkpoint", **kw) -> LoadReport:
    """Read ``path`` and strictly load the tensors under ``prefix`` (prefix stripped) into net."""
    state = read_checkpoint(path, what)
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise CheckpointError(f"{what} {path} holds no tensors under '{prefix}' "
                                  f"(is it a checkpoint of this kind of model?)")
    else:
        state = {k: v for k, v in state.items() if not k.startswith(META_PREFIX)}
    return load_strict(net, state, path=str(path), **kw)
