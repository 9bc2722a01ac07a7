"""Image output shared by every family: [-1,1] float -> uint8 with a NaN/Inf guard, PNG files
that carry their prompt / settings in a ``parameters`` text chunk, never-overwriting names,
grids."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Mapping

import numpy as np


class OutputPathError(ValueError):
    """An output folder that cannot be created or written."""


class NonFiniteImageError(FloatingPointError):
    """The generated tensor holds NaN/Inf; writing it would give a black or garbage image."""


def check_finite(x: np.ndarray, what: str = "generated images") -> np.ndarray:
    """``x`` unchanged, or :class:`NonFiniteImageError` when it holds NaN / Inf."""
    bad = ~np.isfinite(x)
    if bad.any():
        raise NonFiniteImageError(
            f"{what} hold {int(bad.sum())} NaN/Inf values (of {x.size}); nothing was written. "
            f"On fp16 devices try --precision fp32")
    return x


def to_uint8(x: np.ndarray, channels_first: bool = True, quantize: str = "round") -> np.ndarray:
    """(B,C,H,W) floats in [-1,1] -> (B,H,W,C) uint8. Refuses NaN / Inf.

    ``quantize="truncate"``: ``uint8(255 * clip((x+1)/2, 0, 1))`` as the LDM originals do."""
    x = check_finite(np.asarray(x, dtype=np.float32))
    if channels_first:
        x = x.transpose(0, 2, 3, 1)
    if quantize == "truncate":
        return (np.clip((x + 1.0) / 2.0, 0.0, 1.0) * 255.0).astype(np.uint8)
    if quantize != "round":
        raise ValueError(f"quantize must be 'round' or 'truncate', got {quantize!r}")
    return np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def format_parameters(params: Mapping) -> str:
    """A1111-style infotext: first line the prompt (if any), then 'Key: value, ...'."""
    params = dict(params)
    lines = []
    if "prompt" in params:
        lines.append(str(params.pop("prompt")))
    if "negative_prompt" in params:
        neg = params.pop("negative_prompt")
        if neg:
            lines.append(f"Negative prompt: {neg}")
    lines.append(", ".join(f"{k}: {v}" for k, v in params.items()))
    return "\n".join(lines)


def save_png(path: str | Path, image: np.ndarray, params: Mapping | None = None) -> Path:
    """Write one HxWxC (or HxW) uint8 image; ``params`` go to the 'parameters' text chunk
    (human readable) and a 'mind_diffusion' chunk (JSON)."""
    from ..timings import phase

    with phase("write"):
        return _save_png(path, image, params)


def _save_png(path, image, params) -> Path:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
    info = PngInfo()
    if params:
        info.add_itxt("parameters", format_parameters(params))
        info.add_itxt("mind_diffusion", json.dumps(dict(params), ensure_ascii=False, default=str))
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        Image.fromarray(img).save(tmp, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    except BaseException:  # interrupted or failed mid-write: no half file left behind
        tmp.unlink(missing_ok=True)
        raise
    _WRITTEN[str(path.parent)] = _WRITTEN.get(str(path.parent), 0) + 1
    return path


#: folder -> PNGs this process has written there (complete files), for the line an interrupted
#: script prints (:func:`written_summary`)
_WRITTEN: dict = {}


def written_summary() -> str:
    """'wrote N images to A (n), B (m)' for what :func:`save_png` has written in this process,
    or 'no images written'."""
    total = sum(_WRITTEN.values())
    if not total:
        return "no images written"
    folders = sorted(_WRITTEN)
    if len(folders) <= 4:
        where = ", ".join(f"{f} ({_WRITTEN[f]})" for f in folders)
    else:
        where = f"{len(folders)} folders under {os.path.commonpath(folders)}"
    return f"wrote {total} image(s) to {where}"


def read_png_parameters(path: str | Path) -> dict:
    from PIL import Image

    with Image.open(path) as im:
        raw = im.info.get("mind_diffusion")
    return json.loads(raw) if raw else {}


_NUM = re.compile(r"^(\d+)(?:-.*)?\.png$")


def next_index(folder: str | Path) -> int:
    """First index not used by an existing ``NNNNN.png`` or ``NNNNN-<name>.png`` in ``folder``
    (so nothing is overwritten)."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    used = [int(m.group(1)) for f in folder.iterdir() if (m := _NUM.match(f.name))]
    return max(used) + 1 if used else 0


