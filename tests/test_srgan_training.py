"""SRGAN training (GLIDE stage 3): the losses and one step against closed forms, GRAPH vs
PYNATIVE, exact resume, the export, the config checks and the evaluation metrics."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor, ops

from mind_diffusion.config import ConfigError, load_config
from mind_diffusion.glide.srgan_training import (
    DiscriminatorLoss,
    GeneratorLoss,
    SRGANTrainer,
    SRPatchSource,
    bicubic_upscale,
    check_srgan_train_config,
    downscale,
    edge_sharpness,
    load_exported_srgan,
    srgan_train_config_defaults,
    train_srgan,
    upscale_with_generator,
)
from mind_diffusion.checkpoint.io import CheckpointError
from mind_diffusion.shapes.editing import psnr
from mind_diffusion.shapes.world import ShapesWorld

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.num_blocks=1", "model.channels=8", "discriminator.channels=4", "discriminator.num_blocks=3",
        "discriminator.hidden=8", "data.hr_size=64", "data.num_scenes=2", "data.hr_patch=32",
        "train.batch_size=2", "train.log_every=1", "train.ckpt_every=2", "train.warmup_steps=1",
        "train.adv_weight=0.1", "train.lr=1e-3", "train.lr_d=1e-3"]


def tiny_cfg(*more, out=None):
    extra = [f"train.output_dir={out}"] if out is not None else []
    cfg = load_config(None, TINY + extra + list(more), srgan_train_config_defaults())
    check_srgan_train_config(cfg)
    return cfg


def np_bce(x, t):
    return float(np.mean(np.logaddexp(0.0, x) - x * t))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_losses_and_one_step_match_closed_form():
    """(PYNATIVE; the next test shows GRAPH_MODE gives the same steps.)"""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    cfg = tiny_cfg()
    tr = SRGANTrainer(cfg, "/nonexistent")
    src = SRPatchSource(cfg.data, 4, seed=0)
    lr, hr = src.batch(0, 2)
    assert lr.shape == (2, 3, 8, 8) and hr.shape == (2, 3, 32, 32)
    tr.gen.set_train(True)
    tr.disc.set_train(True)
    sr = tr.gen(Tensor(lr)).asnumpy()
    logit_fake, logit_real = tr.disc(Tensor(sr)).asnumpy(), tr.disc(Tensor(hr)).asnumpy()
    assert logit_fake.shape == (2,)
    g, l1, adv, sr2 = GeneratorLoss(tr.gen, tr.disc)(Tensor(lr), Tensor(hr), Tensor(0.25, ms.float32))
    np.testing.assert_allclose(sr2.asnumpy(), sr, atol=1e-6)
    want_l1, want_adv = float(np.abs(sr - hr).mean()), np_bce(logit_fake, 1.0)
    assert abs(float(l1.asnumpy()) - want_l1) <= 1e-5 and abs(float(adv.asnumpy()) - want_adv) <= 1e-5
    assert abs(float(g.asnumpy()) - (want_l1 + 0.25 * want_adv)) <= 1e-5
    d_net = DiscriminatorLoss(tr.disc)
    d, real, fake = d_net(Tensor(hr), Tensor(sr))
    assert abs(float(real.asnumpy()) - np_bce(logit_real, 1.0)) <= 1e-5
    assert abs(float(fake.asnumpy()) - np_bce(logit_fake, 0.0)) <= 1e-5
    assert abs(float(d.asnumpy()) - np_bce(logit_real, 1.0) - np_bce(logit_fake, 0.0)) <= 1e-5
    # D's gradient reaches its last bias as dBCE/dlogit (closed form) and nothing reaches G
    weights = [tr.disc.fc2.bias] + list(tr.gen.trainable_params())

    def d_loss_of_sr(hr_t, lr_t):
        return d_net(hr_t, tr.gen(lr_t))[0]

    grads = ops.value_and_grad(d_loss_of_sr, None, weights)(Tensor(hr), Tensor(lr))[1]
    want_bias = np.mean(sigmoid(logit_real) - 1.0) + np.mean(sigmoid(logit_fake))
    assert abs(float(grads[0].asnumpy()[0]) - want_bias) <= 1e-5
    assert all(not np.any(gr.asnumpy()) for gr in grads[1:])
    # one training step: the G update, then the D update on that step's (pre-update) G output;
    # Adam's first step moves fc2.bias by -lr_d * g / (|g| + eps / sqrt(1 - beta2))
    bias0 = tr.disc.fc2.bias.asnumpy().copy()
    g0 = [p.asnumpy().copy() for p in tr.gen.trainable_params()]
    tr.train_step(src)  # step 0 = the batch above, adv weight 0 (warm-up)
    step_bias = (tr.disc.fc2.bias.asnumpy() - bias0)[0]
    np.testing.assert_allclose(step_bias, -1e-3 * want_bias / (abs(want_bias) + 1e-8 / np.sqrt(1 - 0.999)),
                               rtol=1e-4)
    assert any(not np.array_equal(a, p.asnumpy()) for a, p in zip(g0, tr.gen.trainable_params()))


def run_steps(cfg, state, steps):
    tr = SRGANTrainer(cfg, "/nonexistent")
    if state is not None:
        for p in tr.state_groups()["generator."] + tr.state_groups()["discriminator."]:
            p.set_data(Tensor(state[p.name]))
    init = {p.name: p.asnumpy().copy() for ps in list(tr.state_groups().values())[:2] for p in ps}
    src = SRPatchSource(cfg.data, 4, seed=0)
    losses = [list(tr.train_step(src).values()) for _ in range(steps)]
    return init, np.array(losses), tr.state()


def test_graph_and_pynative_give_the_same_steps():
    cfg = tiny_cfg("train.steps=3", "train.lr_decay_start=1")  # learning-rate factors 1, 1, 0.5
    try:
        ms.set_context(mode=ms.GRAPH_MODE)
        init, loss_g, state_g = run_steps(cfg, None, 3)
        ms.set_context(mode=ms.PYNATIVE_MODE)
        _, loss_p, state_p = run_steps(cfg, init, 3)
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    np.testing.assert_allclose(loss_g, loss_p, rtol=1e-4, atol=1e-6)
    assert set(state_g) == set(state_p)
    for k in state_g:
        np.testing.assert_allclose(state_g[k], state_p[k], rtol=1e-3, atol=1e-5, err_msg=k)


def test_resume_is_exact_and_the_export_loads_strictly(tmp_path, capsys):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_seed(0)
    straight = train_srgan(tiny_cfg("train.steps=4", "train.lr_decay_start=1", out=tmp_path / "a"), progress=False)
    ms.set_seed(0)  # the same initial weights, then 2 steps, stop, resume to 4
    train_srgan(tiny_cfg("train.steps=2", out=tmp_path / "b"), progress=False)  # no decay before step 2 either
    with pytest.raises(ValueError, match="holds another run"):
        train_srgan(tiny_cfg("train.steps=4", out=tmp_path / "b"), progress=False)
    ms.set_seed(123)  # different init: every weight must come from the checkpoint
    resumed = train_srgan(tiny_cfg("train.steps=4", "train.lr_decay_start=1", out=tmp_path / "b"), resume="auto",
                          progress=False)
    assert straight["step"] == resumed["step"] == 4
    # Equal up to float32 round-off: the CPU batch-norm and conv reductions may split their sums across
    # threads differently from one process to the next (CI once saw 0.705926 vs 0.705927 at step 3).
    # A lost optimizer moment, learning-rate factor or weight moves these by orders of magnitude more.
    for k in ("g_loss", "l1", "adv", "d_loss"):
        np.testing.assert_allclose(straight[k], resumed[k], rtol=1e-5, atol=1e-6, err_msg=k)
    a, b = (tmp_path / "a" / "metrics.csv").read_text().splitlines(), (tmp_path / "b" / "metrics.csv").read_text().splitlines()
    assert len(a) == len(b) == 5 and a[0] == b[0]
    rows_a, rows_b = (np.array([r.split(",")[:7] for r in rows[1:]], dtype=np.float64) for rows in (a, b))
    np.testing.assert_array_equal(rows_a[:, 0], rows_b[:, 0])
    np.testing.assert_allclose(rows_a, rows_b, rtol=0, atol=2.5e-6)  # 6 printed decimals, one last-digit flip
    from mind_diffusion.checkpoint.io import read_checkpoint

    ea, eb = read_checkpoint(tmp_path / "a" / "srgan.ckpt"), read_checkpoint(tmp_path / "b" / "srgan.ckpt")
    assert set(ea) == set(eb)
    for k in ea:
        np.testing.assert_allclose(ea[k], eb[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert "conv1.0.weight" in ea and "trunk.0.bn1.moving_mean" in ea  # the official bare names
    assert (tmp_path / "b" / "loss.png").stat().st_size > 0
    # the export: build_srgan(srgan.yaml) + load_glide_checkpoint, strictly, gives the trained net
    gen = load_exported_srgan(tmp_path / "a")
    lr = ShapesWorld(image_size=64, antialias=True, split="heldout").sample(0)[0][::4, ::4].copy()
    cfg = tiny_cfg()
    tr = SRGANTrainer(cfg, "/nonexistent")
    for p in tr.gen.get_parameters():
        p.set_data(Tensor(ea[p.name]))
    assert np.array_equal(upscale_with_generator(gen, lr), upscale_with_generator(tr.gen, lr))


def test_init_generator_fine_tunes_from_an_exported_srgan_ckpt(tmp_path):
    """init.generator: the generator starts as the given srgan.ckpt (every tensor equal), the
    discriminator fresh; a missing file, or a GLIDE UNet file given as one, is one clear line."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_seed(0)
    train_srgan(tiny_cfg("train.steps=2", out=tmp_path / "a"), progress=False)
    from mind_diffusion.checkpoint.io import read_checkpoint

    exported = read_checkpoint(tmp_path / "a" / "srgan.ckpt")
    ms.set_seed(7)
    tr = SRGANTrainer(tiny_cfg(f"init.generator={tmp_path / 'a' / 'srgan.ckpt'}"), tmp_path / "b")
    for p in tr.gen.get_parameters():
        assert np.array_equal(p.asnumpy(), exported[p.name]), p.name
    ms.set_seed(7)
    fresh = SRGANTrainer(tiny_cfg(), tmp_path / "c")
    assert not all(np.array_equal(p.asnumpy(), exported[p.name]) for p in fresh.gen.get_parameters())
    from mind_diffusion.checkpoint.io import CheckpointError

    with pytest.raises(CheckpointError, match="init.generator not found"):
        tiny_cfg(f"init.generator={tmp_path / 'missing.ckpt'}")
    ms.save_checkpoint([{"name": "input_blocks.0.0.weight", "data": Tensor(np.zeros((4, 3, 3, 3), np.float32))}],
                       str(tmp_path / "unet.ckpt"))
    with pytest.raises(CheckpointError) as exc:
        SRGANTrainer(tiny_cfg(f"init.generator={tmp_path / 'unet.ckpt'}"), tmp_path / "d")
    assert "\n" not in str(exc.value)


