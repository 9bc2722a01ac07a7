"""Settings read back from a PNG: the suite's (its ``mind_diffusion`` JSON chunk, or the
``parameters`` text it writes beside it) or AUTOMATIC1111's ``parameters`` text chunk::

    a red fox in the snow
    Negative prompt: blurry
    Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 123, Size: 512x768, Model: sd15

No gradio and no MindSpore here.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

# one "Key: value" of the settings line; a value is a quoted string (A1111 quotes values that
# hold commas) or runs to the next comma
_PAIR = re.compile(r'\s*([A-Za-z][\w \-/()]*?):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')
# A1111 sampler names -> this suite's samplers (those that are the same algorithm)
A1111_SAMPLERS = {"dpm++ 2m": "dpm_solver", "dpm++ 2m karras": "dpm_solver", "plms": "plms",
                  "ddim": "ddim", "ddpm": "ddpm"}
OURS = ("dpm_solver", "plms", "ddim", "ddpm")


def read_png_text(path: str | Path) -> dict:
    """The PNG's text chunks ({} for a PNG without any); a file that is no PNG raises
    ValueError with what it is."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.format != "PNG":
                raise ValueError(f"{Path(path).name} is a {im.format} image, not a PNG: drop a PNG "
                                 f"written by this suite or by AUTOMATIC1111")
            return {k: v for k, v in im.info.items() if isinstance(v, str)}
    except UnidentifiedImageError:
        raise ValueError(f"{Path(path).name} is not an image: drop a PNG written by this suite or "
                         f"by AUTOMATIC1111") from None


def parse_settings_line(line: str) -> dict:
    out = {}
    for m in _PAIR.finditer(line):
        key, value = m.group(1).strip(), m.group(2).strip()
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            try:
                value = json.loads(value)
            except ValueError:
                value = value[1:-1]
        out[key] = value
    return out


def parse_parameters(text: str) -> dict:
    """The prompt, the negative prompt and the settings pairs of a ``parameters`` text."""
    lines = text.strip("\n").split("\n")
    settings = {}
    if lines and _PAIR.match(lines[-1]) and ":" in lines[-1] and len(parse_settings_line(lines[-1])) >= 2:
        settings = parse_settings_line(lines.pop())
    prompt, negative, in_negative = [], [], False
    for ln in lines:
        if ln.startswith("Negative prompt:"):
            in_negative = True
            ln = ln[len("Negative prompt:"):].lstrip()
        (negative if in_negative else prompt).append(ln)
    return {"prompt": "\n".join(prompt), "negative_prompt": "\n".join(negative), "settings": settings}


def _number(value, kind=float) -> Optional[float]:
    try:
        v = kind(float(value))
    except (TypeError, ValueError):
        return None
    return v


def form_values(path: str | Path) -> dict:
    """What the Text to image form takes from a PNG: ``prompt``, ``negative_prompt``,
    ``sampler``, ``steps``, ``scale``, ``seed``, ``width``, ``height`` (None: not in the file),
    ``checkpoint`` (file name or A1111 model name), ``checkpoint_sha256``, ``source``
    ("mind_diffusion", "A1111" or "text") and ``notes`` (what could not be taken over)."""
    chunks = read_png_text(path)
    notes = []
    vals = dict.fromkeys(("prompt", "negative_prompt", "sampler", "steps", "scale", "seed", "width",
                          "height", "checkpoint", "checkpoint_sha256"))
    raw = chunks.get("mind_diffusion")
    if raw:
        try:
            meta = json.loads(raw)
        except ValueError:
            meta = None
        if isinstance(meta, dict):
            vals.update(prompt=meta.get("prompt"), negative_prompt=meta.get("negative_prompt") or "",
                        sampler=meta.get("sampler"), checkpoint=meta.get("checkpoint"),
                        checkpoint_sha256=meta.get("checkpoint_sha256"))
            vals["steps"] = _number(meta.get("steps", meta.get("denoise_steps")), int)
            vals["scale"] = _number(meta.get("scale", meta.get("guidance_scale")))
            vals["seed"] = _number(meta.get("seed"), int)
            size = str(meta.get("size") or "")
            source = "mind_diffusion"
        else:
            raw = None
    if not raw:
        text = chunks.get("parameters")
        if not text:
            raise ValueError(f"{Path(path).name} carries no generation settings (no 'parameters' "
                             f"or 'mind_diffusion' text chunk): it was not written by this suite "
                             f"or AUTOMATIC1111, or its metadata was stripped")
        p = parse_parameters(text)
        s = {k.lower(): v for k, v in p["settings"].items()}
        source = "A1111" if "cfg scale" in s or "Steps" in p["settings"] else "text"
        vals.update(prompt=p["prompt"], negative_prompt=p["negative_prompt"])
        vals["steps"] = _number(s.get("steps"), int)
        vals["scale"] = _number(s.get("cfg scale", s.get("scale")))
        vals["seed"] = _number(s.get("seed"), int)
        sampler = s.get("sampler")
        if sampler is not None:
            vals["sampler"] = sampler if sampler in OURS else A1111_SAMPLERS.get(sampler.lower())
            if vals["sampler"] is None:
                notes.append(f"sampler {sampler!r} has no counterpart here (dpm_solver, plms, ddim, "
                             f"ddpm): the form keeps its sampler")
        vals["checkpoint"] = s.get("checkpoint", s.get("model"))
        vals["checkpoint_sha256"] = s.get("checkpoint_sha256", s.get("model hash"))
        size = str(s.get("size") or "")
    m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", size)
    if m:
        vals["width"], vals["height"] = int(m.group(1)), int(m.group(2))
    vals["source"], vals["notes"] = source, notes
    return vals
