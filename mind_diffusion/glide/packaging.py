"""Packaging a built-in GLIDE (the shapes world's, ``models/glide_shapes``): the three stages'
trained weights with their matrices and kernels stored as fp16 (half the bytes; cast back to the
network's fp32 on load, ``checkpoint.io.load_strict``) and the small vectors (biases, norm scales
and shifts, PReLU slopes) kept fp32, where fp16's 6e-5 smallest normal number would round them,
in the released files' names and layout, with the tokenizer model and the inference config
beside them.

    files = package_stage(run_dir / "glide_gen_ema.ckpt", out / "glide_gen.ckpt", "base")
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..checkpoint.io import CheckpointError, read_checkpoint, save_atomic
from .checkpoint import detect_kind

__all__ = ["EXPERT_FILE", "fp16_state", "package_expert", "package_stage", "max_fp16_error"]

#: the base's low-noise expert in a model folder (config: checkpoint.gen_expert_ckpt)
EXPERT_FILE = "glide_gen_expert.ckpt"


def fp16_state(state: dict) -> dict:
    """Every floating tensor of ``state`` with two or more dimensions as fp16; vectors and integer
    tensors kept as they are. Values beyond fp16's range raise: they would become inf."""
    out = {}
    for name, value in state.items():
        arr = np.asarray(value)
        if arr.dtype.kind == "f" and arr.ndim >= 2:
            big = float(np.abs(arr).max()) if arr.size else 0.0
            if big > 65504.0:
                raise CheckpointError(f"{name} holds {big:g}, beyond fp16's range: store this checkpoint as fp32")
            arr = arr.astype(np.float16)
        out[name] = arr
    return out


def max_fp16_error(state: dict) -> float:
    """Largest relative error fp16 storage makes on any tensor of ``state``:
    ``||x - fp16(x)|| / ||x||`` (L2, per tensor; all-zero tensors skipped). About 2e-4 for weights
    in fp16's normal range; 1.0 flags a tensor that underflows to zero."""
    worst = 0.0
    for value in state.values():
        arr = np.asarray(value)
        if arr.dtype.kind != "f" or arr.ndim < 2 or not np.any(arr):
            continue  # kept as they are
        x = arr.astype(np.float64)
        worst = max(worst, float(np.linalg.norm(x - arr.astype(np.float16)) / np.linalg.norm(x)))
    return worst


def package_stage(src: str | Path, dst: str | Path, kind: str) -> dict:
    """Write ``src`` (a trained stage's export: glide_gen*.ckpt / glide_super_res*.ckpt / srgan.ckpt)
    to ``dst`` as fp16, checking it is a ``kind`` ('base', 'sr', 'srgan') checkpoint. Returns
    {'path', 'bytes', 'sha256', 'fp16_rel_error'}."""
    state = _stage_state(src, kind)
    path = save_atomic(fp16_state(state), dst)
    return {**_file_record(path), "fp16_rel_error": max_fp16_error(state)}


def _stage_state(src: str | Path, kind: str) -> dict:
    """The model tensors of a trained stage's export ``src`` (its ``meta.*`` entries dropped), which
    must be a ``kind`` checkpoint."""
    state = read_checkpoint(src, f"{kind} checkpoint")
    state = {k: v for k, v in state.items() if not k.startswith("meta.")}
    found = detect_kind(state)
    if found != kind:
        raise CheckpointError(f"{src} holds a {found or 'non-GLIDE'} checkpoint, not the {kind} stage's")
    return state


def _file_record(path: Path) -> dict:
    return {"path": str(path), "bytes": path.stat().st_size,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16]}


def package_expert(src: str | Path, base: str | Path, dst: str | Path) -> dict:
    """Write the base's low-noise expert: the tensors of ``src`` (a base-stage export trained from the
    packaged base ``base``) that differ from ``base`` once stored as fp16 like it (``expert_state``), to
    ``dst``. Returns {'path', 'bytes', 'sha256', 'fp16_rel_error', 'tensors', 'parameters'}."""
    from .checkpoint import expert_state

    state = _stage_state(src, "base")
    if not Path(base).is_file():
        raise CheckpointError(f"{base} not found: the expert is stored against the packaged base (--base first)")
    changed = expert_state(fp16_state(state), read_checkpoint(base, "base checkpoint"))
    if not changed:
        raise CheckpointError(f"{src} equals the base {base}: no expert to store (did its training run?)")
    path = save_atomic(changed, dst)
    return {**_file_record(path), "fp16_rel_error": max_fp16_error({k: state[k] for k in changed}),
            "tensors": len(changed), "parameters": int(sum(np.size(v) for v in changed.values()))}
