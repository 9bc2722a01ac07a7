"""The procedural shapes world: coloured shapes at named places, with Chinese captions.

Used to train the small built-in Chinese text-to-image model and to score prompt adherence
(``mind_diffusion.shapes.scorer``). Pure Python + numpy + OpenCV + Pillow.

Vocabulary
    * colours (``COLOURS``): 红 橙 黄 绿 蓝 紫 白 黑, RGB values chosen far apart in Lab
      (smallest CIE76 distance: 蓝/紫 ~40);
    * shapes (``SHAPES``): 圆形 正方形 三角形 星形; ``NEW_SHAPES`` (十字形, a plus-shaped cross)
      can be rendered, parsed and scored but is never drawn by ``ShapesWorld`` (neither split)
      and is not in the vocabulary: a concept the built-in model has never seen, for teaching it
      one (LoRA / DreamBooth, ``render_instances``);
    * places (``PLACES``): 左边 右边 上面 下面 中间, each a target centre in normalized
      (x, y) image coordinates (y grows downwards);
    * backgrounds (``BACKGROUNDS``): 灰 (the plain light-grey default) and 白 黑 蓝 绿 黄. A
      background is only drawn behind shapes whose colour differs from it by at least
      ``MIN_BACKGROUND_CONTRAST`` (Lab distance), so it never equals a foreground colour.

Scenes hold one shape, or two shapes at opposite places (左边+右边 or 上面+下面, which never
overlap), with jitter in size, position (a small offset) and rotation (not for circles).
Captions come from ``SINGLE_TEMPLATES`` / ``PAIR_TEMPLATES`` and always name colour, shape and
place of every object; some also name the background.

Held-out split: the 16 (colour, shape, place) combinations in ``HELDOUT_COMBOS`` (10% of the
8x4x5 = 160) are never drawn for ``split="train"``; ``split="heldout"`` draws only scenes whose
every object is one of them. Every colour, shape and place still occurs in training (each
colour loses 2 of its 20 combos, each shape 4 of 40, each place 3 or 4 of 32).

``ShapesWorld(seed=s).sample(i)`` is a pure function of (seed, split, i and the settings).
"""
from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "ALL_COMBOS",
    "BACKGROUNDS",
    "COLOURS",
    "DEFAULT_BACKGROUND",
    "HELDOUT_COMBOS",
    "NEW_SHAPES",
    "RENDER_SHAPES",
    "PAIR_PLACES",
    "PAIR_TEMPLATES",
    "PLACES",
    "SHAPES",
    "SINGLE_TEMPLATES",
    "TRAIN_COMBOS",
    "ParsedPrompt",
    "PromptNotInWorldError",
    "Scene",
    "ShapeObject",
    "ShapesWorld",
    "background_allowed",
    "build_vocab",
    "eval_prompts",
    "export_csv",
    "is_world_prompt",
    "lab_distance",
    "make_caption",
    "parse_prompt",
    "render_instances",
    "render_scene",
    "vocab_tokens",
]

# --------------------------------------------------------------------------- vocabulary
COLOURS: dict[str, tuple[int, int, int]] = {
    "红": (220, 20, 30),
    "橙": (255, 130, 0),
    "黄": (250, 220, 0),
    "绿": (20, 160, 60),
    "蓝": (0, 100, 230),
    "紫": (140, 40, 170),
    "白": (255, 255, 255),
    "黑": (15, 15, 15),
}
SHAPES: tuple[str, ...] = ("圆形", "正方形", "三角形", "星形")
# Shapes the world can render and the scorer reads, but ShapesWorld never draws (no split, no caption,
# not in the vocabulary): new concepts to teach a trained model.
NEW_SHAPES: tuple[str, ...] = ("十字形",)
RENDER_SHAPES: tuple[str, ...] = SHAPES + NEW_SHAPES
PLACES: dict[str, tuple[float, float]] = {
    "左边": (0.27, 0.5),
    "右边": (0.73, 0.5),
    "上面": (0.5, 0.27),
    "下面": (0.5, 0.73),
    "中间": (0.5, 0.5),
}
PAIR_PLACES: tuple[tuple[str, str], ...] = (("左边", "右边"), ("上面", "下面"))
DEFAULT_BACKGROUND = "灰"
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "灰": (180, 180, 180),
    "白": COLOURS["白"],
    "黑": COLOURS["黑"],
    "蓝": COLOURS["蓝"],
    "绿": COLOURS["绿"],
    "黄": COLOURS["黄"],
}
MIN_BACKGROUND_CONTRAST = 25.0  # Lab distance between a background and any shape drawn on it

