"""LoRA files for the latent-diffusion model: save (small, self-describing), read (ours, the
original's MindPet checkpoints, kohya / A1111 and diffusers safetensors), apply merged into the
base weights or kept as separate LoRA layers.

Our LoRA file is a MindSpore ``.ckpt`` (the format the original's LoRA training writes) holding
only the LoRA tensors under the model's full names (``model.diffusion_model.….to_q.
tk_delta_lora_a`` [rank, in], ``….tk_delta_lora_b`` [out, rank], fp32) plus one string entry
``meta.lora``: JSON with ``format`` ("mind_diffusion-lora"), ``version``, ``rank``, ``alpha``
(``layer_alpha`` per layer when they differ), ``targets`` (layer-name suffixes), ``layers``,
``base_checkpoint`` (file name) and ``base_sha256`` (the full hex digest of the base
checkpoint). Loaders that skip ``meta.*`` entries (ours, ``mindspore.load_param_into_net``
after filtering) see exactly the original's layout. A DreamBooth run that also trained the
identifier's embedding rows (``dreambooth.train_token_rows``, textual inversion) adds
``cond_stage_model.transformer.token_rows`` [k, width] with ``token_rows: {ids, token}`` in the
JSON; loading adds them to those rows of the embedding table (exact, in either mode).
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mindspore import Tensor

from ..checkpoint.convert_lora import LoRAFileError, ParsedLoRA, lora_name_table, parse_lora, split_lora_keys
from ..checkpoint.io import CheckpointError, file_sha256, read_checkpoint, save_atomic
from ..config import to_plain
from ..nn.lora import (LORA_A, LORA_B, TEXT_ATTN_TARGETS, TEXT_MLP_TARGETS, UNET_ATTN_TARGETS,
                       UNET_CONV_TARGETS, UNET_FF_TARGETS, UNET_PROJ_TARGETS, inject_lora, lora_layers,
                       lora_state_dict, remove_lora)
from .checkpoint import PREFIX_TEXT, PREFIX_UNET, split_checkpoint_state

LORA_META_KEY = "meta.lora"
LORA_FORMAT = "mind_diffusion-lora"
LORA_SUFFIXES = (".ckpt", ".safetensors", ".bin", ".pt", ".pth")
TOKEN_ROWS = "token_rows"   # ….transformer.token_rows [k, width]: trained embedding rows of the identifier
EMBEDDING_TABLE = PREFIX_TEXT + "embedding_table"   # where token rows are added


_KNOWN_TARGETS = sorted(UNET_ATTN_TARGETS + UNET_FF_TARGETS + UNET_PROJ_TARGETS + UNET_CONV_TARGETS
                        + TEXT_ATTN_TARGETS + TEXT_MLP_TARGETS, key=len, reverse=True)


def _target_suffix(path: str) -> str:
    """The target name a layer path ends with (``….attn1.to_out.0`` -> ``to_out.0``)."""
    for t in _KNOWN_TARGETS:
        if path == t or path.endswith("." + t):
            return t
    parts = path.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() else parts[-1]


def save_lora(network, path, *, base_checkpoint=None, base_sha256: str | None = None,
              prefix: str = "") -> Path:
    """Write the LoRA tensors of ``network`` (a ``LatentDiffusion``, or a part with ``prefix``
    naming where its names start in the full model, e.g. ``model.diffusion_model.`` for the
    UNet alone) atomically to ``path`` with the ``meta.lora`` description. ``base_checkpoint``:
    the base model file (its sha256 is recorded; ``base_sha256`` skips hashing it again)."""
    layers = lora_layers(network)
    if not layers:
        raise ValueError("the network has no LoRA layers to save (inject_lora / model.unet.enable_lora)")
    state = {prefix + k: v for k, v in lora_state_dict(network).items()}
    ranks = {p: int(layer.lora_rank) for p, layer in layers.items()}
    alphas = {prefix + p: float(layer.lora_alpha) for p, layer in layers.items()}
    if base_sha256 is None and base_checkpoint is not None:
        base_sha256 = file_sha256(base_checkpoint, 64)
    tails = sorted({_target_suffix(p) for p in layers})
    meta = {"format": LORA_FORMAT, "version": 1, "rank": max(ranks.values()),
            "alpha": next(iter(alphas.values())), "targets": tails, "layers": len(layers),
            "base_checkpoint": Path(base_checkpoint).name if base_checkpoint else None,
            "base_sha256": base_sha256}
    if len(set(alphas.values())) > 1 or len(set(ranks.values())) > 1:
        meta["layer_alpha"] = alphas
    for cell in _token_row_cells(network):   # trained identifier rows (textual inversion)
        state[prefix + cell.token_rows.name] = cell.token_rows.asnumpy().astype(np.float32)
        meta["token_rows"] = {"name": prefix + cell.token_rows.name, "ids": list(cell.token_row_ids),
                              "token": cell.token_row_text}
    return save_atomic(state, path, extra={LORA_META_KEY: json.dumps(meta, ensure_ascii=False)})


def _token_row_cells(network) -> list:
    return [c for _, c in network.cells_and_names() if getattr(c, "has_token_rows", False)]


# ------------------------------------------------------------------------------ reading

def _read_tensors(path: Path) -> tuple[dict, dict]:
    """({name: array}, metadata) from a .ckpt / .safetensors / torch file."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = dict(f.metadata() or {})
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises its own error types
            raise LoRAFileError(f"LoRA {path} cannot be read as safetensors (truncated or another "
                                f"format?): {str(exc).splitlines()[0][:160]}") from None
        return state, meta
    if path.suffix in (".bin", ".pt", ".pth"):
        from ..checkpoint.convert_sd import read_weights

        return read_weights(path), {}
    try:
        state = read_checkpoint(path, "LoRA file")
    except CheckpointError as exc:
        raise LoRAFileError(str(exc)) from None
    meta = {}
    raw = state.pop(LORA_META_KEY, None)
    if raw is not None:
        try:
            meta["lora"] = json.loads(str(np.asarray(raw).reshape(-1)[0] if np.asarray(raw).ndim else raw))
        except ValueError:
            raise LoRAFileError(f"LoRA {path}: its {LORA_META_KEY} entry is not valid JSON") from None
    state = {k: v for k, v in state.items() if not k.startswith("meta.")}
    model, _ignored = split_checkpoint_state(state)   # optimizer moments of a training checkpoint
    rows = [k for k in model if k.endswith("." + TOKEN_ROWS)]
    if rows:   # our identifier embedding rows: not a LoRA layer, applied to the embedding table
        meta[TOKEN_ROWS] = {k: np.asarray(model.pop(k), np.float32) for k in rows}
    return model, meta


