"""Prompt adherence of a shapes-world text-to-image model: generate images for fixed prompts,
score them with the shapes scorer (foreground colour, contour shape, centroid place), tabulate,
and draw labelled grids. Family-agnostic: ``evaluate`` takes any ``run(prompts, seed, progress)
-> images`` callable (an LDM or GLIDE pipeline call)."""
from __future__ import annotations

import json
from pathlib import Path

KEYS = ("colour", "shape", "position", "all")


def evaluate(pipe, prompts, per_prompt: int, seed: int, batch: int = 16, progress: bool = True) -> tuple:
    """(rows [{prompt, seed, colour, shape, position, all, detected}], images) for ``per_prompt``
    images of every prompt (``detected``: the scorer's (colour, shape, place) reading of the
    prompt's first object);
    image j of prompt i uses seed ``seed + i * per_prompt + j`` (regenerate any one alone)."""
    from ..shapes.scorer import score

    prompts = [p for p in prompts for _ in range(per_prompt)]  # image n has seed + n
    rows, images = [], []
    for s in range(0, len(prompts), batch):
        # the pipeline gives image k of a call the seed seed + k
        imgs = pipe(prompts[s:s + batch], seed=seed + s, progress=progress)
        for k, (p, img) in enumerate(zip(prompts[s:s + batch], imgs)):
            r = score(img, p)
            rows.append({"prompt": p, "seed": seed + s + k, **{key: bool(r[key]) for key in KEYS},
                         "detected": r["details"][0]["detected"] if r["details"] else None})
            images.append(img)
    return rows, images


def rates(rows) -> dict:
    n = len(rows)
    return {"n": n, **{k: (sum(r[k] for r in rows) / n if n else float("nan")) for k in KEYS}}


def markdown(table: dict, settings: dict) -> str:
    lines = [f"Settings: {json.dumps(settings, ensure_ascii=False)}", "",
             "| prompts | images | colour | shape | position | all three |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in table.items():
        lines.append(f"| {name} | {r['n']} | {r['colour']:.1%} | {r['shape']:.1%} | {r['position']:.1%} | "
                     f"{r['all']:.1%} |")
    return "\n".join(lines) + "\n"


def label_grid(images, prompts, ncol: int = 8):
    """Images in a grid with their prompts written under each (PIL default font has no CJK
    glyphs, so the label is drawn with the first CJK-capable font found, else the index)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    font = None
    for name in ("NotoSansCJK-Regular.ttc", "wqy-microhei.ttc", "wqy-zenhei.ttc", "DroidSansFallbackFull.ttf"):
        for root in ("/usr/share/fonts", "/usr/local/share/fonts"):
            hits = list(Path(root).rglob(name)) if Path(root).is_dir() else []
            if hits:
                font = ImageFont.truetype(str(hits[0]), 11)
                break
        if font:
            break
    size = images[0].shape[0] * 2
    cell_w, cell_h = size + 8, size + 22
    rows = -(-len(images) // ncol)
    canvas = Image.new("RGB", (ncol * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (img, p) in enumerate(zip(images, prompts)):
        x, y = (i % ncol) * cell_w + 4, (i // ncol) * cell_h + 2
        canvas.paste(Image.fromarray(np.asarray(img)).resize((size, size), Image.NEAREST), (x, y))
        draw.text((x, y + size + 2), p if font else f"#{i}", fill="black", font=font)
    return canvas


def evaluate_stages(run, prompts, per_prompt: int, seed: int, batch: int = 8) -> tuple:
    """Adherence of a cascaded model at each of its stages, and whether the later stages keep
    what the first drew. ``run(prompts, seed) -> {size: images}`` (e.g. a GLIDE pipeline call with
    ``stages=1024``: {64: ..., 256: ..., 1024: ...}). Image ``j`` uses seed ``seed + j``.

    Returns ``(rows, images)``: one row per image with ``prompt``, ``seed`` and, per stage ``s``,
    ``colour@s`` / ``shape@s`` / ``position@s`` / ``all@s``, plus ``same@s`` for the later stages:
    True when the scorer reads the same colour, shape and place verdicts at ``s`` as at the first
    stage; ``images`` = {size: [images]}."""
    from ..shapes.scorer import score

    prompts = [p for p in prompts for _ in range(per_prompt)]
    rows, images = [], {}
    for s in range(0, len(prompts), batch):
        out = run(prompts[s:s + batch], seed + s)
        sizes = sorted(out)
        for k, p in enumerate(prompts[s:s + batch]):
            row = {"prompt": p, "seed": seed + s + k}
            first = None
            for size in sizes:
                img = out[size][k]
                images.setdefault(size, []).append(img)
                r = score(img, p)
                verdict = tuple(bool(r[key]) for key in KEYS)
                row.update({f"{key}@{size}": v for key, v in zip(KEYS, verdict)})
                if first is None:
                    first = verdict
                else:
                    row[f"same@{size}"] = verdict == first
            rows.append(row)
    return rows, images


def stage_rates(rows) -> dict:
    """{size: {'n', colour, shape, position, all[, same]}} from :func:`evaluate_stages` rows."""
    sizes = sorted({int(k.split("@")[1]) for k in rows[0] if "@" in k}) if rows else []
    out = {}
    for size in sizes:
        keys = list(KEYS) + (["same"] if f"same@{size}" in rows[0] else [])
        out[size] = {"n": len(rows), **{k: sum(r[f"{k}@{size}"] for r in rows) / len(rows) for k in keys}}
    return out


def stage_markdown(table: dict, settings: dict) -> str:
    """Markdown of {split name: stage_rates(...)}: one row per split and stage."""
    lines = [f"Settings: {json.dumps(settings, ensure_ascii=False)}", "",
             "| prompts | stage | images | colour | shape | position | all three | same verdicts as 64 px |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, by_size in table.items():
        for size, r in by_size.items():
            same = f"{r['same']:.1%}" if "same" in r else "-"
            lines.append(f"| {name} | {size} px | {r['n']} | {r['colour']:.1%} | {r['shape']:.1%} | "
                         f"{r['position']:.1%} | {r['all']:.1%} | {same} |")
    return "\n".join(lines) + "\n"