ALL_COMBOS: tuple[tuple[str, str, str], ...] = tuple(
    (c, s, p) for c in COLOURS for s in SHAPES for p in PLACES)
# Fixed held-out set: two per colour, four per shape, three or four per place.
HELDOUT_COMBOS: tuple[tuple[str, str, str], ...] = (
    ("红", "星形", "右边"), ("红", "正方形", "上面"),
    ("橙", "圆形", "下面"), ("橙", "三角形", "中间"),
    ("黄", "三角形", "左边"), ("黄", "星形", "下面"),
    ("绿", "正方形", "中间"), ("绿", "圆形", "右边"),
    ("蓝", "星形", "左边"), ("蓝", "三角形", "上面"),
    ("紫", "圆形", "上面"), ("紫", "正方形", "左边"),
    ("白", "三角形", "右边"), ("白", "星形", "中间"),
    ("黑", "正方形", "下面"), ("黑", "圆形", "左边"),
)
_HELDOUT_SET = frozenset(HELDOUT_COMBOS)
TRAIN_COMBOS: tuple[tuple[str, str, str], ...] = tuple(c for c in ALL_COMBOS if c not in _HELDOUT_SET)
SPLITS = ("train", "heldout")

# Caption templates. {c}/{s}/{p} colour, shape, place; {b} background colour; 1/2 for pairs.
SINGLE_TEMPLATES: tuple[str, ...] = (
    "一个{c}色的{s}在{p}",
    "{p}有一个{c}色的{s}",
    "画面{p}是一个{c}色的{s}",
    "{c}色的{s}位于{p}",
    "{b}色背景上的{c}色{s}，在{p}",
    "{b}色背景上，{p}有一个{c}色的{s}",
    "一个{c}色{s}在{p}，背景是{b}色",
)
PAIR_TEMPLATES: tuple[str, ...] = (
    "{p1}是一个{c1}色的{s1}，{p2}是一个{c2}色的{s2}",
    "一个{c1}色的{s1}在{p1}，一个{c2}色的{s2}在{p2}",
    "{c1}色的{s1}和{c2}色的{s2}分别在{p1}和{p2}",
    "{b}色背景上，{p1}有一个{c1}色的{s1}，{p2}有一个{c2}色的{s2}",
)
# Place words used in captions: the canonical one and a variant.
CAPTION_PLACE_WORDS: dict[str, tuple[str, str]] = {
    "左边": ("左边", "左侧"), "右边": ("右边", "右侧"), "上面": ("上面", "上方"),
    "下面": ("下面", "下方"), "中间": ("中间", "中央"),
}

# Words the parser understands beyond the caption vocabulary (user prompts).
SHAPE_WORDS: dict[str, str] = {
    "圆形": "圆形", "圆圈": "圆形", "圆": "圆形",
    "正方形": "正方形", "方形": "正方形", "方块": "正方形",
    "三角形": "三角形", "三角": "三角形",
    "星形": "星形", "五角星": "星形", "星星": "星形", "星": "星形",
}
NEW_SHAPE_WORDS: dict[str, str] = {"十字形": "十字形", "十字": "十字形"}
PLACE_WORDS: dict[str, str] = {
    "左边": "左边", "左侧": "左边", "左面": "左边", "左方": "左边",
    "右边": "右边", "右侧": "右边", "右面": "右边", "右方": "右边",
    "上面": "上面", "上方": "上面", "上边": "上面", "上部": "上面", "顶部": "上面",
    "下面": "下面", "下方": "下面", "下边": "下面", "下部": "下面", "底部": "下面",
    "中间": "中间", "正中间": "中间", "中央": "中间", "正中央": "中间", "中心": "中间", "正中": "中间",
}
# Connecting words that carry no scene content.
FILLER_WORDS: tuple[str, ...] = (
    "一个", "一张", "一幅", "个", "张", "幅", "只", "的", "在", "有", "是", "为", "位于", "画面",
    "画着", "画", "着", "图片", "图", "里", "中", "上", "处", "色", "颜色", "和", "与", "跟",
    "以及", "还有", "分别", "背景", "纯",
)
_SEPARATORS = set("，,。.；;：:！!？?、\n\t ")
_PUNCT_VOCAB = "，。、；：！？,.;:!?"


