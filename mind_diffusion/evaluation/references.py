"""Reference image sets for FID comparisons.

- ``extract_cifar_class``: one class of the user's ``cifar-10-python.tar.gz`` (read with
  ``mind_diffusion.train.data.read_cifar10``: restricted unpickler, md5-checked) written as
  PNGs plus a ``cifar_class.json`` manifest that the comparison runner reads to decide whether
  a run follows the report's protocol (CIFAR-10 horse, train split).
- ``digits_reference``: the real scikit-learn digits of one class at the size the built-in
  DDPM was trained on (the same 8 -> N bilinear path as its training data).
- ``shapes_reference``: shapes-world scenes that match a prompt, drawn from the world's own
  training distribution (rejection sampling of ``ShapesWorld.sample_scene`` on the prompt's
  parsed objects and background), rendered at the model's size.
"""
from __future__ import annotations

import difflib
import json
from pathlib import Path

import numpy as np

from ..train.data import CIFAR10_CLASSES, DataError

CIFAR_MANIFEST = "cifar_class.json"
_PNG_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class ReferenceError(ValueError):
    """A reference image set that cannot be built (the message says why)."""


# ----------------------------------------------------------------------------- CIFAR-10
def cifar_class_id(name) -> int:
    """'horse' (or '7') -> 7; unknown names list the ten CIFAR-10 classes."""
    text = str(name).strip().lower()
    if text.isdigit() and 0 <= int(text) < len(CIFAR10_CLASSES):
        return int(text)
    if text in CIFAR10_CLASSES:
        return CIFAR10_CLASSES.index(text)
    close = difflib.get_close_matches(text, CIFAR10_CLASSES, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ReferenceError(f"unknown CIFAR-10 class {name!r}{hint}; the 10 classes are: "
                         f"{', '.join(f'{i}={n}' for i, n in enumerate(CIFAR10_CLASSES))}")


def _existing_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [f for f in folder.iterdir() if f.suffix.lower() in _PNG_EXTS]


def extract_cifar_class(tarball, class_name, split: str, out, verify_md5: bool = True,
                        progress: bool = False) -> dict:
    """Write every ``split`` image of one CIFAR-10 class to ``out/NNNNN.png`` (32 x 32 RGB, in
    archive order) and ``out/cifar_class.json``. Refuses a folder that already holds images."""
    from ..train.data import read_cifar10
    from ..utils.images import check_output_dir, save_png

    cid = cifar_class_id(class_name)
    if split not in ("train", "test"):
        raise ReferenceError(f"--split must be 'train' or 'test', got {split!r}")
    p = Path(tarball).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"CIFAR-10 tarball not found: {p} (download cifar-10-python.tar.gz from "
                                f"https://www.cs.toronto.edu/~kriz/cifar.html and pass its path)")
    out = Path(out).expanduser()
    old = _existing_images(out)
    if old:
        raise ReferenceError(f"{out} already holds {len(old)} image(s) (e.g. {sorted(old)[0].name}); "
                             f"nothing was overwritten: choose an empty or new --out folder")
    try:
        images, labels, classes = read_cifar10(p, split=split, verify_md5=verify_md5)
    except DataError as exc:
        msg = str(exc)
        if "md5" in msg:
            msg = msg.replace("pass verify_md5=False", "pass --no_verify_md5 to use it anyway")
        raise DataError(msg) from None
    sel = np.flatnonzero(labels == cid)
    if sel.size == 0:
        raise ReferenceError(f"{p} ({split} split) holds no images of class {classes[cid]}")
    check_output_dir(out)
    it = sel
    if progress:
        from tqdm import tqdm

        it = tqdm(sel, desc=f"CIFAR-10 {classes[cid]} ({split})", unit="img")
    for k, i in enumerate(it):
        save_png(out / f"{k:05d}.png", images[i], {"source": "CIFAR-10", "class": classes[cid], "split": split,
                                                    "index_in_split": int(i)})
    manifest = {"dataset": "CIFAR-10", "class": classes[cid], "class_id": cid, "split": split,
                "count": int(sel.size), "md5_verified": bool(verify_md5 and p.is_file()),
                "source": str(p)}
    (out / CIFAR_MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def read_cifar_manifest(folder) -> dict | None:
    f = Path(folder).expanduser() / CIFAR_MANIFEST
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ----------------------------------------------------------------------------- digits
def digits_reference(class_label: int, image_size: int = 16, max_images: int | None = None) -> np.ndarray:
    """The real scikit-learn digits of ``class_label`` as (N, S, S, 1) uint8, in dataset order."""
    from ..train.data import read_digits

    if not (isinstance(class_label, (int, np.integer)) and 0 <= int(class_label) <= 9):
        raise ReferenceError(f"digits class must be 0..9, got {class_label!r}")
    images, labels, _ = read_digits(int(image_size))
    sel = images[labels == int(class_label)]
    return sel[:max_images] if max_images else sel


# ----------------------------------------------------------------------------- shapes world
def _scene_matches(scene, parsed) -> bool:
    objs = scene.objects
    if len(objs) != len(parsed.objects):
        return False
    if parsed.background is not None and scene.background != parsed.background:
        return False
    # the prompt's objects in any order (a pair prompt may list them either way)
    for order in ((0, 1), (1, 0)) if len(objs) == 2 else ((0,),):
        if all((c is None or o.colour == c) and o.shape == s and (pl is None or o.place == pl)
               for o, (c, s, pl) in zip((objs[k] for k in order), parsed.objects)):
            return True
    return False


def shapes_reference(prompt: str, n: int, image_size: int = 64, seed: int = 0,
                     max_draws_per_image: int = 5000) -> np.ndarray:
    """``n`` rendered shapes-world images matching ``prompt``: training-distribution scenes of
    the world (``split`` held-out when every named combination is held out) whose objects and
    background agree with the parsed prompt and whose caption mentions a background exactly
    when the prompt does. Deterministic in (prompt, n, image_size, seed)."""
    from ..shapes.world import HELDOUT_COMBOS, ShapesWorld, parse_prompt, render_scene

    parsed = parse_prompt(prompt)  # PromptNotInWorldError (a ValueError) for other prompts
    if int(n) < 1:
        raise ReferenceError(f"shapes reference needs n >= 1 images, got {n}")
    full = [o for o in parsed.objects if o[0] is not None and o[2] is not None]
    heldout = bool(full) and len(full) == len(parsed.objects) and all(tuple(o) in HELDOUT_COMBOS for o in full)
    world = ShapesWorld(image_size=int(image_size), seed=int(seed), split="heldout" if heldout else "train",
                        two_shape_prob=0.25)
    want_bg_mention = parsed.background is not None
    out = []
    i = 0
    limit = int(n) * int(max_draws_per_image)
    while len(out) < int(n):
        if i >= limit:
            raise ReferenceError(f"the shapes world drew only {len(out)} of {n} scenes matching {prompt!r} in "
                                 f"{limit} draws: the prompt describes scenes the world (almost) never makes")
        scene, caption = world.sample_scene(i)
        i += 1
        if not _scene_matches(scene, parsed):
            continue
        if (parse_prompt(caption).background is not None) != want_bg_mention:
            continue
        out.append(render_scene(scene, world.image_size, world.antialias))
    return np.stack(out)