def check_lora_path(path) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise LoRAFileError(f"LoRA file not found: {p} (pass an existing .ckpt or .safetensors file)")
    if p.suffix.lower() not in LORA_SUFFIXES:
        raise LoRAFileError(f"LoRA file {p}: unknown extension {p.suffix!r} (expected "
                            f"{', '.join(LORA_SUFFIXES)})")
    if p.stat().st_size == 0:
        raise LoRAFileError(f"LoRA file {p} is empty (an interrupted download or copy?)")
    return p


def model_lora_table(model, model_cfg) -> dict:
    """The name table of :func:`mind_diffusion.checkpoint.convert_lora.lora_name_table` for a
    ``LatentDiffusion`` built from ``model_cfg`` (its ``model`` config section)."""
    weights = {p.name: tuple(p.shape) for p in model.get_parameters()
               if not p.name.endswith(("." + LORA_A, "." + LORA_B))}
    unet_cfg = to_plain(model_cfg)["unet"]
    return lora_name_table(weights, PREFIX_UNET, unet_cfg, PREFIX_TEXT)


def read_lora(path, model, model_cfg) -> ParsedLoRA:
    """Read a LoRA file of any supported format as adapters on ``model``'s layers (and our files'
    identifier embedding rows as ``token_rows``); one-line ``LoRAFileError`` for a missing,
    unreadable or foreign file."""
    p = check_lora_path(path)
    state, meta = _read_tensors(p)
    rows = meta.pop(TOKEN_ROWS, None)
    unet_cfg = to_plain(model_cfg)["unet"]
    parsed = parse_lora(state, model_lora_table(model, model_cfg), str(p), meta=meta,
                        default_alpha=float(unet_cfg.get("lora_alpha", 4.0)))
    if rows:
        parsed.token_rows = _check_token_rows(rows, meta, model, p)
    return parsed