class PromptNotInWorldError(ValueError):
    """A prompt the shapes world cannot express (e.g. "城市夜景")."""

    def __init__(self, message: str, unknown: Sequence[str] = ()):
        super().__init__(message)
        self.unknown = list(unknown)


# --------------------------------------------------------------------------- colour helpers
def _to_lab(rgb) -> np.ndarray:
    import cv2

    arr = np.asarray(rgb, np.float32).reshape(1, -1, 3) / 255.0
    return cv2.cvtColor(arr, cv2.COLOR_RGB2Lab).reshape(-1, 3)


def lab_distance(rgb_a, rgb_b) -> float:
    """CIE76 distance between two RGB colours (0..255)."""
    a, b = _to_lab([rgb_a, rgb_b])
    return float(np.linalg.norm(a - b))


_BG_OK_CACHE: dict[tuple[str, str], bool] = {}


def background_allowed(background: str, colour: str) -> bool:
    """True when shapes of ``colour`` may be drawn on ``background``."""
    key = (background, colour)
    if key not in _BG_OK_CACHE:
        _BG_OK_CACHE[key] = (background != colour
                             and lab_distance(BACKGROUNDS[background], COLOURS[colour]) >= MIN_BACKGROUND_CONTRAST)
    return _BG_OK_CACHE[key]


# --------------------------------------------------------------------------- scenes
@dataclass(frozen=True)
class ShapeObject:
    """One shape: colour/shape/place names plus rendering jitter (fractions of the image size;
    ``size`` is the shape's scale: circle radius, 0.9x square half-side, ...; rotation in degrees)."""

    colour: str
    shape: str
    place: str
    size: float = 0.12
    dx: float = 0.0
    dy: float = 0.0
    rotation: float = 0.0

    @property
    def combo(self) -> tuple[str, str, str]:
        return (self.colour, self.shape, self.place)

    def __post_init__(self):
        if self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}; choose one of {list(COLOURS)}")
        if self.shape not in RENDER_SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; choose one of {list(RENDER_SHAPES)}")
        if self.place not in PLACES:
            raise ValueError(f"unknown place {self.place!r}; choose one of {list(PLACES)}")
        if not 0.0 < self.size < 0.5:
            raise ValueError(f"shape size must be in (0, 0.5) of the image, got {self.size}")


@dataclass(frozen=True)
class Scene:
    """Objects (one or two ``ShapeObject``) on a named background."""

    objects: tuple[ShapeObject, ...]
    background: str = DEFAULT_BACKGROUND

    def __post_init__(self):
        object.__setattr__(self, "objects", tuple(self.objects))
        if not self.objects:
            raise ValueError("a scene needs at least one object")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}; choose one of {list(BACKGROUNDS)}")

    @property
    def combos(self) -> tuple[tuple[str, str, str], ...]:
        return tuple(o.combo for o in self.objects)

    def to_dict(self) -> dict:
        return {"background": self.background, "objects": [asdict(o) for o in self.objects]}


def _shape_polygon(shape: str, s: float, rotation_deg: float) -> np.ndarray:
    """Vertices (N, 2) around the origin, x right / y down, all centred on their centroid."""
    if shape == "圆形":
        ang = np.linspace(0.0, 2 * np.pi, 96, endpoint=False)
        pts = np.stack([np.cos(ang), np.sin(ang)], 1) * s
    elif shape == "正方形":
        h = 0.9 * s
        pts = np.array([[-h, -h], [h, -h], [h, h], [-h, h]], np.float64)
    elif shape == "三角形":
        ang = np.deg2rad([-90.0, 30.0, 150.0])
        pts = np.stack([np.cos(ang), np.sin(ang)], 1) * (1.3 * s)
    elif shape == "星形":
        outer, inner = 1.4 * s, 0.63 * s
        ang = np.deg2rad(-90.0 + 36.0 * np.arange(10))
        rad = np.where(np.arange(10) % 2 == 0, outer, inner)
        pts = np.stack([np.cos(ang) * rad, np.sin(ang) * rad], 1)
    elif shape == "十字形":  # a plus sign: arms 1/3 of its extent wide, area ~ the square's
        e, a = 1.2 * s, 0.4 * s
        pts = np.array([[-a, -e], [a, -e], [a, -a], [e, -a], [e, a], [a, a], [a, e], [-a, e], [-a, a],
                        [-e, a], [-e, -a], [-a, -a]], np.float64)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose one of {list(RENDER_SHAPES)}")
    if rotation_deg:
        t = np.deg2rad(rotation_deg)
        rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
        pts = pts @ rot.T
    return pts