def free_path(folder: str | Path, index: int, tail: str = "") -> Path:
    """``<folder>/<index:05d><tail>.png``, or the next free index's name when another run wrote
    that file meanwhile (never overwrite)."""
    folder = Path(folder)
    path = folder / f"{index:05d}{tail}.png"
    while path.exists():
        path = folder / f"{next_index(folder):05d}{tail}.png"
    return path


def make_grid(images: np.ndarray, nrow: int, pad: int = 2, value: int = 255) -> np.ndarray:
    """(N,H,W,C) uint8 -> one grid image with ``nrow`` images per row."""
    n, h, w, c = images.shape
    nrow = max(1, min(nrow, n))
    rows = (n + nrow - 1) // nrow
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), value, np.uint8)
    for i, im in enumerate(images):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = im
    return grid


def check_output_dir(path: str | Path, subfolders=(), create: bool = True) -> Path:
    """Create the output folder (parents included) or say clearly why it can't be used.
    ``subfolders``: the folders inside it the run will write to (e.g. samples, grids), checked
    too, so that one of them being a file stops the run before its work, not after.
    ``create=False``: the same checks without creating anything (the nearest existing folder
    must be writable), for a run that has more to check before it writes."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise OutputPathError(f"output path {p} exists and is not a folder: choose another output folder")
    for name in subfolders:
        sub = p / name
        if sub.exists() and not sub.is_dir():
            raise OutputPathError(f"{sub} exists and is not a folder: images go there; move it away or "
                                  f"choose another output folder")
    if not create:
        base = next((q for q in (p, *p.parents) if q.exists()), None)
        if base is not None and not (base.is_dir() and os.access(base, os.W_OK)):
            raise OutputPathError(f"cannot create output folder {p}: {base} is not a writable folder; "
                                  f"choose another output folder")
        return p
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"cannot create output folder {p}: {exc.strerror}; choose another output folder") from None
    if not os.access(p, os.W_OK):
        raise OutputPathError(f"output folder {p} is not writable: choose another output folder")
    return p


def save_batch(out: str | Path, images: np.ndarray, settings: Mapping, seed: int, nrow: int, *,
               samples: bool = True, grid: bool = True, head=()) -> list:
    """The text-to-image files of one batch (``scripts/txt2img.py``, the editing scripts and the
    web page): image ``k`` to ``<out>/samples/NNNNN.png`` with its own seed (``seed + k``), and
    the batch's grid (``nrow`` images a row; with ``head`` images, e.g. an edit's init | mask,
    one row of head then results) to ``<out>/grids/NNNNN.png`` with the seed range; nothing is
    overwritten. Returns the sample paths written."""
    out = Path(out)
    written = []
    if samples:
        for k, img in enumerate(images):
            idx = next_index(out / "samples")
            written.append(save_png(out / "samples" / f"{idx:05d}.png", img, {**settings, "seed": seed + k}))
    if grid:
        g = next_index(out / "grids")
        rows = make_grid(np.stack(list(head) + list(images)), len(head) + len(images)) if len(head) \
            else make_grid(images, nrow)
        save_png(out / "grids" / f"{g:05d}.png", rows, {**settings, "seeds": f"{seed}..{seed + len(images) - 1}"})
    return written


def save_class_images(out: str | Path, start: int, images: np.ndarray, labels, settings: Mapping) -> list:
    """The class-conditional files of one batch (``scripts/sample_ddpm.py`` and the web page):
    image ``start + k`` to ``<out>/<class>/NNNNN.png`` (``<out>/samples/`` for an unconditional
    model, ``labels=None``) with its label and run index in the metadata; nothing is
    overwritten. Returns the paths written."""
    out = Path(out)
    written = []
    for k, img in enumerate(images):
        i = start + k
        label = int(labels[i]) if labels is not None else None
        folder = out / (str(label) if label is not None else "samples")
        idx = next_index(folder)
        written.append(save_png(folder / f"{idx:05d}.png", img,
                                {**settings, "class_label": label, "index_in_run": i}))
    return written
