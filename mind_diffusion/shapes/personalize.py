"""Teaching the built-in shapes model a shape it has never seen (十字形, a cross): the data for
DreamBooth / LoRA and the evaluation of what was learnt.

    write_instances("data/cross_instances", token="sks")      # 5 PNGs + <name>.txt captions
    write_class_prompts("data/cross_class_prompts.txt")        # prior-preservation prompts
    rows = evaluate_new_shape(generate, token="sks")           # generate(prompts, seed) -> images

The five instance images show the cross in three colours (红 蓝 黄) at three places (中间 左边
上面); their captions name colour and place as the world's captions do, with the identifier token
where the shape word would be ("一个红色的sks在中间"). The evaluation prompts combine the token
with the colours (橙 绿 紫 白 黑) and places (右边 下面) the cross was never shown in, and the
scorer (which reads crosses, validated on renders) checks shape, colour and place of each image.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .world import BACKGROUNDS, ParsedPrompt, ShapesWorld, render_instances

__all__ = ["EVAL_COLOURS", "EVAL_PLACES", "INSTANCE_COMBOS", "NEW_SHAPE", "eval_cases", "evaluate_new_shape",
           "write_class_images", "write_class_prompts", "write_instances"]

NEW_SHAPE = "十字形"
INSTANCE_COMBOS: tuple[tuple[str, str], ...] = (("红", "中间"), ("蓝", "左边"), ("黄", "上面"), ("红", "左边"),
                                               ("蓝", "上面"))
EVAL_COLOURS: tuple[str, ...] = ("橙", "绿", "紫", "白", "黑")
EVAL_PLACES: tuple[str, ...] = ("右边", "下面")
# caption forms of the instance images (the world's single-shape templates without a background)
_TEMPLATES = ("一个{c}色的{t}在{p}", "{p}有一个{c}色的{t}", "画面{p}是一个{c}色的{t}", "{c}色的{t}位于{p}")


def instance_caption(colour: str, place: str, token: str, k: int = 0) -> str:
    return _TEMPLATES[k % len(_TEMPLATES)].format(c=colour, p=place, t=token)


def write_instances(folder, token: str = "sks", seed: int = 0, image_size: int = 64) -> list[Path]:
    """The five instance images (``cross_<k>.png``, caption in the PNG metadata and in
    ``cross_<k>.txt``, the cross's pixels in ``cross_<k>.mask.png``). Refuses a folder that already
    holds images."""
    from ..utils.images import OutputPathError, save_png

    folder = Path(folder).expanduser()
    if folder.is_dir() and any(p.suffix.lower() == ".png" for p in folder.iterdir()):
        raise OutputPathError(f"{folder} already holds images; choose an empty folder")
    folder.mkdir(parents=True, exist_ok=True)
    combos = [(c, NEW_SHAPE, p) for c, p in INSTANCE_COMBOS]
    paths = []
    for k, (image, scene) in enumerate(render_instances(combos, seed=seed, image_size=image_size)):
        colour, _, place = scene.objects[0].combo
        caption = instance_caption(colour, place, token, k)
        path = save_png(folder / f"cross_{k}.png", image, {"prompt": caption, "source": "shapes-world new shape",
                                                            "shape": NEW_SHAPE, "seed": seed})
        (folder / f"cross_{k}.txt").write_text(caption + "\n", encoding="utf-8")
        subject = np.any(image != np.asarray(BACKGROUNDS[scene.background], image.dtype), axis=-1)
        save_png(folder / f"cross_{k}.mask.png", (subject * 255).astype(np.uint8),
                 {"source": "subject mask of " + path.name})  # dreambooth.subject_weight reads it
        paths.append(path)
    return paths


def write_class_prompts(path, n: int = 128, seed: int = 0) -> Path:
    """``n`` training captions of the shapes world, one per line: the prompts prior-preservation
    class images are generated from (the model's own pictures of the world it knows)."""
    world = ShapesWorld(seed=seed, split="train")
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(world.sample_scene(i)[1] for i in range(int(n))) + "\n", encoding="utf-8")
    return path


def write_class_images(folder, n: int = 200, seed: int = 0) -> Path:
    """``n`` images of the shapes world's training split with their captions (``<name>.txt``): given
    class images for prior preservation, as the original's ``--reg_data_path`` holds (the model's
    own training distribution; without them DreamBooth generates class images with the model)."""
    from ..utils.images import OutputPathError, save_png

    folder = Path(folder).expanduser()
    if folder.is_dir() and any(folder.iterdir()):
        raise OutputPathError(f"{folder} is not empty; choose an empty folder")
    folder.mkdir(parents=True, exist_ok=True)
    world = ShapesWorld(seed=seed, split="train")
    for i in range(int(n)):
        image, caption, _ = world.sample(i)
        save_png(folder / f"world_{i:05d}.png", image, {"prompt": caption, "source": "shapes-world", "seed": seed,
                                                        "index": i})
        (folder / f"world_{i:05d}.txt").write_text(caption + "\n", encoding="utf-8")
    return folder


def eval_cases(token: str = "sks", seen: bool = False) -> list[tuple[str, ParsedPrompt]]:
    """(prompt for the model, what the scorer expects) for every unseen colour x unseen place, or
    with ``seen`` for the instance images' own colour x place pairs (their captions): how well the
    instances were learned, apart from how far they generalise."""
    if seen:
        return [(instance_caption(c, p, token, k), ParsedPrompt(((c, NEW_SHAPE, p),), None))
                for k, (c, p) in enumerate(INSTANCE_COMBOS)]
    return [(instance_caption(c, p, token), ParsedPrompt(((c, NEW_SHAPE, p),), None))
            for c in EVAL_COLOURS for p in EVAL_PLACES]


def evaluate_new_shape(generate, token: str = "sks", per_prompt: int = 4, seed: int = 2000,
                       batch: int = 20, seen: bool = False) -> tuple[list[dict], list]:
    """Generate ``per_prompt`` images of every ``eval_cases`` prompt (image n: seed + n;
    ``generate(prompts, seed) -> images``) and score them. Returns (rows, images)."""
    from .scorer import score

    cases = [c for c in eval_cases(token, seen) for _ in range(int(per_prompt))]
    rows, images = [], []
    for s in range(0, len(cases), int(batch)):
        chunk = cases[s:s + int(batch)]
        imgs = generate([p for p, _ in chunk], seed + s)
        for k, ((prompt, parsed), img) in enumerate(zip(chunk, imgs)):
            r = score(img, parsed)
            rows.append({"prompt": prompt, "seed": seed + s + k, "colour": bool(r["colour"]),
                         "shape": bool(r["shape"]), "position": bool(r["position"]), "all": bool(r["all"]),
                         "detected": r["details"][0]["detected"]})
            images.append(img)
    return rows, images