def _check_token_rows(rows: dict, meta: dict, model, path: Path) -> tuple:
    """(ids, rows, token) of a file's ``….token_rows``, checked against the model's embedding table."""
    info = (meta.get("lora") or {}).get("token_rows") if isinstance(meta.get("lora"), dict) else None
    if len(rows) != 1 or not isinstance(info, dict) or not isinstance(info.get("ids"), list):
        raise LoRAFileError(f"LoRA {path}: its token rows ({', '.join(rows)}) have no ids in {LORA_META_KEY}; "
                            f"the file is damaged or not one this suite wrote")
    name, arr = next(iter(rows.items()))
    table = _params(model).get(EMBEDDING_TABLE)
    ids = [int(i) for i in info["ids"]]
    if name != PREFIX_TEXT + TOKEN_ROWS or table is None:
        raise LoRAFileError(f"LoRA {path} was made for another model: it trains embedding rows ({name}) of a "
                            f"text encoder this one does not have ({EMBEDDING_TABLE})")
    vocab, width = table.shape
    if arr.ndim != 2 or arr.shape != (len(ids), width) or not ids or min(ids) < 0 or max(ids) >= vocab:
        raise LoRAFileError(f"LoRA {path} was made for another base model: its token rows are {list(arr.shape)} "
                            f"for ids {ids}, this text encoder's embedding table is {[vocab, width]}")
    return ids, arr.astype(np.float32), str(info.get("token", ""))


def add_token_rows(model, parsed: ParsedLoRA, weight: float) -> None:
    """``embedding_table[ids] += weight * rows`` for a LoRA file's identifier rows (float64, rounded
    once; ``-weight`` undoes it). Exact in either LoRA mode: the table is looked up, not multiplied."""
    if parsed.token_rows is None:
        return
    ids, rows, _ = parsed.token_rows
    table = _params(model)[EMBEDDING_TABLE]
    w = table.asnumpy()
    t = w.astype(np.float64)
    t[ids] += float(weight) * rows
    table.set_data(Tensor(t.astype(w.dtype)))


# ------------------------------------------------------------------------------ applying

def _params(model) -> dict:
    return {p.name: p for p in model.get_parameters()}


def add_to_weights(model, adapters, weight: float) -> None:
    """``W[rows] += weight * scale * up @ down`` for every adapter (float64, rounded once);
    ``weight=-w`` undoes ``weight=w`` to within one float32 rounding."""
    params = _params(model)
    for ad in adapters:
        p = params[ad.target + ".weight"]
        w = p.asnumpy()
        flat = w.reshape(w.shape[0], -1).astype(np.float64)
        lo, hi = ad.rows or (0, w.shape[0])
        flat[lo:hi] += weight * ad.delta()
        p.set_data(Tensor(flat.reshape(w.shape).astype(w.dtype)))


def attach_separate(model, entries) -> int:
    """Replace every LoRA layer of ``model`` by layers carrying ``entries`` ([(adapters, weight)])
    unmerged: per layer, the adapters are stacked into one LoRA of the summed rank
    (``A = [A_1; A_2; ...]``, ``B = [w_1 s_1 B_1, w_2 s_2 B_2, ...]``, scaling 1), which computes
    ``sum_i w_i s_i B_i A_i x`` exactly. Returns the number of layers."""
    remove_lora(model)
    by_target = defaultdict(list)
    for adapters, weight in entries:
        for ad in adapters:
            by_target[ad.target].append((ad, weight))
    if not by_target:
        return 0
    params = _params(model)
    stacked = {}
    for target, items in by_target.items():
        shape = params[target + ".weight"].shape
        a = np.concatenate([ad.down for ad, _ in items]).astype(np.float32)
        b = np.zeros((shape[0], a.shape[0]), np.float64)
        col = 0
        for ad, weight in items:
            lo, hi = ad.rows or (0, shape[0])
            b[lo:hi, col:col + ad.rank] = weight * ad.scale * ad.up
            col += ad.rank
        stacked[target] = (a, b.astype(np.float32))
    by_rank = defaultdict(list)
    for target, (a, _) in stacked.items():
        by_rank[a.shape[0]].append(target)
    for rank, targets in by_rank.items():
        inject_lora(model, rank, rank, paths=targets)
    params = _params(model)
    for target, (a, b) in stacked.items():
        params[f"{target}.{LORA_A}"].set_data(Tensor(a))
        params[f"{target}.{LORA_B}"].set_data(Tensor(b))
    return len(stacked)


