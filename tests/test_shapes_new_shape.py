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
    # small jagged triangles can show four pixel-deep notches: the four-notch cross rule must leave them
    rng = np.random.default_rng(77)
    colours, places = list(W.COLOURS), list(W.PLACES)
    tri = [(colours[rng.integers(len(colours))], "三角形", places[rng.integers(len(places))]) for _ in range(600)]
    for im, sc in W.render_instances(tri[300:450], seed=77):   # the draws that held two such triangles
        assert [d.shape for d in S.analyse(im)] == ["三角形"]


def test_scorer_reads_decoded_shapes_as_what_was_rendered():
    """What a latent model can draw is what its VAE decodes: rendered shapes sent through the built-in
    shapes model's VAE (posterior mean, decode) round their corners. The scorer reads these decoded
    renders as what was rendered: crosses as crosses (the four-notch rule ``CROSS_NOTCH`` and the
    four-lobe rule ``CROSS_H4`` catch the rounded ones; without them a tenth read as squares), stars as
    stars (the five-fold rule takes back the blunted ones the solidity rule read as crosses), and
    circles, squares and triangles as themselves, with or without the cross rules."""
    import os

    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
    from mind_diffusion.ldm.pipeline import LDMPipeline

    root = Path(__file__).resolve().parents[1] / "models" / "shapes_zh"
    if not (root / "model.ckpt").is_file():
        pytest.skip("models/shapes_zh/model.ckpt is not in this checkout")
    pipe = LDMPipeline.from_pretrained(root / "config.yaml", root / "model.ckpt")
    rng = np.random.default_rng(5)
    colours = [c for c in W.COLOURS if c != "灰"]   # the default background is grey
    places = list(W.PLACES)

    def decoded(shape, n=24):
        combos = [(colours[rng.integers(len(colours))], shape, places[rng.integers(len(places))]) for _ in range(n)]
        out = []
        for aa in (False, True):
            arr = np.stack([im for im, _ in W.render_instances(combos, seed=21 + aa, antialias=aa)])
            x = pipe.to_uint8(pipe.decode(pipe.encode_images(arr, encode="mean", seed=0)))
            out += list(x.transpose(0, 2, 3, 1) if x.shape[1] == 3 else x)
        return out

    def readings(images, cross_rules=True):
        old = S.CROSS_NOTCH, S.CROSS_H4
        if not cross_rules:
            S.CROSS_NOTCH = S.CROSS_H4 = np.inf
        try:
            return [[d.shape for d in S.analyse(im)][:1] for im in images]
        finally:
            S.CROSS_NOTCH, S.CROSS_H4 = old

    crosses = decoded("十字形", 32)
    with_rules = np.mean([r == ["十字形"] for r in readings(crosses)])
    without = np.mean([r == ["十字形"] for r in readings(crosses, cross_rules=False)])
    print(f"decoded crosses read as crosses: {with_rules:.1%} (without the notch and lobe rules {without:.1%})")
    assert with_rules >= 0.95 and with_rules > without
    for shape in W.SHAPES:
        images = decoded(shape, 12)
        now = readings(images)
        assert all(r == [shape] for r in now), (shape, now)
        if shape != "星形":
            assert readings(images, cross_rules=False) == now, shape


def test_scorer_arm_profile_counts_arms():
    """The radius-profile harmonics (``_radial_harmonics``) on closed-form outlines: a regular k-gon or
    k-pointed star stands out in harmonic k among h3, h4, h5, a circle in none, and the numbers
    do not depend on the outline's size or rotation."""
    def polygon(radii, n_pts, rot):
        ang = rot + np.arange(n_pts) * 2 * np.pi / n_pts
        r = np.resize(np.asarray(radii, float), n_pts)
        return np.stack([200 + r * np.cos(ang), 200 + r * np.sin(ang)], 1).round().astype(np.int32)[:, None, :]

    circle = S._radial_harmonics(polygon([100.0], 400, 0.0))
    assert max(circle.values()) < 0.005
    for k in (3, 4, 5):
        for scale, rot in ((1.0, 0.0), (0.5, 0.3)):
            star = S._radial_harmonics(polygon([100.0 * scale, 45.0 * scale], 2 * k, rot))
            others = [star[f"h{j}"] for j in (3, 4, 5) if j != k]
            assert star[f"h{k}"] > 0.1 and max(others) < 0.02, (k, star)
    sq1 = S._radial_harmonics(polygon([100.0], 4, 0.0))
    sq2 = S._radial_harmonics(polygon([50.0], 4, 0.7))
    assert abs(sq1["h4"] - sq2["h4"]) < 0.01 and sq1["h4"] > 0.05