def render_scene(scene: Scene, image_size: int = 64, antialias: bool = False) -> np.ndarray:
    """Scene -> (image_size, image_size, 3) uint8 RGB. ``antialias`` renders at 4x and
    area-downsamples (mild anti-aliasing); otherwise hard edges."""
    import cv2

    if int(image_size) < 16:
        raise ValueError(f"image_size must be >= 16 pixels, got {image_size}")
    scale = 4 if antialias else 1
    size = int(image_size) * scale
    canvas = np.empty((size, size, 3), np.uint8)
    canvas[:] = BACKGROUNDS[scene.background]
    for obj in scene.objects:
        cx = (PLACES[obj.place][0] + obj.dx) * size
        cy = (PLACES[obj.place][1] + obj.dy) * size
        pts = _shape_polygon(obj.shape, obj.size * size, obj.rotation) + (cx, cy)
        # Pixel (i, j) covers [j, j+1) x [i, i+1); cv2 puts integer coordinates at pixel centres.
        fixed = np.round((pts - 0.5) * 16.0).astype(np.int32)
        cv2.fillPoly(canvas, [fixed], tuple(int(v) for v in COLOURS[obj.colour]), lineType=cv2.LINE_8, shift=4)
    if scale != 1:
        canvas = cv2.resize(canvas, (int(image_size), int(image_size)), interpolation=cv2.INTER_AREA)
    return canvas


# --------------------------------------------------------------------------- captions
def _template_uses_background(template: str) -> bool:
    return "{b}" in template


def make_caption(scene: Scene, template: int, alt_places: Sequence[bool] = (False, False)) -> str:
    """Caption of ``scene`` from template number ``template`` (of SINGLE_ or PAIR_TEMPLATES);
    ``alt_places[k]`` picks the variant place word (左侧, 上方, ...) for object k."""
    objs = scene.objects
    alt = list(alt_places) + [False] * (len(objs) - len(alt_places))
    place_words = [CAPTION_PLACE_WORDS[o.place][1 if a else 0] for o, a in zip(objs, alt)]
    if len(objs) == 1:
        if not 0 <= template < len(SINGLE_TEMPLATES):
            raise ValueError(f"single-shape template must be in [0, {len(SINGLE_TEMPLATES)}), got {template}")
        o = objs[0]
        return SINGLE_TEMPLATES[template].format(c=o.colour, s=o.shape, p=place_words[0], b=scene.background)
    if len(objs) == 2:
        if not 0 <= template < len(PAIR_TEMPLATES):
            raise ValueError(f"two-shape template must be in [0, {len(PAIR_TEMPLATES)}), got {template}")
        a, b = objs
        return PAIR_TEMPLATES[template].format(c1=a.colour, s1=a.shape, p1=place_words[0], c2=b.colour,
                                               s2=b.shape, p2=place_words[1], b=scene.background)
    raise ValueError(f"captions exist for one or two objects, the scene has {len(objs)}")


