"""The eps-skill-by-scale and mean-colour probe (mind_diffusion/glide/diagnostics.py,
scripts/probe_glide_mean_colour.py): closed forms for errors of known structure and for an oracle
eps predictor, and the script on a tiny training checkpoint against the same probe run by hand on
the weights it should have taken (EMA or raw)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import captured_error
from glide_tiny import TINY_TRAIN_BASE, TINY_TRAIN_SR, randomize, shapes_glide_data, train_shapes_sp
from glide_tiny import tiny_glide_train_config as tiny_cfg


def test_scale_errors_closed_forms():
    from mind_diffusion.glide.diagnostics import scale_errors

    const = np.full((2, 3, 8, 8), 0.5)
    assert scale_errors(const, [2, 8]) == pytest.approx({1: 0.25, 2: 4 * 0.25, 8: 64 * 0.25}, rel=1e-12)
    checker = np.indices((8, 8)).sum(0) % 2 * 2.0 - 1.0  # +-1, every 2x2 block sums to 0
    got = scale_errors(np.broadcast_to(checker, (1, 3, 8, 8)), [2, 4])
    assert got[1] == pytest.approx(1.0) and got[2] == pytest.approx(0.0, abs=1e-15) and got[4] == pytest.approx(0.0, abs=1e-15)
    noise = np.random.default_rng(0).standard_normal((64, 3, 32, 32))  # no skill: ~1 at every scale
    for k, v in scale_errors(noise, [4, 32]).items():
        assert abs(v - 1.0) < (0.05 if k < 32 else 0.3), (k, v)
    with pytest.raises(ValueError, match="does not divide"):
        scale_errors(const, [3])


def test_mean_colour_slope_closed_forms():
    from mind_diffusion.glide.diagnostics import mean_colour_slope

    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    gains = np.array([1.0, 0.5, 0.0], np.float32)[None, :, None, None]
    assert mean_colour_slope(lambda v: v * gains, x) == pytest.approx([1.0, 0.5, 0.0], abs=1e-6)
    blind = lambda v: v - v.mean(axis=(2, 3), keepdims=True)  # noqa: E731  follows everything but the mean colour
    assert mean_colour_slope(blind, x) == pytest.approx([0, 0, 0], abs=1e-6)
    six = lambda v: np.concatenate([0.25 * v, 7 * v], 1)  # noqa: E731  only the eps channels count
    assert mean_colour_slope(six, x, delta=0.1) == pytest.approx([0.25] * 3, abs=1e-6)


def test_probe_rows_of_an_oracle():
    """An oracle that knows x0 predicts eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar): no error at
    any scale and a slope of exactly 1 / sqrt(1 - abar_t)."""
    from mind_diffusion.glide import diffusion as gd
    from mind_diffusion.glide.diagnostics import probe_rows

    abar = np.asarray(gd.base_diffusion().alphas_cumprod, np.float64)
    x0 = np.random.default_rng(2).uniform(-1, 1, (3, 3, 16, 16))
    oracle = lambda x, t: (x.astype(np.float64) - np.sqrt(abar[t]) * x0) / np.sqrt(1 - abar[t])  # noqa: E731
    rows = probe_rows(oracle, x0, abar, [0, 500, 999], [4, 16])
    for r in rows:
        assert max(r["pix"], r["pool4"], r["pool16"]) < 1e-9
        want = 1 / np.sqrt(1 - abar[r["t"]])
        assert [r["slope_R"], r["slope_G"], r["slope_B"]] == pytest.approx([want] * 3, rel=1e-5)
    with pytest.raises(ValueError, match="outside"):
        probe_rows(oracle, x0, abar, [1000], [4])


def test_swap_caption_moves_each_word_kind_alone():
    from mind_diffusion.glide.diagnostics import swap_caption

    cap = "黑色背景上，左侧有一个红色的圆形，右边有一个蓝色的星形"
    assert swap_caption(cap, "true") == cap and swap_caption(cap, "empty") == ""
    assert swap_caption(cap, "place") == "黑色背景上，右边有一个红色的圆形，左边有一个蓝色的星形"
    assert swap_caption(cap, "colour") == "黑色背景上，左侧有一个绿色的圆形，右边有一个黑色的星形"  # background kept
    assert swap_caption(cap, "shape") == "黑色背景上，左侧有一个红色的正方形，右边有一个蓝色的圆形"
    assert swap_caption("画面中央是一个黄色的三角形", "place") == "画面左边是一个黄色的三角形"
    assert swap_caption("上方有一个紫色的正方形", "place") == "下面有一个紫色的正方形"
    with pytest.raises(ValueError, match="what must be one of"):
        swap_caption(cap, "size")


def test_caption_probe_of_an_oracle_that_reads_only_true_captions():
    """An eps predictor that knows x0 for the true captions and predicts the plain background for any
    other: the true row is 0 and every other row is the objects' mean squared contrast (closed form),
    at every t, because the error is read in x0 units."""
    from mind_diffusion.glide.diagnostics import caption_probe_rows, foreground

    x0 = np.full((2, 3, 8, 8), -0.6)
    x0[0, 0, 2:5, 1:4] = 0.9                    # a red-ish square on image 0 (contrast 1.5, 9 pixels)
    x0[1, :, 5:7, 5:7] = 0.2                    # a grey square on image 1 (contrast 0.8 in 3 channels, 4 pixels)
    fg = foreground(x0)
    assert fg.shape == (2, 1, 8, 8) and fg[0].sum() == 9 and fg[1].sum() == 4
    captions = ["一个红色的正方形在左边", "一个白色的正方形在右边"]
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))

    def eps_fn(x, t, caps):
        guess = np.where(np.array([c == k for c, k in zip(caps, captions)])[:, None, None, None], x0, -0.6)
        return (x - np.sqrt(abar[t]) * guess) / np.sqrt(1 - abar[t])

    rows = caption_probe_rows(eps_fn, x0, captions, abar, [10, 500, 990], seed=2)
    want = (9 * 1.5 ** 2 + 4 * 3 * 0.8 ** 2) / (13 * 3)
    for r in rows:
        assert r["true"] == pytest.approx(0.0, abs=1e-9)
        for v in ("place", "colour", "shape", "empty"):
            assert r[v] == pytest.approx(want, rel=1e-4), (r["t"], v)
    with pytest.raises(ValueError, match="no foreground pixels"):
        caption_probe_rows(eps_fn, np.zeros((1, 3, 8, 8)), captions[:1], abar, [10])


def test_denoise_probe_of_an_oracle_and_of_a_blind_model():
    """An eps predictor that returns the noise that made x_t gives back the images (up to x_t's float32
    rounding): the scorer reads them as it reads the renders, at every t. One that predicts the plain
    background (x0 = the border colour) draws no object: every rate 0, and its error over the objects'
    pixels is their mean squared contrast (closed form)."""
    from mind_diffusion.glide.diagnostics import denoise_probe_rows, foreground
    from mind_diffusion.shapes.scorer import score_many
    from mind_diffusion.shapes.world import ShapesWorld

    world = ShapesWorld(image_size=64, seed=5, two_shape_prob=0.0)
    imgs, caps = zip(*[world.sample(i)[:2] for i in range(6)])
    x0 = np.stack(imgs).astype(np.float64).transpose(0, 3, 1, 2) / 127.5 - 1.0
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))

    def oracle(x, t):  # the noise that made x_t (recovered exactly from x0 in float64)
        return (x.astype(np.float64) - np.sqrt(abar[t]) * x0) / np.sqrt(1 - abar[t])

    rows = denoise_probe_rows(oracle, x0, list(caps), abar, [20, 600, 990], seed=3)
    ref = score_many(list(imgs), list(caps))
    assert ref["shape"] == 1.0 and ref["colour"] == 1.0  # renders: the scorer's own ground truth
    for r in rows:
        for k in ("colour", "shape", "position"):
            assert r[k] == pytest.approx(ref[k]), (r["t"], k)
        assert r["mse"] < 1e-9 and r["mse_objects"] < 1e-9
    assert [r["t"] for r in rows] == [20, 600, 990] and rows[1]["abar"] == pytest.approx(abar[600])
    border = np.concatenate([x0[:, :, 0, :], x0[:, :, -1, :], x0[:, :, :, 0], x0[:, :, :, -1]], axis=2).mean(2)
    plain = np.broadcast_to(border[:, :, None, None], x0.shape)

    def blind(x, t):
        return (x.astype(np.float64) - np.sqrt(abar[t]) * plain) / np.sqrt(1 - abar[t])

    rows = denoise_probe_rows(blind, x0, list(caps), abar, [300], seed=3)
    fg = foreground(x0)
    sq = np.square(plain - x0)
    assert rows[0]["shape"] == 0 and rows[0]["colour"] == 0 and rows[0]["position"] == 0
    assert rows[0]["mse_objects"] == pytest.approx((sq * fg).sum() / (fg.sum() * 3), rel=1e-5)
    assert rows[0]["mse"] == pytest.approx(sq.mean(), rel=1e-5)
    with pytest.raises(ValueError, match="pair up"):
        denoise_probe_rows(oracle, x0, list(caps)[:2], abar, [10])


def test_word_value_of_two_renders_against_the_closed_form():
    """Two renders A (true) and B with squared distance D: the log posterior ratio given x_t is N(m, 2m),
    m = abar D / (2 (1 - abar)), so p_true = E[sigmoid(N(m, 2m))] and the excess x0 error is
    E[(1 - p_true)^2] D / (3 n_fg) over the union of the objects; both by Gauss-Hermite quadrature
    against 4000 draws; abar -> 1 reads the word off x_t (p_true 1), abar -> 0 not at all (1/2)."""
    from mind_diffusion.glide.diagnostics import word_value_rows

    a = np.full((3, 8, 8), -0.5)
    b = a.copy()
    a[:, 1:4, 1:4] = 0.5
    b[:, 4:7, 3:6] = 0.5
    d = float(np.square(a - b).sum())                            # 2 objects x 9 px x 3 channels x 1.0
    n_fg = 18 - 1                                                # the two 3 x 3 objects overlap in one pixel
    abar = np.array([1 - 1e-9, 0.02, 0.036, 0.1, 1e-9])
    rows = word_value_rows([(np.stack([a, b]), 0)], abar, range(5), draws=4000, seed=3)
    z, w = np.polynomial.hermite_e.hermegauss(80)
    for r, ab in zip(rows, abar):
        m = ab * d / (2 * (1 - ab))
        p = 1.0 / (1.0 + np.exp(-(m + np.sqrt(2 * m) * z)))
        want_p = float((w * p).sum() / w.sum())
        want_ex = float((w * (1 - p) ** 2).sum() / w.sum()) * d / (3 * n_fg)
        assert abs(r["p_true"] - want_p) < 0.012, (ab, r, want_p)
        assert abs(r["excess"] - want_ex) < 0.02 * d / (3 * n_fg), (ab, r, want_ex)
    assert rows[0]["p_true"] > 0.999 and abs(rows[-1]["p_true"] - 0.5) < 1e-4
    with pytest.raises(ValueError, match="outside the 5-step chain"):
        word_value_rows([(np.stack([a, b]), 0)], abar, [5])


def test_word_alternatives_render_the_scene_with_each_value():
    from mind_diffusion.glide.diagnostics import word_alternatives
    from mind_diffusion.shapes.world import PLACES, SHAPES, Scene, ShapeObject, render_scene

    scene = Scene((ShapeObject("红", "三角形", "上面", 0.12, 0.01, -0.02, 15.0),), "白")
    x, k = word_alternatives(scene, "shape", 64)
    assert x.shape == (4, 3, 64, 64) and SHAPES[k] == "三角形"
    own = render_scene(scene, 64, True).astype(np.float64).transpose(2, 0, 1) / 127.5 - 1.0
    assert np.array_equal(x[k], own) and all(not np.array_equal(x[j], own) for j in range(4) if j != k)
    y, kp = word_alternatives(scene, "place", 64)
    assert y.shape == (5, 3, 64, 64) and list(PLACES)[kp] == "上面" and np.array_equal(y[kp], own)
    with pytest.raises(ValueError, match="one-object"):
        word_alternatives(Scene(scene.objects * 2), "shape")
    with pytest.raises(ValueError, match="'shape' or 'place'"):
        word_alternatives(scene, "colour")


def test_select_weights():
    from mind_diffusion.glide.diagnostics import select_weights

    state = {"a.w": 1, "ema.a.w": 2, "adam_m.a.w": 3}
    assert select_weights(state, "ema") == ({"a.w": 2}, "EMA weights of a training checkpoint")
    assert select_weights(state, "raw")[0] == {"a.w": 1, "adam_m.a.w": 3}
    assert select_weights({"a.w": 1}, "ema")[0] == {"a.w": 1}
    # train.frozen_prefixes: a held tensor has no EMA copy (nor optimizer state); its raw value is the weight
    held = {**state, "b.w": 5, "global_step": 7, "meta.seed": 0}
    assert select_weights(held, "ema") == ({"a.w": 2, "b.w": 5},
                                           "EMA weights of a training checkpoint (1 held tensor without an EMA copy: raw)")
    with pytest.raises(ValueError):
        select_weights(state, "best")


@pytest.mark.parametrize("case", [pytest.param("base", marks=pytest.mark.slow), "sr",  # sr: the superset path
                                  "captions"])  # --captions of a base checkpoint alone
def test_script_on_a_training_checkpoint(case, tmp_path, capsys):
    """The script reads a training checkpoint (net, ema.*, optimizer and loss-scale state), takes the
    EMA or the raw copy as asked, and writes the rows the probe gives by hand on those weights."""
    import mindspore as ms

    from mind_diffusion.config import load_config
    from mind_diffusion.glide import training as T
    from mind_diffusion.glide.diagnostics import probe_rows
    from mind_diffusion.glide.model import build_glide_base, build_glide_sr
    from scripts.probe_glide_mean_colour import main

    stage = "sr" if case == "sr" else "base"
    (tmp_path / "sp").mkdir()
    sp = train_shapes_sp(tmp_path / "sp")
    data = shapes_glide_data(tmp_path / "data", 6)
    cfg_path = tiny_cfg(tmp_path, sp, data, stage)
    net_cfg = dict(TINY_TRAIN_BASE if stage == "base" else TINY_TRAIN_SR, n_vocab=101)
    build = build_glide_base if stage == "base" else build_glide_sr
    raw, ema = randomize(build(net_cfg), seed=3, std=0.05), randomize(build(net_cfg), seed=4, std=0.05)
    items = [{"name": p.name, "data": p.data} for p in raw.get_parameters()]
    items += [{"name": "ema." + p.name, "data": p.data} for p in ema.get_parameters()]
    items += [{"name": "adam_m." + p.name, "data": ms.Tensor(np.zeros(p.shape, np.float32))} for p in raw.get_parameters()]
    items += [{"name": "scale_good_steps", "data": ms.Tensor(np.array(3, np.int32))},
              {"name": "global_step", "data": ms.Tensor(np.array(7, np.int32))}]
    ms.save_checkpoint(items, str(tmp_path / "step.ckpt"))

    cfg = load_config(str(cfg_path), [], T.glide_train_config_defaults())
    tok = T._tokenizer(cfg, None)
    size = int(net_cfg["image_size"])
    low = 16 if stage == "sr" else None
    pairs, _ = T.read_pairs(cfg)
    src = T.GlideBatches(T.GlideImageText(pairs[-4:], tok, (size,) if low is None else (size, low)), tok.end_token,
                         int(net_cfg["text_ctx"]), 4, size, low, text_drop_p=0.0, seed=1, shuffle=False)
    b = src[0]
    for which, net in (("ema", ema), ("raw", raw)) if case != "captions" else ():
        out = tmp_path / f"probe_{which}"
        assert main(["--config", str(cfg_path), "--ckpt", str(tmp_path / "step.ckpt"), "--weights", which,
                     "--n", "4", "--t", "10", "990", "--out", str(out)]) == 0
        got = list(csv.DictReader(open(out / "probe.csv", encoding="utf-8")))
        net.set_train(False)

        def eps_fn(x, t, net=net):
            args = (ms.Tensor(x), ms.Tensor(np.full(len(x), t, np.int32)))
            args += () if low is None else (ms.Tensor(b[5]),)
            return net(*args, ms.Tensor(b[1]), ms.Tensor(b[2])).asnumpy()

        pools = sorted({k for k in (4, 8, size) if size % k == 0})
        want = probe_rows(eps_fn, b[0], T.schedule_for(cfg).alphas_cumprod, [10, 990], pools, seed=1)
        assert [int(r["t"]) for r in got] == [10, 990]
        for g, w in zip(got, want):
            for k, v in w.items():
                assert float(g[k]) == pytest.approx(v, rel=1e-4, abs=1e-6), (which, k)
        assert "EMA weights" in (out / "probe.md").read_text(encoding="utf-8") or which == "raw"
    if case == "captions":  # the same probe by hand, with the data's captions swapped
        from mind_diffusion.glide.diagnostics import caption_probe_rows
        from mind_diffusion.text.sentencepiece_tokenizer import padded_tokens_and_mask

        out = tmp_path / "probe_captions"
        assert main(["--config", str(cfg_path), "--ckpt", str(tmp_path / "step.ckpt"), "--captions", "--n", "4",
                     "--t", "10", "700", "--out", str(out)]) == 0
        got = list(csv.DictReader(open(out / "captions.csv", encoding="utf-8")))
        ctx = int(net_cfg["text_ctx"])

        def eps_caps(x, t, caps):
            rows = [padded_tokens_and_mask(tok.encode(c) if c else [], ctx, tok.end_token) for c in caps]
            return ema(ms.Tensor(x), ms.Tensor(np.full(len(x), t, np.int32)), ms.Tensor(np.stack([r[0] for r in rows])),
                       ms.Tensor(np.stack([r[1] for r in rows]))).asnumpy()

        caps = [c[0] for c in T.GlideImageText(pairs[-4:], tok, (size,)).captions]
        want = caption_probe_rows(eps_caps, b[0], caps, T.schedule_for(cfg).alphas_cumprod, [10, 700], seed=1)
        for g, w in zip(got, want):
            for k, v in w.items():
                assert float(g[k]) == pytest.approx(v, rel=1e-4, abs=1e-7), k
        assert float(got[1]["place"]) != float(got[1]["true"])  # a random network still reads its tokens
        # --words: no model; the ideal denoiser's rows on the data's world (world.json) and the config's chain
        import json

        from mind_diffusion.glide.diagnostics import word_alternatives, word_value_rows
        from mind_diffusion.shapes.world import ShapesWorld

        out = tmp_path / "words"
        assert main(["--config", str(cfg_path), "--words", "--n", "3", "--t", "300", "800", "--out", str(out)]) == 0
        got = list(csv.DictReader(open(out / "words.csv", encoding="utf-8")))
        meta = json.loads((data / "world.json").read_text(encoding="utf-8"))
        world = ShapesWorld(image_size=size, seed=meta["seed"], two_shape_prob=0.0, antialias=meta["antialias"])
        scenes = [world.sample_scene(i)[0] for i in range(3)]
        abar = T.schedule_for(cfg).alphas_cumprod
        for word in ("shape", "place"):
            want = word_value_rows([word_alternatives(sc, word, size, meta["antialias"]) for sc in scenes], abar,
                                   [300, 800], seed=1)
            for g, w in zip(got, want):
                assert float(g[f"{word}_p_true"]) == pytest.approx(w["p_true"], rel=1e-9)
                assert float(g[f"{word}_excess"]) == pytest.approx(w["excess"], rel=1e-9, abs=1e-15)
        assert float(got[0]["shape_p_true"]) > float(got[1]["shape_p_true"])  # the word is worth more at t 800
        # --denoise: the EMA network's one-call clean-image estimates, scored, as by hand
        from mind_diffusion.glide.diagnostics import denoise_probe_rows

        out = tmp_path / "denoise"
        assert main(["--config", str(cfg_path), "--ckpt", str(tmp_path / "step.ckpt"), "--denoise", "--n", "4",
                     "--t", "10", "500", "--out", str(out)]) == 0
        got = list(csv.DictReader(open(out / "denoise.csv", encoding="utf-8")))

        def eps_true(x, t):
            return ema(ms.Tensor(x), ms.Tensor(np.full(len(x), t, np.int32)), ms.Tensor(b[1]), ms.Tensor(b[2])).asnumpy()

        want = denoise_probe_rows(eps_true, b[0], caps, T.schedule_for(cfg).alphas_cumprod, [10, 500], seed=1)
        assert [int(r["t"]) for r in got] == [10, 500]
        for g, w in zip(got, want):
            for k, v in w.items():
                assert float(g[k]) == pytest.approx(v, rel=1e-4, abs=1e-7), k
        capsys.readouterr()
        rc = main(["--config", str(cfg_path), "--ckpt", str(tmp_path / "step.ckpt"), "--denoise", "--captions",
                   "--out", str(tmp_path / "y")])
        captured_error(capsys, rc, "separate probes")
        assert not (tmp_path / "y").exists()
        capsys.readouterr()
        rc = main(["--config", str(cfg_path), "--out", str(tmp_path / "x")])
        captured_error(capsys, rc, "--ckpt is needed")
    capsys.readouterr()
    rc = main(["--config", str(cfg_path), "--ckpt", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "x")])
    captured_error(capsys, rc, "missing.ckpt", "not found")
    assert not (tmp_path / "x").exists()
    rc = main(["--config", str(cfg_path), "--ckpt", str(tmp_path / "step.ckpt"), "--t", "1000", "--out", str(tmp_path / "x")])
    captured_error(capsys, rc, "--t 1000 is outside the 1000-step chain")
    assert not (tmp_path / "x").exists()
    if stage == "sr":  # the captions decide only a base model's picture: one line, no output folder
        rc = main(["--config", str(cfg_path), "--ckpt", str(tmp_path / "step.ckpt"), "--captions", "--out",
                   str(tmp_path / "x")])
        captured_error(capsys, rc, "--captions probes a base model")
        assert not (tmp_path / "x").exists()