def test_new_shape_evaluation_on_rendered_answers():
    """``evaluate_new_shape`` (unseen colour x place, and with ``seen`` the instances' own pairs): a
    generator that renders what each prompt asks scores 100%; one that draws a square there scores
    0% shape and keeps colour and place."""
    from mind_diffusion.shapes.personalize import EVAL_COLOURS, INSTANCE_COMBOS, eval_cases, evaluate_new_shape

    for seen in (False, True):
        cases = eval_cases("sks", seen)
        pairs = {(c, p) for _, parsed in cases for c, _, p in parsed.objects}
        assert pairs == (set(INSTANCE_COMBOS) if seen else {(c, p) for c in EVAL_COLOURS for p in ("右边", "下面")})
        assert all("sks" in prompt and "十字形" not in prompt for prompt, _ in cases)
        expected = {prompt: parsed for prompt, parsed in cases}

        def draw(shape):
            def generate(prompts, seed):
                combos = [(expected[p].objects[0][0], shape or "十字形", expected[p].objects[0][2]) for p in prompts]
                return [im for im, _ in W.render_instances(combos, seed)]
            return generate

        rows, images = evaluate_new_shape(draw(None), "sks", per_prompt=2, seed=5, seen=seen)
        assert len(rows) == len(images) == 2 * len(cases)
        assert all(r["all"] for r in rows)
        rows, _ = evaluate_new_shape(draw("正方形"), "sks", per_prompt=1, seed=5, seen=seen)
        assert not any(r["shape"] for r in rows) and all(r["colour"] and r["position"] for r in rows)


def test_shipped_lora_teaches_the_cross_and_fits_its_card():
    """models/shapes_zh_lora/lora.ckpt: at most 1 MB, made for models/shapes_zh (its sha256 inside), carries
    the token's embedding rows; on two of its card's unseen prompts (purple and black, 右边, seeds 2016-2019 and
    2032-2035 as in the card's evaluation) it draws the cross in at least 6 of 8 images where the base draws
    at most 1, colour and place kept."""
    from mind_diffusion.checkpoint.io import file_sha256
    from mind_diffusion.ldm.pipeline import LDMPipeline
    from mind_diffusion.runtime import init_runtime

    lora, base = ROOT / "models" / "shapes_zh_lora" / "lora.ckpt", ROOT / "models" / "shapes_zh"
    assert lora.stat().st_size <= 1_000_000
    init_runtime("CPU", "graph", seed=0)
    pipe = LDMPipeline.from_pretrained(base / "config.yaml", base / "model.ckpt")
    cases = [("一个紫色的sks在右边", 2016), ("一个黑色的sks在右边", 2032)]

    def crosses():
        hits = []
        for prompt, seed in cases:
            for img in pipe([prompt] * 4, seed=seed, progress=False).images:
                r = S.score(img, prompt.replace("sks", "十字形"))
                hits.append((r["shape"], r["colour"] and r["position"]))
        return sum(s for s, _ in hits), sum(k for _, k in hits)

    base_cross, base_kept = crosses()
    entry = pipe.load_lora(lora)
    assert not entry.notes and entry.parsed.token_rows[2] == "sks"   # made for this base; the token's rows
    assert entry.parsed.meta["lora"]["base_sha256"] == file_sha256(base / "model.ckpt", 64)
    cross, kept = crosses()
    assert cross >= 6 and kept == 8 and base_cross <= 1, (cross, kept, base_cross, base_kept)


def test_eval_script_takes_the_sampling_settings_and_refuses_bad_ones(tmp_path, capsys):
    """`shapes_personalize.py eval --sampler/--steps/--scale/--negative_prompt`: the images are the pipeline's at
    those settings (the table's settings line says so); a bad value is one line, exit 2, and no output folder."""
    import csv

    from cli_helpers import captured_error
    from scripts.shapes_personalize import main

    lora = ROOT / "models" / "shapes_zh_lora" / "lora.ckpt"
    common = ["eval", "--lora", str(lora), "--per_prompt", "1", "--device_target", "CPU"]
    for flag, value, needle in (("--steps", "0", "--steps must be >= 1"), ("--scale", "-1", "--scale must be"),
                                ("--sampler", "euler", "unknown sampler")):
        out = tmp_path / f"bad{flag}"
        rc = main([*common, flag, value, "--out", str(out)])
        captured_error(capsys, rc, needle)
        assert not out.exists()
    out = tmp_path / "ok"
    assert main([*common, "--sampler", "ddim", "--steps", "3", "--scale", "2.5", "--negative_prompt", "星形",
                 "--out", str(out)]) == 0
    md = (out / "new_shape.md").read_text(encoding="utf-8")
    assert all(s in md for s in ('"sampler": "ddim"', '"steps": 3', '"scale": 2.5', '"negative_prompt": "星形"')), md
    rows = list(csv.DictReader(open(out / "new_shape.csv", encoding="utf-8")))
    assert len(rows) == 10
    # the first image is the pipeline's own at those settings: the scorer reads it the same way
    from mind_diffusion.ldm.pipeline import LDMPipeline

    base = ROOT / "models" / "shapes_zh"
    pipe = LDMPipeline.from_pretrained(base / "config.yaml", base / "model.ckpt")
    pipe.load_lora(lora)
    img = pipe(rows[0]["prompt"], seed=int(rows[0]["seed"]), sampler="ddim", num_inference_steps=3,
               guidance_scale=2.5, negative_prompt="星形", progress=False).images[0]
    detected = S.score(img, rows[0]["prompt"].replace("sks", "十字形"))["details"][0]["detected"]
    assert ("" if detected is None else str(detected)) == rows[0]["detected"]
