"""Image-editing test cases in the shapes world, and how their results are read.

img2img (recolour)
    A single-shape scene rendered by the world; the prompt names the same shape at the same place
    in another colour. The result is read by the scorer against that prompt: the new colour, and
    the shape and place kept.
inpainting (add a shape)
    A single-shape scene at one of 左边/右边/上面/下面; the mask is the empty half of the image
    opposite it; the prompt is the caption of the two-shape scene (the kept shape and a second
    one, in another colour, at the opposite place). The scorer reads the result against that
    caption; the second object's colour, shape and place are what was asked, the first one's that
    it was kept. PSNR to the original inside and outside the mask says how much changed where.

Every case is a pure function of (index, seed, image size). Colours are drawn among those the
scene's background allows, and every asked (colour, shape, place) is a training combination.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .scorer import score
from .world import (COLOURS, PAIR_PLACES, SHAPES, TRAIN_COMBOS, Scene, ShapeObject, ShapesWorld,
                    background_allowed, make_caption)

__all__ = ["EditCase", "img2img_cases", "inpaint_cases", "half_mask", "psnr", "read_img2img", "read_inpaint",
           "OPPOSITE"]

_TRAIN = frozenset(TRAIN_COMBOS)
OPPOSITE = {a: b for pair in PAIR_PLACES for a, b in (pair, pair[::-1])}
# caption templates: SINGLE_TEMPLATES[0] / [4] and PAIR_TEMPLATES[1] / [3] (without / with the background)
_SINGLE, _SINGLE_BG, _PAIR, _PAIR_BG = 0, 4, 1, 3


@dataclass
class EditCase:
    """One editing case: the init image (and mask, 0/255, for inpainting), the prompt, the scene
    the prompt describes and the object the edit must produce."""

    index: int
    image: np.ndarray
    prompt: str
    target: Scene  # the scene the prompt describes
    asked: tuple  # (colour, shape, place) the edit must produce
    mask: np.ndarray | None = None
    source: Scene | None = None
    reads: str | None = None  # the caption the result is read against (default: the prompt)

    @property
    def target_caption(self) -> str:
        return self.reads or self.prompt


def _caption(scene: Scene, plain: int, with_bg: int) -> str:
    return make_caption(scene, plain if scene.background == "灰" else with_bg)


def _colours_for(rng, background: str, shape: str, place: str, exclude=()) -> str:
    ok = [c for c in COLOURS if c not in exclude and background_allowed(background, c)
          and (c, shape, place) in _TRAIN]
    return ok[int(rng.integers(len(ok)))]


def img2img_cases(n: int, seed: int = 0, image_size: int = 64) -> list[EditCase]:
    """``n`` recolouring cases: single shapes of the training split cycling through its
    combinations (``ShapesWorld.eval_scenes``), each asked in another colour."""
    world = ShapesWorld(image_size=image_size, seed=seed, split="train")
    out = []
    for i, (scene, _) in enumerate(world.eval_scenes(n)):
        obj = scene.objects[0]
        rng = np.random.default_rng([seed, 1709, i])
        colour = _colours_for(rng, scene.background, obj.shape, obj.place, exclude=(obj.colour,))
        target = Scene((replace(obj, colour=colour),), scene.background)
        out.append(EditCase(i, world.render(scene), _caption(target, _SINGLE, _SINGLE_BG), target,
                            (colour, obj.shape, obj.place), source=scene))
    return out


def half_mask(place: str, image_size: int) -> np.ndarray:
    """uint8 (S, S) mask, 255 on the half of the image holding ``place`` (左边/右边/上面/下面)."""
    m = np.zeros((image_size, image_size), np.uint8)
    h = image_size // 2
    region = {"左边": np.s_[:, :h], "右边": np.s_[:, h:], "上面": np.s_[:h, :], "下面": np.s_[h:, :]}
    if place not in region:
        raise ValueError(f"half_mask needs one of {list(region)}, got {place!r}")
    m[region[place]] = 255
    return m


def inpaint_cases(n: int, seed: int = 0, image_size: int = 64, prompt: str = "pair") -> list[EditCase]:
    """``n`` cases of adding a second shape in the empty half opposite a single shape. ``prompt``:
    "pair" gives the model the caption of the two-shape scene, "single" one naming only the new
    shape at its place; the result is read against the two-shape caption either way."""
    if prompt not in ("pair", "single"):
        raise ValueError(f"prompt must be 'pair' or 'single', got {prompt!r}")
    world = ShapesWorld(image_size=image_size, seed=seed, split="train")
    scenes = [s for s, _ in world.eval_scenes(4 * n + 8) if s.objects[0].place in OPPOSITE][:n]
    out = []
    for i, scene in enumerate(scenes):
        old = scene.objects[0]
        rng = np.random.default_rng([seed, 2713, i])
        place = OPPOSITE[old.place]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = _colours_for(rng, scene.background, shape, place, exclude=(old.colour,))
        size = float(rng.uniform(*world.size_range))
        rot = 0.0 if shape == "圆形" else float(rng.uniform(-world.max_rotation, world.max_rotation))
        new = ShapeObject(colour, shape, place, size, 0.0, 0.0, rot)
        target = Scene((old, new), scene.background)
        pair = _caption(target, _PAIR, _PAIR_BG)
        given = pair if prompt == "pair" else _caption(Scene((new,), scene.background), _SINGLE, _SINGLE_BG)
        out.append(EditCase(i, world.render(scene), given, target, (colour, shape, place),
                            half_mask(place, image_size), scene, reads=pair))
    return out


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    """PSNR (dB, peak 255) between two uint8 images over the pixels where ``where`` is true
    (all when None); ``inf`` when they are equal there."""
    d = a.astype(np.float64) - b.astype(np.float64)
    if where is not None:
        d = d[np.asarray(where, bool)]
    mse = float(np.mean(d * d)) if d.size else 0.0
    return float("inf") if mse == 0.0 else float(10.0 * np.log10(255.0 ** 2 / mse))


def read_img2img(case: EditCase, image: np.ndarray) -> dict:
    """The scorer's reading of an img2img result: new colour, same shape, same place."""
    r = score(image, case.prompt)
    d = r["details"][0]
    return {"colour": d["colour"], "shape": d["shape"], "place": d["position"],
            "shape_place": d["shape"] and d["position"], "all": r["all"], "detected": d["detected"]}


def read_inpaint(case: EditCase, image: np.ndarray) -> dict:
    """The scorer's reading of an inpainting result (the second object is the asked one; the
    first the kept one) and the PSNR to the init image inside and outside the mask."""
    r = score(image, case.target_caption)
    new, kept = r["details"][1], r["details"][0]
    inside = case.mask > 0
    return {"colour": new["colour"], "shape": new["shape"], "place": new["position"],
            "colour_place": new["colour"] and new["position"],
            "all": new["colour"] and new["shape"] and new["position"],
            "kept": kept["colour"] and kept["shape"] and kept["position"], "detected": new["detected"],
            "psnr_inside": psnr(image, case.image, inside), "psnr_outside": psnr(image, case.image, ~inside),
            "outside_equal": bool(np.array_equal(image[~inside], case.image[~inside]))}
