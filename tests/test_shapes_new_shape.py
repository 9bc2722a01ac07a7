"""The new shape (十字形, a cross) the shapes world renders but never draws: the world and the
built-in model's vocabulary are unchanged, and the scorer reads the cross, its colour and its place
on rendered ground truth, while reading the four old shapes exactly as before."""
from pathlib import Path

import numpy as np
import pytest

from mind_diffusion.shapes import scorer as S
from mind_diffusion.shapes import world as W

ROOT = Path(__file__).resolve().parents[1]


def test_new_shape_is_never_drawn_and_leaves_the_vocabulary_alone():
    assert W.NEW_SHAPES == ("十字形",) and set(W.RENDER_SHAPES) == set(W.SHAPES) | {"十字形"}
    assert all(c[1] in W.SHAPES for c in W.ALL_COMBOS)
    for split in W.SPLITS:
        world = W.ShapesWorld(seed=5, split=split, two_shape_prob=0.5)
        assert all("十" not in world.sample_scene(i)[1] for i in range(400))
    # the shipped model's vocabulary is still exactly what build_vocab writes
    shipped = (ROOT / "models" / "shapes_zh" / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert W.vocab_tokens() == shipped and "十" not in shipped
    assert W.parse_prompt("一个蓝色的十字形在右边").objects == (("蓝", "十字形", "右边"),)
    assert W.parse_prompt("十字在上方，背景是黑色") == W.ParsedPrompt(((None, "十字形", "上面"),), "黑")
    assert not W.is_world_prompt("一个蓝色的十字形在右边")  # parses, but the model never saw it
    assert W.is_world_prompt("一个蓝色的星形在右边")
    with pytest.raises(ValueError, match="unknown shape"):
        W.ShapeObject("红", "心形", "左边")


def _cross_scenes(seed=3):
    """Every colour x place, alone (both renderings) and beside an old shape at the opposite place."""
    combos = [(c, "十字形", p) for c in W.COLOURS for p in W.PLACES]
    items = []
    for aa in (False, True):
        items += [(im, W.make_caption(sc, 0)) for im, sc in W.render_instances(combos * 3, seed, antialias=aa)]
    rng = np.random.default_rng(seed)
    world = W.ShapesWorld(seed=seed)
    for k in range(200):
        p1, p2 = W.PAIR_PLACES[k % 2][::(1 if k % 4 < 2 else -1)]
        c1, c2 = rng.choice(list(W.COLOURS), 2, replace=False)
        other = W.SHAPES[k % len(W.SHAPES)]
        objs = (world._jitter(rng, (str(c1), "十字形", p1)), world._jitter(rng, (str(c2), other, p2)))
        scene = W.Scene(objs)
        items.append((W.render_scene(scene, antialias=bool(k % 2)), W.make_caption(scene, k % len(W.PAIR_TEMPLATES))))
    return items


def test_scorer_reads_the_cross_on_rendered_ground_truth():
    items = _cross_scenes()
    summary = S.score_many([im for im, _ in items], [p for _, p in items])
    print("scorer on rendered crosses:", {k: round(summary[k], 4) for k in ("colour", "shape", "position", "n")})
    for k in ("colour", "shape", "position", "count"):
        assert summary[k] >= 0.99, (k, summary)
    # a cross is not read as any old shape, nor an old shape as a cross (wrong prompts fail)
    image, scene = W.render_instances([("黄", "十字形", "左边")], seed=1)[0]
    for shape in W.SHAPES:
        assert not S.score(image, f"一个黄色的{shape}在左边")["shape"]
    # noisy renders (sigma 8), as the old shapes' noise test
    rng = np.random.default_rng(2)
    noisy = [np.clip(im.astype(np.float32) + rng.normal(0, 8, im.shape), 0, 255).astype(np.uint8)
             for im, _ in items[:240]]
    summary = S.score_many(noisy, [p for _, p in items[:240]])
    print("scorer on noisy crosses:", {k: round(summary[k], 4) for k in ("colour", "shape", "position")})
    assert min(summary[k] for k in ("colour", "shape", "position")) >= 0.95


def test_old_shapes_read_as_before():
    """The only change for the old shapes is a new answer (十字形): no old shape may get it, so
    every old-shape reading and the old accuracy are unchanged."""
    for split in W.SPLITS:
        for aa in (False, True):
            world = W.ShapesWorld(seed=11, split=split, two_shape_prob=0.4, antialias=aa)
            for i in range(160):
                image, _, scene = world.sample(i)
                dets = S.analyse(image)
                assert all(d.shape != "十字形" for d in dets), (split, aa, i, scene)
    combos = [(c, s, p) for c in W.COLOURS for s in W.SHAPES for p in W.PLACES]
    for im, sc in W.render_instances(combos, seed=8, antialias=True):
        assert [d.shape for d in S.analyse(im)] == [sc.objects[0].shape]