@dataclass
class LoadedLoRA:
    """A LoRA file loaded into a pipeline."""

    path: str
    weight: float
    merged: bool
    parsed: ParsedLoRA
    base_sha256: str | None = None
    notes: list = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{Path(self.path).name}:{self.weight:g}"


def check_lora_weight(weight) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float, np.integer, np.floating)) \
            or not np.isfinite(weight):
        raise ValueError(f"LoRA weight must be a finite number (1.0 = as trained, 0.5 = half), got {weight!r}")
    return float(weight)


def parse_lora_arg(text: str) -> tuple[str, float]:
    """``PATH[:WEIGHT]`` (the command line's ``--lora``) -> (path, weight); a suffix that is not
    a number belongs to the path."""
    path, sep, tail = str(text).rpartition(":")
    if sep and path:
        try:
            return path, check_lora_weight(float(tail))
        except ValueError:
            raise ValueError(f"--lora {text}: the weight after ':' must be a finite number, "
                             f"e.g. --lora my_lora.ckpt:0.8") from None
    return str(text), 1.0


def base_mismatch_note(parsed: ParsedLoRA, path, ckpt_sha256: str | None) -> str | None:
    """A note when the file records a base checkpoint hash other than the loaded model's."""
    recorded = (parsed.meta.get("lora") or {}).get("base_sha256") if isinstance(parsed.meta.get("lora"), dict) else None
    if not recorded or not ckpt_sha256:
        return None
    n = min(len(recorded), len(ckpt_sha256))
    if recorded[:n] == ckpt_sha256[:n]:
        return None
    base = (parsed.meta.get("lora") or {}).get("base_checkpoint") or "another checkpoint"
    return (f"note: LoRA {Path(path).name} was trained on {base} (sha256 {recorded[:10]}), this model is "
            f"{ckpt_sha256[:10]}; the shapes fit, so it is applied anyway")




# ------------------------------------------------------------------------------ command line

def _str2bool(v) -> bool:
    s = str(v).strip().lower()
    if s in ("true", "1", "yes", "y", "on"):
        return True
    if s in ("false", "0", "no", "n", "off"):
        return False
    raise ValueError(f"expected True or False, got {v!r}")


def add_lora_args(parser) -> None:
    """``--lora PATH[:WEIGHT]`` (repeatable), ``--lora_mode`` and the original's
    ``--enable_lora True --lora_ckpt_filepath FILE``."""
    g = parser.add_argument_group("LoRA")
    g.add_argument("--lora", action="append", default=[], metavar="PATH[:WEIGHT]",
                   help="apply a LoRA file (ours / the original's MindPet .ckpt, kohya or diffusers "
                        ".safetensors) with a weight (default 1); repeat for several")
    g.add_argument("--lora_mode", choices=("merge", "separate"), default="merge",
                   help="merge: add the LoRA into the base weights (as fast as the base model); "
                        "separate: keep LoRA layers beside them")
    g.add_argument("--enable_lora", type=str, default="False",
                   help="the original's switch: True applies --lora_ckpt_filepath")
    g.add_argument("--lora_ckpt_filepath", default=None, help="the original's LoRA checkpoint flag")


def lora_specs_from_args(args) -> list:
    """[(Path, weight)] from the parsed flags, every file checked to exist and to hold LoRA
    tensors of a known format (before the base checkpoint is read; whether it fits the model is
    known once the model is built)."""
    try:
        enable = _str2bool(args.enable_lora)
    except ValueError as exc:
        raise ValueError(f"--enable_lora: {exc}") from None
    items = [parse_lora_arg(a) for a in args.lora]
    if enable:
        if not args.lora_ckpt_filepath:
            raise ValueError("--enable_lora True needs the LoRA file: --lora_ckpt_filepath FILE "
                             "(or use --lora FILE[:WEIGHT])")
        items.append((args.lora_ckpt_filepath, 1.0))
    specs = [(check_lora_path(p), w) for p, w in items]
    for path, _ in specs:
        split_lora_keys(_read_tensors(path)[0], str(path))
    return specs


def apply_lora_specs(pipe, specs, mode: str = "merge") -> None:
    for path, weight in specs:
        entry = pipe.load_lora(path, weight, merge=mode == "merge")
        p = entry.parsed
        print(f"LoRA {path.name} ({p.format}, {len(p.adapters)} layers, weight {weight:g}, "
              f"{'merged' if entry.merged else 'separate'}"
              + (f"; embedding rows of the token {p.token_rows[2]!r}" if p.token_rows else "") + ")")