def test_a_fine_tune_resumes_after_its_init_file_is_gone(tmp_path):
    """Resuming a fine-tune takes every weight from its checkpoint: init.generator is neither read nor
    required (it may have been moved or replaced since the run started)."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_seed(0)
    train_srgan(tiny_cfg("train.steps=2", out=tmp_path / "a"), progress=False)
    init = tmp_path / "init.ckpt"
    init.write_bytes((tmp_path / "a" / "srgan.ckpt").read_bytes())
    ms.set_seed(0)
    straight = train_srgan(tiny_cfg("train.steps=4", f"init.generator={init}", out=tmp_path / "s"), progress=False)
    ms.set_seed(0)
    train_srgan(tiny_cfg("train.steps=2", f"init.generator={init}", out=tmp_path / "f"), progress=False)
    init.unlink()  # gone: a fresh start names it, a resume does not need it
    with pytest.raises(CheckpointError, match="init.generator not found"):
        train_srgan(load_config(None, TINY + ["train.steps=4", f"init.generator={init}",
                                              f"train.output_dir={tmp_path / 'g'}"], srgan_train_config_defaults()),
                    progress=False)
    cfg = load_config(None, TINY + ["train.steps=4", f"init.generator={init}", f"train.output_dir={tmp_path / 'f'}"],
                      srgan_train_config_defaults())
    check_srgan_train_config(cfg, resuming=True)
    resumed = train_srgan(cfg, resume="auto", progress=False)
    assert resumed["step"] == straight["step"] == 4
    np.testing.assert_allclose(resumed["l1"], straight["l1"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("override, key", [
    ("train.lr_d=0", "train.lr_d"), ("train.adv_weight=-1", "train.adv_weight"),
    ("data.downsample=lanczos", "data.downsample"), ("data.hr_patch=30", "data.hr_patch"),
    ("data.hr_patch=128", "data.hr_patch"), ("model.upscale_factor=3", "model.upscale_factor"),
    ("discriminator.num_blocks=0", "discriminator.num_blocks"), ("data.edge_crop_prob=1.5", "data.edge_crop_prob"),
    ("train.steps=0", "train.steps"), ("train.lr_decay_start=-1", "train.lr_decay_start"), ("train.adv_wieght=1", "train.adv_wieght"),
    ("data.num_scenes=many", "data.num_scenes"),
])
def test_bad_config_is_one_clear_line(override, key):
    with pytest.raises(ConfigError) as exc:
        tiny_cfg(override)
    msg = str(exc.value)
    assert key in msg and "\n" not in msg


def test_cli_bad_value_exits_2_and_writes_nothing(tmp_path, capsys):
    from scripts.train_srgan import main

    out = tmp_path / "run"
    assert main(["--config", str(ROOT / "configs/glide/shapes-srgan.yaml"), "--set", f"train.output_dir={out}", "train.lr_d=-1"]) == 2
    assert "train.lr_d" in capsys.readouterr().err and not out.exists()


def test_patches_are_aligned_and_keyed_on_the_step():
    cfg = tiny_cfg()
    src = SRPatchSource(cfg.data, 4, seed=7)
    world = ShapesWorld(image_size=64, antialias=True, split="train")
    assert src.corners(5, 4) == SRPatchSource(cfg.data, 4, seed=7).corners(5, 4) != src.corners(6, 4)
    lr, hr = src.batch(5, 4)
    for b, (i, y, x) in enumerate(src.corners(5, 4)):
        full = world.sample(i)[0]
        want_hr = full[4 * y:4 * y + 32, 4 * x:4 * x + 32]
        want_lr = downscale(full, 4, "bicubic")[y:y + 8, x:x + 8]
        assert np.array_equal(np.rint((hr[b].transpose(1, 2, 0) + 1) * 127.5).astype(np.uint8), want_hr)
        assert np.array_equal(np.rint((lr[b].transpose(1, 2, 0) + 1) * 127.5).astype(np.uint8), want_lr)


def test_lr_factor():
    from mind_diffusion.glide.srgan_training import lr_factor

    assert [lr_factor(s, 6, 2) for s in range(6)] == [1, 1, 1, 0.75, 0.5, 0.25]
    assert [lr_factor(s, 6, 0) for s in range(6)] == [1.0] * 6 == [lr_factor(s, 6, 6) for s in range(6)]


def keys_cubic(t, a=-0.5):
    t = np.abs(t)
    return np.where(t <= 1, (a + 2) * t**3 - (a + 3) * t**2 + 1,
                    np.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, 0.0))


def test_metrics_psnr_sharpness_and_bicubic_against_independent_math():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert psnr(img, img) == float("inf")
    noisy = np.clip(img.astype(int) + 1, 0, 255).astype(np.uint8)
    d = noisy.astype(float) - img
    assert abs(psnr(noisy, img) - 10 * np.log10(255**2 / np.mean(d * d))) < 1e-9
    # bicubic x4 of a smooth image = separable Keys cubic (a=-0.5) at half-pixel centres, inside
    yy, xx = np.mgrid[0:16, 0:16]
    small = np.stack([128 + 60 * np.sin(xx / 3.0 + c) * np.cos(yy / 4.0) for c in range(3)], -1)
    small = np.rint(small).astype(np.uint8)
    src = (np.arange(64) + 0.5) / 4 - 0.5
    taps = np.floor(src)[:, None] + np.arange(-1, 3)[None]
    w = keys_cubic(src[:, None] - taps)
    idx = np.clip(taps, 0, 15).astype(int)
    m = np.zeros((64, 16))
    np.add.at(m, (np.repeat(np.arange(64), 4), idx.ravel()), w.ravel())
    want = np.einsum("yi,xj,ijc->yxc", m, m, small.astype(float))
    got = bicubic_upscale(small, 4).astype(float)
    inner = (slice(8, -8), slice(8, -8))
    assert np.abs(got[inner] - want[inner]).max() <= 1.0
    # edge sharpness: 1 for the true image, lower for a blurred step, equal for a box
    hr = np.zeros((64, 64, 3), np.uint8)
    hr[:, 30:] = 200
    assert edge_sharpness(hr, hr) == pytest.approx(1.0)
    blurred = bicubic_upscale(downscale(hr, 4, "area"), 4)
    assert 0.2 < edge_sharpness(blurred, hr) < 0.9
    assert downscale(hr, 4, "area")[0, 7, 0] == 100  # the box average of the step's 2 + 2 pixels


def test_shipped_srgan_reproduces_its_evaluation_and_beats_bicubic():
    """models/glide_shapes/srgan.ckpt against its own srgan_eval.csv: scenes 0 and 1 re-scored from the
    shipped weights give the recorded PSNR and sharpness, and the recorded means put it above bicubic on
    both (the issue's bar for the built-in SRGAN)."""
    import csv

    model = ROOT / "models" / "glide_shapes"
    rows = list(csv.DictReader(open(model / "srgan_eval.csv", encoding="utf-8")))
    assert len(rows) == 32
    mean = {k: np.mean([float(r[k]) for r in rows]) for k in rows[0] if k.startswith(("psnr_", "sharpness_"))}
    assert mean["psnr_srgan"] > mean["psnr_bicubic"] and mean["sharpness_srgan"] > mean["sharpness_bicubic"]
    from mind_diffusion.glide.srgan_training import evaluate_srgan

    fresh = evaluate_srgan(load_exported_srgan(model), num_scenes=2)
    for got, want in zip(fresh, rows[:2]):
        for k in ("psnr_srgan", "sharpness_srgan", "psnr_bicubic", "sharpness_bicubic"):
            assert abs(got[k] - float(want[k])) <= 2e-3, (got["scene"], k, got[k], want[k])
