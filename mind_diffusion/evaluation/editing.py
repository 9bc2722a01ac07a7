"""Image editing on a shapes-world model, measured: img2img recolouring at several strengths and
inpainting a second shape into the empty half of a scene (cases and readings:
``mind_diffusion.shapes.editing``). ``scripts/eval_editing.py`` is the command.

Every row records the seed of its image: any one can be regenerated alone with
scripts/img2img.py / inpaint.py, the case's init image (and mask), prompt and that seed.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from ..shapes.editing import img2img_cases, inpaint_cases, read_img2img, read_inpaint

I2I_KEYS = ("colour", "shape", "place", "shape_place", "all")
INP_KEYS = ("colour", "shape", "place", "colour_place", "all", "kept", "outside_equal")


def _chunks(items, size):
    return [items[i:i + size] for i in range(0, len(items), size)]


def run_img2img(pipe, cases, strengths, per_case: int = 1, seed: int = 0, batch: int = 16,
                progress: bool = True, **kw):
    """(rows, {strength: [first image of each case]}): every case at every strength, ``batch``
    cases per pipeline call (one init image per prompt). Image ``j`` of case ``i`` has seed
    ``seed + i * per_case + j`` at every strength (the same start noise, a fair comparison)."""
    rows, images = [], {}
    for s in strengths:
        images[s] = [None] * len(cases)
        for chunk in _progress(_chunks(cases, batch), f"img2img strength {s}", progress):
            base = seed + chunk[0].index * per_case
            out = pipe.img2img([c.prompt for c in chunk], np.stack([c.image for c in chunk]), strength=s,
                               seed=base, num_images_per_prompt=per_case, progress=False, **kw)
            for k, img in enumerate(out.images):
                c = chunk[k // per_case]
                r = read_img2img(c, img)
                rows.append({"strength": s, "case": c.index, "seed": out.seeds[k], "prompt": c.prompt,
                             **{key: bool(r[key]) for key in I2I_KEYS}, "detected": _fmt(r["detected"])})
                if k % per_case == 0:
                    images[s][c.index] = img
    return rows, images


def run_inpaint(pipe, cases, per_case: int = 1, seed: int = 0, mode: str = "blend", mask_blur: int = 0,
                batch: int = 16, progress: bool = True, **kw):
    """(rows, [first image of each case]): cases with the same mask go in one call (``batch`` at
    most); the seeds count up from ``seed`` call after call (each row records its own)."""
    groups = {}
    for c in cases:
        groups.setdefault(c.mask.tobytes(), []).append(c)
    calls = [chunk for g in groups.values() for chunk in _chunks(g, batch)]
    rows, images, next_seed = [], [None] * len(cases), seed
    for chunk in _progress(calls, f"inpaint ({mode})", progress):
        out = pipe.inpaint([c.prompt for c in chunk], np.stack([c.image for c in chunk]), chunk[0].mask, mode=mode,
                           mask_blur=mask_blur, seed=next_seed, num_images_per_prompt=per_case, progress=False,
                           **kw)
        next_seed += len(out.images)
        for k, img in enumerate(out.images):
            c = chunk[k // per_case]
            r = read_inpaint(c, img)
            rows.append({"mode": out.settings.get("mode", mode), "case": c.index, "seed": out.seeds[k],
                         "prompt": c.prompt, **{key: bool(r[key]) for key in INP_KEYS},
                         "psnr_inside": round(r["psnr_inside"], 2), "psnr_outside": r["psnr_outside"],
                         "detected": _fmt(r["detected"])})
            if k % per_case == 0:
                images[c.index] = img
    rows.sort(key=lambda r: (r["case"], r["seed"]))
    return rows, images


def run_txt2img_reference(pipe, cases, seed: int = 0, batch: int = 16, progress: bool = True, **kw):
    """The model's own reading of the inpainting prompts without an init image: text-to-image
    from each case's prompt (image ``i`` with seed ``seed + i``), read against the two-shape
    caption as the inpainted results are. What the model draws for the asked object here bounds
    what inpainting can expect of it (the "txt2img reference" row)."""
    rows = []
    for chunk in _progress(_chunks(cases, batch), "txt2img reference", progress):
        out = pipe([c.prompt for c in chunk], seed=seed + chunk[0].index, progress=False, **kw)
        for c, img, sd in zip(chunk, out.images, out.seeds):
            r = read_inpaint(c, img)
            rows.append({"mode": "txt2img reference", "case": c.index, "seed": sd, "prompt": c.prompt,
                         **{key: bool(r[key]) for key in INP_KEYS}, "psnr_inside": round(r["psnr_inside"], 2),
                         "psnr_outside": round(r["psnr_outside"], 2), "detected": _fmt(r["detected"])})
    return rows


def _progress(items, desc, on):
    if not on:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="call")


def _fmt(det) -> str:
    return "".join(det) if det else "-"


def _rate(rows, key) -> str:
    return f"{sum(r[key] for r in rows) / len(rows):.1%}"


def _db(values) -> str:
    vals = [v for v in values if math.isfinite(v)]
    if not vals:
        return "∞ (identical)"
    return f"{np.mean(vals):.1f} dB" + (f" ({len(values) - len(vals)} identical)" if len(vals) < len(values) else "")


def tables(i2i_rows, inp_rows, settings: dict) -> str:
    """The Markdown tables of a run."""
    lines = [f"Settings: {json.dumps(settings, ensure_ascii=False)}", ""]
    if i2i_rows:
        lines += ["img2img (recolour a rendered scene; the scorer reads the result against the new prompt):", "",
                  "| strength | images | new colour | same shape | same place | shape and place | all three |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for s in dict.fromkeys(r["strength"] for r in i2i_rows):
            rs = [r for r in i2i_rows if r["strength"] == s]
            lines.append(f"| {s} | {len(rs)} | " + " | ".join(_rate(rs, k) for k in I2I_KEYS) + " |")
        lines.append("")
    if inp_rows:
        lines += ["inpainting (a second shape into the empty half; the scorer reads the asked shape, and the kept "
                  "one, against the two-shape caption; PSNR to the init image):", "",
                  "| mode | images | asked colour | asked shape | asked place | colour and place | all three | "
                  "first shape kept | outside the mask unchanged | PSNR inside | PSNR outside |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for m in dict.fromkeys(r["mode"] for r in inp_rows):
            rs = [r for r in inp_rows if r["mode"] == m]
            lines.append(f"| {m} | {len(rs)} | " + " | ".join(_rate(rs, k) for k in INP_KEYS) + " | "
                         f"{_db([r['psnr_inside'] for r in rs])} | {_db([r['psnr_outside'] for r in rs])} |")
    return "\n".join(lines) + "\n"


def write_csv(rows, path: Path) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)
    return path


def picture(rows_of_images, zoom: int = 2) -> np.ndarray:
    """Rows of equally many (H,W,3) uint8 images (or (H,W) masks) -> one grid, scaled ``zoom`` x."""
    from ..utils.images import make_grid

    flat = []
    for row in rows_of_images:
        for im in row:
            im = np.repeat(im[..., None], 3, -1) if im.ndim == 2 else im
            flat.append(np.kron(im, np.ones((zoom, zoom, 1), np.uint8)))
    return make_grid(np.stack(flat), len(rows_of_images[0]), pad=4)