# --------------------------------------------------------------------------- the world
class ShapesWorld:
    """Deterministic sampler of (image, caption, scene).

    ``sample(i)`` depends only on (seed, split, i) and the constructor settings.
    """

    def __init__(self, image_size: int = 64, seed: int = 0, two_shape_prob: float = 0.25,
                 split: str = "train", antialias: bool = False, size_range: tuple[float, float] = (0.10, 0.14),
                 max_offset: float = 0.03, max_rotation: float = 20.0, default_background_prob: float = 0.5,
                 alt_place_prob: float = 0.3):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if int(image_size) < 16:
            raise ValueError(f"image_size must be >= 16 pixels, got {image_size}")
        if not (isinstance(seed, (int, np.integer)) and seed >= 0):
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        for name, p in (("two_shape_prob", two_shape_prob), ("default_background_prob", default_background_prob),
                        ("alt_place_prob", alt_place_prob)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        lo, hi = size_range
        if not 0.03 <= lo <= hi <= 0.14:
            raise ValueError(f"size_range must satisfy 0.03 <= low <= high <= 0.14 (larger shapes at opposite "
                             f"places could touch), got {size_range}")
        if not 0.0 <= max_offset <= 0.03:
            raise ValueError(f"max_offset must be in [0, 0.03] of the image, got {max_offset}")
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.two_shape_prob = float(two_shape_prob)
        self.split = split
        self.antialias = bool(antialias)
        self.size_range = (float(lo), float(hi))
        self.max_offset = float(max_offset)
        self.max_rotation = float(max_rotation)
        self.default_background_prob = float(default_background_prob)
        self.alt_place_prob = float(alt_place_prob)
        self.combos = HELDOUT_COMBOS if split == "heldout" else TRAIN_COMBOS
        self._by_place = {p: [c for c in self.combos if c[2] == p] for p in PLACES}

    def settings(self) -> dict:
        return {"image_size": self.image_size, "seed": self.seed, "two_shape_prob": self.two_shape_prob,
                "split": self.split, "antialias": self.antialias, "size_range": list(self.size_range),
                "max_offset": self.max_offset, "max_rotation": self.max_rotation,
                "default_background_prob": self.default_background_prob, "alt_place_prob": self.alt_place_prob}

    def _rng(self, i: int) -> np.random.Generator:
        if not (isinstance(i, (int, np.integer)) and i >= 0):
            raise ValueError(f"sample index must be a non-negative integer, got {i!r}")
        return np.random.default_rng([self.seed, SPLITS.index(self.split), int(i)])

    def _jitter(self, rng, combo) -> ShapeObject:
        colour, shape, place = combo
        size = rng.uniform(*self.size_range)
        dx, dy = rng.uniform(-self.max_offset, self.max_offset, 2)
        rot = 0.0 if shape == "圆形" else rng.uniform(-self.max_rotation, self.max_rotation)
        return ShapeObject(colour, shape, place, float(size), float(dx), float(dy), float(rot))

    def _background(self, rng, colours) -> str:
        allowed = [b for b in BACKGROUNDS if all(background_allowed(b, c) for c in colours)]
        others = [b for b in allowed if b != DEFAULT_BACKGROUND]
        if DEFAULT_BACKGROUND in allowed and (not others or rng.random() < self.default_background_prob):
            return DEFAULT_BACKGROUND
        return others[int(rng.integers(len(others)))]

    def _caption(self, rng, scene: Scene) -> str:
        templates = SINGLE_TEMPLATES if len(scene.objects) == 1 else PAIR_TEMPLATES
        with_bg = [k for k, t in enumerate(templates) if _template_uses_background(t)]
        without = [k for k, t in enumerate(templates) if not _template_uses_background(t)]
        p_bg = 0.2 if scene.background == DEFAULT_BACKGROUND else 0.7
        group = with_bg if rng.random() < p_bg else without
        template = group[int(rng.integers(len(group)))]
        alt = [bool(rng.random() < self.alt_place_prob) for _ in scene.objects]
        return make_caption(scene, template, alt)

    def sample_scene(self, i: int) -> tuple[Scene, str]:
        """(scene, caption) for index ``i`` without rendering."""
        rng = self._rng(i)
        if rng.random() < self.two_shape_prob:
            places = PAIR_PLACES[int(rng.integers(len(PAIR_PLACES)))]
            if rng.random() < 0.5:
                places = places[::-1]
            combos = [self._by_place[p][int(rng.integers(len(self._by_place[p])))] for p in places]
        else:
            combos = [self.combos[int(rng.integers(len(self.combos)))]]
        objects = tuple(self._jitter(rng, c) for c in combos)
        scene = Scene(objects, self._background(rng, [c[0] for c in combos]))
        return scene, self._caption(rng, scene)

    def sample(self, i: int) -> tuple[np.ndarray, str, Scene]:
        """(image uint8 HxWx3, caption, scene) for index ``i``."""
        scene, caption = self.sample_scene(i)
        return render_scene(scene, self.image_size, self.antialias), caption, scene

    def render(self, scene: Scene) -> np.ndarray:
        return render_scene(scene, self.image_size, self.antialias)

    def eval_prompts(self, n: int, two_shape_prob: float = 0.0) -> list[str]:
        """``n`` fixed evaluation prompts of this world's split (see module ``eval_prompts``)."""
        return [c for _, c in self.eval_scenes(n, two_shape_prob)]

    def eval_scenes(self, n: int, two_shape_prob: float = 0.0) -> list[tuple[Scene, str]]:
        """``n`` fixed (scene, prompt) pairs: single objects cycle through every combination of the
        split in a fixed order (so n = len(split combos) covers each once); a fraction
        ``two_shape_prob`` are pairs. Deterministic in (seed, split, n)."""
        if int(n) < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        order = np.random.default_rng([self.seed, SPLITS.index(self.split), 7919]).permutation(len(self.combos))
        out = []
        single = 0
        for k in range(int(n)):
            rng = np.random.default_rng([self.seed, SPLITS.index(self.split), 7919, k])
            if rng.random() < two_shape_prob:
                places = PAIR_PLACES[int(rng.integers(len(PAIR_PLACES)))]
                combos = [self._by_place[p][int(rng.integers(len(self._by_place[p])))] for p in places]
            else:
                combos = [self.combos[order[single % len(self.combos)]]]
                single += 1
            scene = Scene(tuple(self._jitter(rng, c) for c in combos),
                          self._background(rng, [c[0] for c in combos]))
            out.append((scene, self._caption(rng, scene)))
        return out


def render_instances(combos: Sequence[tuple[str, str, str]], seed: int = 0, image_size: int = 64,
                     antialias: bool = False, background: str = DEFAULT_BACKGROUND) -> list[tuple[np.ndarray, Scene]]:
    """One image per (colour, shape, place) in ``combos`` (any of ``RENDER_SHAPES``, e.g. the new
    十字形), with the world's size / offset / rotation jitter drawn from ``(seed, k)``: the instance
    images of a concept to teach (DreamBooth / LoRA). Returns [(image uint8 HxWx3, scene)]."""
    world = ShapesWorld(image_size=image_size, seed=seed, antialias=antialias)
    out = []
    for k, combo in enumerate(combos):
        rng = np.random.default_rng([int(seed), 104729, k])
        scene = Scene((world._jitter(rng, tuple(combo)),), background)
        out.append((world.render(scene), scene))
    return out


def eval_prompts(split: str = "heldout", n: int = 16, seed: int = 0, two_shape_prob: float = 0.0) -> list[str]:
    """Fixed evaluation prompts: ``eval_prompts("heldout", 16)`` names each held-out combination
    once; ``eval_prompts("train", 144)`` each training combination once."""
    return ShapesWorld(seed=seed, split=split).eval_prompts(n, two_shape_prob)


# --------------------------------------------------------------------------- parsing
class ParsedPrompt(NamedTuple):
    """objects: ((colour|None, shape, place|None), ...); background: name or None."""

    objects: tuple[tuple[str | None, str, str | None], ...]
    background: str | None


def _lexicon(new_shapes: bool = True) -> dict[str, tuple[str, str]]:
    """Word -> (kind, value). ``new_shapes=False``: without the ``NEW_SHAPES`` words (the
    vocabulary's source: the built-in model's vocabulary must stay what it was trained with)."""
    lex: dict[str, tuple[str, str]] = {}
    for w in FILLER_WORDS:
        lex[w] = ("filler", w)
    for c in COLOURS:
        lex[c] = ("colour", c)
    for b in BACKGROUNDS:
        lex.setdefault(b, ("colour", b))
    for w, s in SHAPE_WORDS.items():
        lex[w] = ("shape", s)
    if new_shapes:
        for w, s in NEW_SHAPE_WORDS.items():
            lex[w] = ("shape", s)
    for w, p in PLACE_WORDS.items():
        lex[w] = ("place", p)
    lex["背景"] = ("background", "背景")
    return lex


_LEXICON = _lexicon()
_MAX_WORD = max(len(w) for w in _LEXICON)


def _lex(text: str):
    """Longest-match scan -> (tokens [(kind, value)], unknown characters)."""
    tokens, unknown = [], []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in _SEPARATORS or ch.isspace():
            tokens.append(("sep", ch))
            i += 1
            continue
        for L in range(min(_MAX_WORD, n - i), 0, -1):
            hit = _LEXICON.get(text[i:i + L])
            if hit is not None:
                tokens.append(hit)
                i += L
                break
        else:
            unknown.append(ch)
            i += 1
    return tokens, unknown


def parse_prompt(text: str) -> ParsedPrompt:
    """Prompt -> ParsedPrompt(objects, background). Raises ``PromptNotInWorldError`` when the
    text does not belong to the shapes world (unknown words, no shape, a colour that belongs
    to no shape, a background the world never draws)."""
    if not isinstance(text, str):
        raise TypeError(f"expected a str prompt, got {type(text).__name__}")
    tokens, unknown = _lex(text)
    if unknown:
        uniq = "".join(dict.fromkeys(unknown))
        raise PromptNotInWorldError(
            f"prompt {text!r} uses words outside the shapes world ({uniq!r}); the world knows colours "
            f"{''.join(COLOURS)}, shapes {'/'.join(SHAPES)}, places {'/'.join(PLACES)}", unknown)

    # Background phrases: "<colour>色(的)背景" and "背景是/为<colour>色".
    background = None
    used = set()
    for k, (kind, _val) in enumerate(tokens):
        if kind != "background":
            continue
        j = k - 1
        while j >= 0 and tokens[j] in (("filler", "色"), ("filler", "的"), ("filler", "纯")):
            j -= 1
        found = None
        if j >= 0 and tokens[j][0] == "colour" and j not in used:
            found = j
        else:
            j = k + 1
            while j < len(tokens) and tokens[j] in (("filler", "是"), ("filler", "为"), ("filler", "颜色")):
                j += 1
            if j > k + 1 and j < len(tokens) and tokens[j][0] == "colour":
                found = j
        if found is not None:
            name = tokens[found][1]
            if name not in BACKGROUNDS:
                raise PromptNotInWorldError(
                    f"prompt {text!r}: the shapes world has no {name}色 background (it has "
                    f"{''.join(BACKGROUNDS)})", [name])
            if background is not None and background != name:
                raise PromptNotInWorldError(f"prompt {text!r} names two backgrounds ({background}, {name})")
            background = name
            used.add(found)

    # Clauses of objects and places.
    objects: list[list] = []  # [colour, shape, place]
    clauses: list[dict] = [{"objects": [], "places": [], "respectively": False}]
    pending_colours: list[str] = []
    for k, (kind, val) in enumerate(tokens):
        cl = clauses[-1]
        if kind == "sep":
            if pending_colours and objects and objects[-1][0] is None:  # "一个圆形，红色的"
                objects[-1][0] = pending_colours.pop(0)
            if pending_colours:
                raise PromptNotInWorldError(f"prompt {text!r}: colour {pending_colours[0]} belongs to no shape")
            clauses.append({"objects": [], "places": [], "respectively": False})
        elif kind == "colour" and k not in used:
            if val not in COLOURS:
                raise PromptNotInWorldError(f"prompt {text!r}: shapes cannot be {val}色 (colours: {''.join(COLOURS)})",
                                            [val])
            pending_colours.append(val)
        elif kind == "shape":
            if len(pending_colours) > 1:
                raise PromptNotInWorldError(f"prompt {text!r}: several colours ({''.join(pending_colours)}) for one shape")
            obj = [pending_colours.pop() if pending_colours else None, val, None]
            objects.append(obj)
            cl["objects"].append(obj)
        elif kind == "place":
            cl["places"].append(val)
        elif (kind, val) == ("filler", "分别"):
            cl["respectively"] = True
    if pending_colours and objects and objects[-1][0] is None:
        objects[-1][0] = pending_colours.pop(0)
    if pending_colours:
        raise PromptNotInWorldError(f"prompt {text!r}: colour {pending_colours[0]} belongs to no shape")
    if not objects:
        raise PromptNotInWorldError(f"prompt {text!r} names no shape ({'/'.join(SHAPES)}): not a shapes-world prompt")

    pending_places: list[str] = []
    for cl in clauses:
        objs, places = cl["objects"], list(cl["places"])
        if objs and pending_places:
            for o in objs:
                if o[2] is None and pending_places:
                    o[2] = pending_places.pop(0)
        if not places:
            continue
        if not objs:  # "…，在右边" / "分别在左边和右边": earlier objects without a place, in order
            for o in objects:
                if o[2] is None and places:
                    o[2] = places.pop(0)
            pending_places.extend(places)
        elif len(places) == 1 and len(objs) > 1 and not cl["respectively"]:
            for o in objs:
                o[2] = places[0]
        else:
            for o, p in zip(objs, places):
                o[2] = p
            pending_places.extend(places[len(objs):])
    return ParsedPrompt(tuple((o[0], o[1], o[2]) for o in objects), background)


def is_world_prompt(text: str) -> bool:
    """True when ``text`` is a shapes-world prompt the built-in model was trained on (a prompt
    naming one of ``NEW_SHAPES`` parses, for scoring, but is not one)."""
    try:
        parsed = parse_prompt(text)
    except PromptNotInWorldError:
        return False
    return not any(o[1] in NEW_SHAPES for o in parsed.objects)


# --------------------------------------------------------------------------- vocab
_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def vocab_tokens() -> list[str]:
    """The shapes-world WordPiece vocabulary: specials, then every character of the world's
    words, templates and punctuation (sorted), then ASCII digits/letters and their ``##`` forms."""
    chars = set()
    words = list(_lexicon(new_shapes=False)) + list(SINGLE_TEMPLATES) + list(PAIR_TEMPLATES)
    for w in words:
        chars.update(re.sub(r"\{[a-z0-9]+\}", "", w))
    chars.update(_PUNCT_VOCAB)
    chars -= set(" \t\n")
    ascii_ = "0123456789abcdefghijklmnopqrstuvwxyz"
    chars -= set(ascii_)
    return list(_SPECIALS) + sorted(chars) + list(ascii_) + ["##" + a for a in ascii_]


def build_vocab(path) -> Path:
    """Write the vocabulary (one token per line, [PAD] = id 0) for ``WordPieceTokenizer``."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(vocab_tokens()) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- export
_PNG_NAME = re.compile(r"^\d+\.png$")


def export_csv(out_dir, n: int, split: str = "train", seed: int = 0, image_size: int = 64,
               overwrite: bool = False, progress: bool = True, **world_kwargs) -> Path:
    """Write ``out_dir/images/00000.png …`` and ``out_dir/data.csv`` (columns ``dir,text``, UTF-8),
    the image-text format Wukong fine-tuning reads, plus ``out_dir/world.json`` (settings). Each PNG
    also carries its caption as ``prompt`` metadata (``read_png_parameters``). Horizontal-flip
    augmentation must stay off for this data (it would swap 左边/右边). Refuses to write into an existing export unless ``overwrite``. Returns the CSV path."""
    from ..utils.images import OutputPathError, check_output_dir, save_png

    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n (number of images) must be a positive integer, got {n!r}")
    world = ShapesWorld(image_size=image_size, seed=seed, split=split, **world_kwargs)
    out = Path(out_dir).expanduser()
    csv_path, img_dir = out / "data.csv", out / "images"
    old_pngs = sorted(f for f in img_dir.iterdir() if _PNG_NAME.match(f.name)) if img_dir.is_dir() else []
    if (csv_path.exists() or old_pngs) and not overwrite:
        raise OutputPathError(f"{out} already holds a shapes export (data.csv / images/); pass overwrite=True "
                              f"(--overwrite) to replace it, or choose another folder")
    check_output_dir(out)
    img_dir.mkdir(exist_ok=True)
    for f in old_pngs:
        f.unlink()
    width = max(5, len(str(int(n) - 1)))
    rows = []
    it = range(int(n))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"shapes {split}", unit="img")
    for i in it:
        image, caption, _ = world.sample(i)
        rel = f"images/{i:0{width}d}.png"
        save_png(out / rel, image, {"prompt": caption, "source": "shapes-world", "split": split, "seed": seed,
                                    "index": i})
        rows.append((rel, caption))
    tmp = csv_path.with_name(".data.csv.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["dir", "text"])
        writer.writerows(rows)
    os.replace(tmp, csv_path)
    meta = dict(world.settings(), n=int(n), heldout_combos=[list(c) for c in HELDOUT_COMBOS])
    (out / "world.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8")
    return csv_path
