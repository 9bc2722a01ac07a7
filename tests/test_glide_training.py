"""GLIDE training (mind_diffusion/glide/training.py, scripts/train_glide.py).

- the hybrid loss (eps MSE + VLB in bits from a stop-gradient eps, learned-range variance, clipped
  x0) against the float64 closed form of mind_diffusion/diffusion/gaussian.py and an independent
  torch implementation on the same tensors, t = 0 and t = 999 included, for the base (cosine)
  and SR (linear) chains; the stop-gradient seen in the gradients; GRAPH == PYNATIVE;
- data: the original's list format, the CSV kind, center_crop_arr against PIL, caption dropout,
  determinism, rank sharding;
- the original's flags, the learning-rate schedule, fine-tune starts and bad input (exit 2, one
  line, nothing written);
- slow: exact resume, the released layout round trip (loads strictly, samples through
  GlidePipeline), a fine-tune start that trains.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import captured_error, run_script
from glide_tiny import TINY_TRAIN_BASE as TINY_BASE
from glide_tiny import TINY_TRAIN_SR as TINY_SR
from glide_tiny import shapes_glide_data, train_shapes_sp
from glide_tiny import tiny_glide_train_config as tiny_cfg

ROOT = Path(__file__).resolve().parents[1]
N_IMAGES = 12


# ------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def shapes_sp(tmp_path_factory) -> Path:
    return train_shapes_sp(tmp_path_factory.mktemp("glide_sp"))


@pytest.fixture(scope="session")
def tokenizer(shapes_sp):
    from mind_diffusion.text.factory import build_glide_tokenizer

    return build_glide_tokenizer(str(shapes_sp), True)


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory) -> Path:
    return shapes_glide_data(tmp_path_factory.mktemp("glide_data"), N_IMAGES)


# ----------------------------------------------------------------------------- loss, closed form
def _schedule(stage, snr_scale=1.0):
    from mind_diffusion.glide import diffusion as gd

    return (gd.base_diffusion if stage == "base" else gd.sr_diffusion)(snr_scale=snr_scale)


def _tensors(seed=0, b=6, s=8):
    """x0 on the 8-bit grid, noise, a model output (eps near the noise, v in [-1, 1]) and t with
    both ends of the chain."""
    rng = np.random.default_rng(seed)
    x0 = (rng.integers(0, 256, (b, 3, s, s)) / 127.5 - 1.0).astype(np.float32)
    noise = rng.standard_normal((b, 3, s, s)).astype(np.float32)
    eps = (noise + 0.3 * rng.standard_normal(noise.shape)).astype(np.float32)
    v = rng.uniform(-1, 1, noise.shape).astype(np.float32)
    t = np.array([0, 999, 1, 500, 0, 998][:b], np.int32)
    return x0, noise, np.concatenate([eps, v], 1), t


def _fixed_output_loss(stage, out, vb_weight=1.0, snr_scale=1.0, **loss_kw):
    """GlideHybridLoss around a 'net' whose output is a Parameter (the given array)."""
    import mindspore as ms
    from mindspore import Parameter, Tensor, nn

    from mind_diffusion.glide.training import GlideHybridLoss

    class Base(nn.Cell):
        def __init__(self):
            super().__init__()
            self.out = Parameter(Tensor(out, ms.float32), name="out")

        def construct(self, x_t, t, tokens, mask):
            return self.out * 1.0

    class SR(Base):
        def construct(self, x_t, t, low_res, tokens, mask):
            return self.out * 1.0

    net = Base() if stage == "base" else SR()
    return GlideHybridLoss(net, _schedule(stage, snr_scale), stage == "sr", vb_weight=vb_weight, clip_denoised=True,
                           **loss_kw), net


def _inputs(stage, x0, noise, t):
    import mindspore as ms
    from mindspore import Tensor

    b, ctx = x0.shape[0], 4
    args = [Tensor(x0), Tensor(np.zeros((b, ctx), np.int32)), Tensor(np.ones((b, ctx), np.int32)),
            Tensor(t, ms.int32), Tensor(noise)]
    if stage == "sr":
        args.append(Tensor(np.zeros_like(x0)))
    return args


def _numpy_reference(stage, x0, noise, out, t):
    from mind_diffusion.diffusion.gaussian import q_sample, simple_mse, vlb_terms

    sched = _schedule(stage)
    x_t = q_sample(sched, x0.astype(np.float64), t, noise.astype(np.float64))
    vb = vlb_terms(sched, x0, x_t, t, out.astype(np.float64), variance_type="learned_range", clip_denoised=True)
    return simple_mse(out[:, :3], noise), vb


def torch_hybrid(betas, x0, noise, out, t, vb_weight=1.0):
    """The hybrid loss written out in torch (float64) from the betas alone: per-sample (mse, vb)
    and the batch loss, differentiable in ``out``."""
    import torch

    b = torch.tensor(np.asarray(betas, np.float64))
    abar = torch.cumprod(1 - b, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=b.dtype), abar[:-1]])
    post_var = b * (1 - abar_prev) / (1 - abar)
    post_logvar = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
    c1 = b * torch.sqrt(abar_prev) / (1 - abar)
    c2 = (1 - abar_prev) * torch.sqrt(1 - b) / (1 - abar)
    ti = torch.as_tensor(t, dtype=torch.long)
    g = lambda a: a[ti].reshape(-1, 1, 1, 1)  # noqa: E731
    x0, noise = torch.as_tensor(x0, dtype=b.dtype), torch.as_tensor(noise, dtype=b.dtype)
    x_t = torch.sqrt(g(abar)) * x0 + torch.sqrt(1 - g(abar)) * noise
    eps, v = out[:, :3], out[:, 3:]
    mse = ((noise - eps) ** 2).mean((1, 2, 3))
    eps_sg = eps.detach()
    px0 = (x_t - torch.sqrt(1 - g(abar)) * eps_sg) / torch.sqrt(g(abar))
    px0 = px0.clamp(-1, 1)
    mean = g(c1) * px0 + g(c2) * x_t
    frac = (v + 1) / 2
    logvar = frac * torch.log(g(b)) + (1 - frac) * g(post_logvar)
    true_mean = g(c1) * x0 + g(c2) * x_t
    tlv = g(post_logvar)
    kl = 0.5 * (-1 + logvar - tlv + torch.exp(tlv - logvar) + (true_mean - mean) ** 2 * torch.exp(-logvar))
    kl = kl.mean((1, 2, 3)) / math.log(2)

    def cdf(z):
        return 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3)))

    inv_std = torch.exp(-0.5 * logvar)
    cdf_plus = cdf(inv_std * (x0 - mean + 1 / 255))
    cdf_min = cdf(inv_std * (x0 - mean - 1 / 255))
    logp = torch.where(x0 < -0.999, torch.log(cdf_plus.clamp(min=1e-12)),
                       torch.where(x0 > 0.999, torch.log((1 - cdf_min).clamp(min=1e-12)),
                                   torch.log((cdf_plus - cdf_min).clamp(min=1e-12))))
    nll = -logp.mean((1, 2, 3)) / math.log(2)
    vb = torch.where(ti == 0, nll, kl)
    return mse, vb, (mse + vb_weight * vb).mean()


@pytest.mark.parametrize("stage", ["base", "sr"])
def test_hybrid_loss_matches_closed_form_and_torch(stage):
    x0, noise, out, t = _tensors(seed={"base": 1, "sr": 2}[stage])
    loss_net, _ = _fixed_output_loss(stage, out)
    mse, vb = (a.asnumpy() for a in loss_net.terms(*_inputs(stage, x0, noise, t)))
    total = float(loss_net(*_inputs(stage, x0, noise, t)).asnumpy())
    ref_mse, ref_vb = _numpy_reference(stage, x0, noise, out, t)
    err = max(np.abs(mse - ref_mse).max(), np.abs(vb - ref_vb).max(), abs(total - np.mean(ref_mse + ref_vb)))
    print(f"\n[glide-train] {stage} loss vs float64 closed form: max |error| {err:.1e} "
          f"(vb at t=0 {vb[0]:.3f} bits, t=999 {vb[1]:.4f} bits)")
    assert err <= 1e-5
    assert vb[0] > 0 and vb[1] > 0 and np.all(np.isfinite(vb))
    torch = pytest.importorskip("torch", reason="torch (requirements-dev.txt) gives the independent reference")
    tm, tv, tl = torch_hybrid(_schedule(stage).betas, x0, noise, torch.as_tensor(out, dtype=torch.float64), t)
    terr = max(np.abs(mse - tm.numpy()).max(), np.abs(vb - tv.numpy()).max(), abs(total - float(tl)))
    print(f"[glide-train] {stage} loss vs torch: max |error| {terr:.1e}")
    assert terr <= 1e-5


def test_hybrid_loss_on_a_shifted_chain_matches_torch_and_the_config_picks_it():
    """``diffusion.snr_scale=0.0625``: the trainer's chain is the cosine one with every SNR / 16, and the
    hybrid loss on it (VLB at t = 0 and 999 included) equals the torch reference given those betas."""
    from mind_diffusion.config import ConfigError, load_config
    from mind_diffusion.glide.training import glide_train_config_defaults, schedule_for

    cfg_file = ROOT / "configs/glide/shapes-base.yaml"
    cfg = load_config(str(cfg_file), ["diffusion.snr_scale=0.0625"], glide_train_config_defaults())
    sched, plain = schedule_for(cfg), _schedule("base")
    np.testing.assert_allclose(sched.alphas_cumprod, _schedule("base", 0.0625).alphas_cumprod, rtol=0, atol=0)
    snr = lambda a: a / (1 - a)  # noqa: E731
    np.testing.assert_allclose(snr(sched.alphas_cumprod[1:990]), snr(plain.alphas_cumprod[1:990]) / 16, rtol=1e-9)
    x0, noise, out, t = _tensors(seed=11)
    loss_net, _ = _fixed_output_loss("base", out, snr_scale=0.0625)
    mse, vb = (a.asnumpy() for a in loss_net.terms(*_inputs("base", x0, noise, t)))
    torch = pytest.importorskip("torch", reason="torch (requirements-dev.txt) gives the independent reference")
    tm, tv, _ = torch_hybrid(sched.betas, x0, noise, torch.as_tensor(out, dtype=torch.float64), t)
    assert max(np.abs(mse - tm.numpy()).max(), np.abs(vb - tv.numpy()).max()) <= 1e-5
    _, pv, _ = torch_hybrid(plain.betas, x0, noise, torch.as_tensor(out, dtype=torch.float64), t)
    assert np.abs(vb - pv.numpy()).max() > 1e-3        # the shift changes the VLB targets
    for bad in ("0", "-1", "0.0"):
        with pytest.raises(ConfigError, match="diffusion.snr_scale must be a number > 0"):
            schedule_for(load_config(str(cfg_file), [f"diffusion.snr_scale={bad}"], glide_train_config_defaults()))


@pytest.mark.parametrize("stage", ["base", "sr"])
def test_stop_gradient_eps_from_mse_only_variance_from_vb_only(stage):
    import mindspore as ms

    x0, noise, out, t = _tensors(seed=4)
    grads = {}
    for w in (1.0, 0.0):
        loss_net, net = _fixed_output_loss(stage, out, vb_weight=w)
        grads[w] = ms.grad(loss_net, grad_position=None, weights=[net.out])(*_inputs(stage, x0, noise, t))[0].asnumpy()
    b, c, h, w_ = noise.shape
    closed = 2.0 * (out[:, :3].astype(np.float64) - noise) / (b * c * h * w_)
    assert np.abs(grads[1.0][:, :3] - closed).max() <= 1e-9 + 1e-6 * np.abs(closed).max()
    assert np.abs(grads[0.0][:, :3] - closed).max() <= 1e-9 + 1e-6 * np.abs(closed).max()
    assert not np.any(grads[0.0][:, 3:])                # no gradient of the MSE reaches v
    gv = grads[1.0][:, 3:]
    assert np.abs(gv).max() > 0
    torch = pytest.importorskip("torch", reason="torch (requirements-dev.txt) gives the reference gradient")
    o = torch.as_tensor(out, dtype=torch.float64).requires_grad_(True)
    _, _, loss = torch_hybrid(_schedule(stage).betas, x0, noise, o, t)
    loss.backward()
    ref = o.grad.numpy()
    assert np.abs(ref[:, :3] - closed).max() <= 1e-12  # the torch stop-gradient too
    assert np.abs(gv - ref[:, 3:]).max() <= 1e-4 * np.abs(ref[:, 3:]).max()


def _closed_form_weights(weighting, t, stage):
    abar = np.cumprod(1.0 - np.asarray(_schedule(stage).betas, np.float64))
    snr = abar[t] / (1.0 - abar[t])
    if weighting == "min_snr":
        return np.minimum(snr, 5.0) / snr
    if weighting == "inv_snr":
        return np.clip(1.0 / snr, 1.0, 20.0)
    return np.ones(len(t))


@pytest.mark.parametrize("weighting", ["min_snr", "inv_snr"])
@pytest.mark.parametrize("stage", ["base", "sr"])
def test_snr_weightings_against_closed_form(stage, weighting):
    """``loss_weighting="min_snr"``: the eps term of each sample weighted by min(SNR_t, 5) / SNR_t;
    ``"inv_snr"``: by clip(1 / SNR_t, 1, 20); both computed here in float64 from the schedule; the
    VLB term and its gradient untouched."""
    import mindspore as ms

    x0, noise, out, t = _tensors(seed=6)
    loss_net, net = _fixed_output_loss(stage, out, loss_weighting=weighting, min_snr_gamma=5.0, inv_snr_cap=20.0)
    total = float(loss_net(*_inputs(stage, x0, noise, t)).asnumpy())
    ref_mse, ref_vb = _numpy_reference(stage, x0, noise, out, t)
    w = _closed_form_weights(weighting, t, stage)
    if weighting == "min_snr":
        assert w.min() < 0.01 and w.max() == 1.0      # t = 0 weighs ~nothing, t = 999 fully
    else:
        assert w.min() == 1.0 and w.max() == 20.0     # t = 0 as the original, t = 999 at the cap
    assert abs(total - float(np.mean(w * ref_mse + ref_vb))) <= 1e-5 * max(1.0, abs(total))
    g = ms.grad(loss_net, grad_position=None, weights=[net.out])(*_inputs(stage, x0, noise, t))[0].asnumpy()
    b, c, h, w_ = noise.shape
    closed = 2.0 * w[:, None, None, None] * (out[:, :3].astype(np.float64) - noise) / (b * c * h * w_)
    assert np.abs(g[:, :3] - closed).max() <= 1e-9 + 1e-6 * np.abs(closed).max()
    plain, pnet = _fixed_output_loss(stage, out)
    gp = ms.grad(plain, grad_position=None, weights=[pnet.out])(*_inputs(stage, x0, noise, t))[0].asnumpy()
    assert np.abs(g[:, 3:] - gp[:, 3:]).max() <= 1e-7 * np.abs(gp[:, 3:]).max()


@pytest.mark.parametrize("weighting", ["none", "inv_snr"])
def test_foreground_weighting_against_closed_form(ms_mode, weighting):
    """``foreground_weight=10``: on images of a plain background with an object (and one without any),
    each pixel's squared eps error weighs 1 + 10 where the clean image differs from its border mean by
    more than 0.1 in some channel, normalised per image; computed here in float64; the gradient on eps is
    the closed form; v's gradient (the VLB) is unchanged; an image without an object keeps the plain mean."""
    import mindspore as ms

    _, noise, out, t = _tensors(seed=8)
    b, c, h, w_ = noise.shape
    x0 = np.zeros((b, 3, h, w_), np.float32)
    x0[:] = np.linspace(-0.8, 0.8, b, dtype=np.float32)[:, None, None, None]   # a background per image
    for i in range(b - 1):                                                        # the last image: none
        x0[i, i % 3, 2 + i % 3:5 + i % 3, 1:4] += 0.5                            # a 3 x 3 object
    x0[0, 1, 6, 6] += 0.05                                                        # under the threshold
    kw = dict(loss_weighting=weighting, inv_snr_cap=20.0)
    loss_net, net = _fixed_output_loss("base", out, foreground_weight=10.0, foreground_threshold=0.1, **kw)
    total = float(loss_net(*_inputs("base", x0, noise, t)).asnumpy())
    _, ref_vb = _numpy_reference("base", x0, noise, out, t)
    x = x0.astype(np.float64)
    border = np.concatenate([x[:, :, 0, :], x[:, :, -1, :], x[:, :, :, 0], x[:, :, :, -1]], 2).mean(2)
    fg = (np.abs(x - border[:, :, None, None]).max(1, keepdims=True) > 0.1).astype(np.float64)
    assert fg[:b - 1].sum((1, 2, 3)).min() == 9 and fg[b - 1].sum() == 0
    wpix = 1.0 + 10.0 * fg
    err = noise.astype(np.float64) - out[:, :3]
    mse = (wpix * err ** 2).sum((1, 2, 3)) / (c * wpix.sum((1, 2, 3)))
    assert abs(mse[b - 1] - (err[b - 1] ** 2).mean()) < 1e-12
    wt = _closed_form_weights(weighting, t, "base")
    want = float(np.mean(wt * mse + ref_vb))
    assert abs(total - want) <= 1e-5 * max(1.0, abs(want)), (total, want)
    g = ms.grad(loss_net, grad_position=None, weights=[net.out])(*_inputs("base", x0, noise, t))[0].asnumpy()
    closed = -2.0 * wt[:, None, None, None] * wpix * err / (c * wpix.sum((1, 2, 3), keepdims=True)) / b
    assert np.abs(g[:, :3] - closed).max() <= 1e-9 + 1e-5 * np.abs(closed).max()
    plain, pnet = _fixed_output_loss("base", out, **kw)
    gp = ms.grad(plain, grad_position=None, weights=[pnet.out])(*_inputs("base", x0, noise, t))[0].asnumpy()
    assert np.abs(g[:, 3:] - gp[:, 3:]).max() <= 1e-7 * np.abs(gp[:, 3:]).max()


def test_unknown_loss_weighting_is_one_clear_line():
    from mind_diffusion.config import ConfigError

    x0, noise, out, t = _tensors(seed=6)
    with pytest.raises(ConfigError, match="diffusion.loss_weighting must be one of none, min_snr, inv_snr"):
        _fixed_output_loss("base", out, loss_weighting="snr")


def _pooled_sq(err, k):
    """mean over (C, H/k, W/k) of the squared k x k block means of ``err`` (B, C, H, W), float64."""
    b, c, h, w = err.shape
    return np.square(err.astype(np.float64).reshape(b, c, h // k, k, w // k, k).mean((3, 5))).mean((1, 2, 3))


@pytest.mark.parametrize("weighting", ["none", "min_snr", "inv_snr"])
def test_multiscale_terms_against_closed_form(ms_mode, weighting):
    """``multiscale_pools=(2, 8)`` on 8 x 8 images, weights (0.5, 0.25): the eps term gains
    ``weight * k^2 * mean(avgpool_k(err)^2)`` per pool (k = 8: the mean colour), weighted by w_t like the per-pixel term; the gradient on eps
    is the closed form; v's gradient (the VLB) is unchanged."""
    import mindspore as ms

    x0, noise, out, t = _tensors(seed=7)
    out = out.copy()
    out[:, :3] += 0.2 * np.arange(1, 4, dtype=np.float32)[None, :, None, None]  # an error with a mean colour
    kw = dict(loss_weighting=weighting, min_snr_gamma=5.0, inv_snr_cap=20.0)
    loss_net, net = _fixed_output_loss("base", out, multiscale_pools=(2, 8), multiscale_weight=(0.5, 0.25), **kw)
    total = float(loss_net(*_inputs("base", x0, noise, t)).asnumpy())
    ref_mse, ref_vb = _numpy_reference("base", x0, noise, out, t)
    err = noise.astype(np.float64) - out[:, :3]
    extra = 0.5 * 4 * _pooled_sq(err, 2) + 0.25 * 64 * _pooled_sq(err, 8)
    w = _closed_form_weights(weighting, t, "base")
    assert extra.min() > 0.5 * ref_mse.min()  # the mean colour's error is visible at last
    want = float(np.mean(w * (ref_mse + extra) + ref_vb))
    assert abs(total - want) <= 1e-5 * max(1.0, abs(want)), (total, want)
    g = ms.grad(loss_net, grad_position=None, weights=[net.out])(*_inputs("base", x0, noise, t))[0].asnumpy()
    b, c, h, w_ = noise.shape
    bm = lambda k: np.repeat(np.repeat(err.reshape(b, c, h // k, k, w_ // k, k).mean((3, 5)), k, 2), k, 3)  # noqa: E731
    # d/d eps of k^2 mean_blocks(block_mean^2) = -2 k^2 block_mean / (n_blocks * k^2) = -2 block_mean / n_blocks
    closed = -2.0 * w[:, None, None, None] * (err / (c * h * w_) + 0.5 * bm(2) / (c * (h // 2) * (w_ // 2))
                                              + 0.25 * bm(8) / c) / b
    assert np.abs(g[:, :3] - closed).max() <= 1e-9 + 1e-5 * np.abs(closed).max()
    plain, pnet = _fixed_output_loss("base", out, **kw)
    gp = ms.grad(plain, grad_position=None, weights=[pnet.out])(*_inputs("base", x0, noise, t))[0].asnumpy()
    assert np.abs(g[:, 3:] - gp[:, 3:]).max() <= 1e-7 * np.abs(gp[:, 3:]).max()


def test_multiscale_pools_are_checked_against_the_training_size():
    from mind_diffusion.config import ConfigError, load_config
    from mind_diffusion.config import to_plain
    from mind_diffusion.glide.training import (check_multiscale_pools, glide_train_config_defaults,
                                               multiscale_terms, train_size)

    def multiscale_pools(cfg):  # the pools alone, whatever the weights say
        pools = to_plain(cfg.diffusion.multiscale_pools)
        return check_multiscale_pools(pools, train_size(cfg)) if pools else ()

    def multiscale_weights(cfg):
        return multiscale_terms(cfg)[1]

    def pools(*ov):
        return multiscale_pools(load_config(str(ROOT / "configs/glide/shapes-base.yaml"), list(ov),
                                            glide_train_config_defaults()))

    assert pools("diffusion.multiscale_pools=[]") == () and pools("diffusion.multiscale_pools=[8,64]") == (8, 64)
    cfg = load_config(str(ROOT / "configs/glide/shapes-base.yaml"),
                      ["diffusion.multiscale_pools=[8,64]", "diffusion.multiscale_weight=[0.1,0.01]"],
                      glide_train_config_defaults())
    assert multiscale_weights(cfg) == (0.1, 0.01)
    cfg.diffusion.multiscale_weight = 0.5
    assert multiscale_weights(cfg) == (0.5, 0.5)
    for bad, msg in (([0.1], "lists 1 weight"), ([0.1, -1], "multiscale_weight")):
        cfg.diffusion.multiscale_weight = bad
        with pytest.raises(ConfigError, match=msg):
            multiscale_weights(cfg)
    for bad in ("[6]", "[1]", "[128]", "[abc]", "[8,8]"):
        with pytest.raises(ConfigError, match="diffusion.multiscale_pools"):
            pools(f"diffusion.multiscale_pools={bad}")
    # the SR stage trains on crops: the pools divide the crop, not the image
    sr = ROOT / "configs/glide/shapes-sr.yaml"
    cfg = load_config(str(sr), ["diffusion.multiscale_pools=[64]"], glide_train_config_defaults())
    crop = int(cfg.data.crop_size)
    assert crop == 64 and multiscale_pools(cfg) == (64,)  # 64 px crops of the 256 px images
    with pytest.raises(ConfigError, match=f"divides the training size {crop}"):
        multiscale_pools(load_config(str(sr), [f"diffusion.multiscale_pools=[{2 * crop}]"],
                                     glide_train_config_defaults()))


_MODES = {}


@pytest.mark.parametrize("stage", ["base", "sr"])
def test_graph_and_pynative_give_the_same_loss(ms_mode, stage):
    """The loss cell in this mode against the closed form, and against the other mode."""
    x0, noise, out, t = _tensors(seed=5)
    loss_net, _ = _fixed_output_loss(stage, out)
    loss = float(loss_net(*_inputs(stage, x0, noise, t)).asnumpy())
    ref_mse, ref_vb = _numpy_reference(stage, x0, noise, out, t)
    assert abs(loss - float(np.mean(ref_mse + ref_vb))) <= 1e-5
    _MODES[(stage, ms_mode)] = loss
    if (stage, "graph") in _MODES and (stage, "pynative") in _MODES:
        assert abs(_MODES[(stage, "graph")] - _MODES[(stage, "pynative")]) <= 1e-6, _MODES


# ------------------------------------------------------------------------------------------ data
def test_original_list_format_comments_malformed_and_alternatives(tmp_path):
    from mind_diffusion.glide.training import read_image_caption_path_file
    from mind_diffusion.train.data import DataError

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "caps.txt").write_text("x.png\t红色 圆形\n\nbroken line without a tab\ny.png\t蓝色\t绿色 方块\n"
                                             "z.png\t\t\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("w.png\t星形\n", encoding="utf-8")
    (tmp_path / "list.txt").write_text("# comment\n\na/caps.txt a/img\n  # another\nb.txt imgs\n", encoding="utf-8")
    pairs, bad = read_image_caption_path_file("list.txt", tmp_path)
    assert pairs == [(tmp_path / "a/img/x.png", ["红色 圆形"]), (tmp_path / "a/img/y.png", ["蓝色", "绿色 方块"]),
                     (tmp_path / "imgs/w.png", ["星形"])]
    assert bad == 2  # the line without a tab and the one whose captions are empty
    with pytest.raises(DataError, match="data list not found: .*nope.txt"):
        read_image_caption_path_file("nope.txt", tmp_path)
    (tmp_path / "l2.txt").write_text("a/caps.txt\n", encoding="utf-8")
    with pytest.raises(DataError, match="must be '<captions file> <image root>'"):
        read_image_caption_path_file("l2.txt", tmp_path)


def test_csv_kind_reads_the_ldm_format(shapes_data, tokenizer):
    from omegaconf import OmegaConf

    from mind_diffusion.glide.training import GlideImageText, glide_train_config_defaults, read_pairs

    cfg = OmegaConf.merge(glide_train_config_defaults(), {"data": {"kind": "csv", "path": str(shapes_data)}})
    pairs, bad = read_pairs(cfg)
    rows = (shapes_data / "data.csv").read_text(encoding="utf-8").splitlines()[1:]
    assert bad == 0 and len(pairs) == N_IMAGES
    assert [(Path(p).name, c) for p, c in pairs] == [(Path(r.split(",", 1)[0]).name, [r.split(",", 1)[1]]) for r in rows]
    data = GlideImageText(pairs, tokenizer, (16,))
    assert len(data) == N_IMAGES and data.image(0, 16).shape == (16, 16, 3)
    cap_pairs, _ = read_pairs(OmegaConf.merge(cfg, {"data": {"kind": "captions", "image_caption_path_file": "list.txt"}}))
    assert [(Path(p).name, c) for p, c in cap_pairs] == [(Path(p).name, c) for p, c in pairs]


def test_center_crop_matches_pil_on_a_non_square_image():
    from PIL import Image

    from mind_diffusion.glide.training import center_crop_arr

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (97, 150, 3)).astype(np.uint8)   # H 97, W 150
    for size in (32, 16, 64):
        im = Image.fromarray(img)
        w, h = 150, 97
        while min(w, h) >= 2 * size:                             # box-filter halvings
            w, h = w // 2, h // 2
            im = im.resize((w, h), Image.BOX)
        s = size / min(w, h)
        w, h = round(w * s), round(h * s)
        im = im.resize((w, h), Image.BICUBIC)
        left, top = (w - size) // 2, (h - size) // 2
        want = np.asarray(im.crop((left, top, left + size, top + size)))
        got = center_crop_arr(img, size)
        assert got.shape == (size, size, 3) and np.array_equal(got, want), size


def _max_filter(a: np.ndarray, w: int) -> np.ndarray:
    """(B, 1, H, W) max over each pixel's in-image (2w + 1)^2 window, written out in numpy."""
    b, _, h, wd = a.shape
    out = np.empty_like(a)
    for i in range(h):
        for j in range(wd):
            out[:, :, i, j] = a[:, :, max(0, i - w):i + w + 1, max(0, j - w):j + w + 1].max((2, 3))
    return out


@pytest.mark.parametrize("width", [1, 2])
def test_edge_weighting_against_closed_form(ms_mode, width):
    """``edge_weight=5`` (with ``foreground_weight=10``): pixels within ``edge_width`` of the object's outline
    (the mask dilated by a (2w + 1)^2 window less the mask eroded by it, windows cut at the image's border)
    weigh 5 more; an 8 x 8 image with a 3 x 3 object and one touching the border, and one without any (no
    band: the plain mean); the loss and the eps gradient against the float64 closed form."""
    import mindspore as ms

    _, noise, out, t = _tensors(seed=9)
    b, c, h, w_ = noise.shape
    x0 = np.full((b, 3, h, w_), -0.5, np.float32)
    for i in range(b - 2):
        x0[i, :, 3:6, 2 + i % 2:5 + i % 2] = 0.6                                   # a 3 x 3 object
    x0[b - 2, :, 0:3, 5:8] = 0.6                                                   # one in the corner
    kw = dict(foreground_weight=10.0, foreground_threshold=0.1, edge_weight=5.0, edge_width=width)
    loss_net, net = _fixed_output_loss("base", out, **kw)
    total = float(loss_net(*_inputs("base", x0, noise, t)).asnumpy())
    _, ref_vb = _numpy_reference("base", x0, noise, out, t)
    x = x0.astype(np.float64)
    border = np.concatenate([x[:, :, 0, :], x[:, :, -1, :], x[:, :, :, 0], x[:, :, :, -1]], 2).mean(2)
    fg = (np.abs(x - border[:, :, None, None]).max(1, keepdims=True) > 0.1).astype(np.float64)
    band = _max_filter(fg, width) - (1.0 - _max_filter(1.0 - fg, width))
    assert band[b - 1].sum() == 0 and band[0].sum() == (3 + 2 * width) ** 2 - max(0, 3 - 2 * width) ** 2
    wpix = 1.0 + 10.0 * fg + 5.0 * band
    err = noise.astype(np.float64) - out[:, :3]
    mse = (wpix * err ** 2).sum((1, 2, 3)) / (c * wpix.sum((1, 2, 3)))
    want = float(np.mean(mse + ref_vb))
    assert abs(total - want) <= 1e-5 * max(1.0, abs(want)), (total, want)
    g = ms.grad(loss_net, grad_position=None, weights=[net.out])(*_inputs("base", x0, noise, t))[0].asnumpy()
    closed = -2.0 * wpix * err / (c * wpix.sum((1, 2, 3), keepdims=True)) / b
    assert np.abs(g[:, :3] - closed).max() <= 1e-9 + 1e-5 * np.abs(closed).max()
    fg_only, _ = _fixed_output_loss("base", out, foreground_weight=10.0, foreground_threshold=0.1)
    assert abs(float(fg_only(*_inputs("base", x0, noise, t)).asnumpy()) - total) > 1e-4  # the band counts


def _source(tokenizer, shapes_data, **kw):
    from mind_diffusion.glide.training import GlideBatches, GlideImageText, read_image_caption_path_file

    pairs, _ = read_image_caption_path_file("list.txt", shapes_data)
    data = GlideImageText(pairs, tokenizer, (16, 8))
    args = dict(batch_size=4, image_size=16, low_res_size=8, seed=7)
    args.update(kw)
    return GlideBatches(data, tokenizer.end_token, 16, **args)


def test_caption_dropout_gives_the_unconditional_tokens(tokenizer, shapes_data):
    src = _source(tokenizer, shapes_data, text_drop_p=0.2)
    dropped = total = 0
    for step in range(150):
        _, tokens, mask, t, noise, low = src[step]
        drop = src.randomness(step)["drop"]
        assert np.all(tokens[drop] == tokenizer.end_token) and not np.any(mask[drop])
        assert np.all(mask[~drop].sum(1) > 0)
        dropped += int(drop.sum())
        total += len(drop)
    frac = dropped / total
    print(f"\n[glide-train] caption dropout: {frac:.3f} of {total} rows (text_drop_p 0.2)")
    assert abs(frac - 0.2) < 0.06
    assert 0 <= t.min() and t.max() < 1000 and low.shape == (4, 3, 8, 8)
    none = _source(tokenizer, shapes_data, text_drop_p=0.0)
    assert all(np.all(none[s][2].sum(1) > 0) for s in range(5))


def test_batches_are_a_function_of_the_step_and_ranks_split_them(tokenizer, shapes_data):
    one = _source(tokenizer, shapes_data)
    again = _source(tokenizer, shapes_data)
    for step in (0, 3, 11):
        a, b = one[step], again[step]
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
        halves = [_source(tokenizer, shapes_data, batch_size=2, rank=r, group_size=2)[step] for r in (0, 1)]
        for col, whole in enumerate(a):
            assert np.array_equal(np.concatenate([h[col] for h in halves]), whole), (step, col)
    assert not np.array_equal(one[0][0], one[1][0]) and not np.array_equal(one[0][4], one[1][4])


def test_offset_noise_adds_one_constant_per_image_and_channel(tokenizer, shapes_data):
    """offset_noise=0.5: the noise is the plain run's noise plus 0.5 x N(0, 1) per (image, channel), the
    same on every pixel; every other column is the plain run's; ranks still split the global batch."""
    plain = _source(tokenizer, shapes_data)
    off = _source(tokenizer, shapes_data, offset_noise=0.5)
    consts = []
    for step in range(60):
        a, b = plain[step], off[step]
        assert all(np.array_equal(x, y) for i, (x, y) in enumerate(zip(a, b)) if i != 4)
        d = b[4].astype(np.float64) - a[4]
        assert np.abs(d - d[:, :, :1, :1]).max() <= 1e-6  # constant over the image
        consts.append(d[:, :, 0, 0].ravel())
    c = np.concatenate(consts)
    assert abs(c.std() - 0.5) < 0.05 and abs(c.mean()) < 0.06, (c.mean(), c.std())
    halves = [_source(tokenizer, shapes_data, batch_size=2, rank=r, group_size=2, offset_noise=0.5)[3] for r in (0, 1)]
    assert np.array_equal(np.concatenate([h[4] for h in halves]), off[3][4])
    from mind_diffusion.config import ConfigError

    with pytest.raises(ConfigError, match="diffusion.offset_noise"):
        _source(tokenizer, shapes_data, offset_noise=2.0)


def _plain_and_focused_t(plain, focus, steps: int):
    """The t columns of two batch sources over ``steps`` steps, after checking that every other column
    is the same."""
    t_plain, t_focus = [], []
    for step in range(steps):
        a, b = plain[step], focus[step]
        assert all(np.array_equal(x, y) for i, (x, y) in enumerate(zip(a, b)) if i != 3)
        t_plain.append(a[3])
        t_focus.append(b[3])
    return np.concatenate(t_plain), np.concatenate(t_focus)


def test_t_focus_redraws_a_fraction_of_the_timesteps(tokenizer, shapes_data):
    """t_focus_range [600, 800) with fraction 0.5: every column but t is the plain run's; each t is either the
    plain run's or redrawn inside the range, about half of them; ranks still split the global batch; a bad
    range or fraction is one ConfigError line."""
    focus = _source(tokenizer, shapes_data, t_focus_range=[600, 800], t_focus_fraction=0.5)
    tp, tf = _plain_and_focused_t(_source(tokenizer, shapes_data), focus, 100)
    assert tf.dtype == np.int32
    moved = tf != tp
    assert np.all((tf[moved] >= 600) & (tf[moved] < 800))
    inside = np.mean((tf >= 600) & (tf < 800))
    assert abs(inside - (0.5 + 0.5 * 0.2)) < 0.06, inside            # 0.5 redrawn + 0.5 x 200 / 1000
    assert abs(np.mean((tp >= 600) & (tp < 800)) - 0.2) < 0.06
    halves = [_source(tokenizer, shapes_data, batch_size=2, rank=r, group_size=2, t_focus_range=[600, 800])[5]
              for r in (0, 1)]
    assert np.array_equal(np.concatenate([h[3] for h in halves]), focus[5][3])
    from mind_diffusion.config import ConfigError

    for rng_, frac, needle in (([800, 600], 0.5, "t_focus_range"), ([0, 1001], 0.5, "t_focus_range"),
                               ([100], 0.5, "t_focus_range"), ([100.5, 200], 0.5, "t_focus_range"),
                               ([100, 200], 0.0, "t_focus_fraction"), ([100, 200], 1.5, "t_focus_fraction")):
        with pytest.raises(ConfigError, match=needle):
            _source(tokenizer, shapes_data, t_focus_range=rng_, t_focus_fraction=frac)


def test_t_focus_over_several_ranges(tokenizer, shapes_data):
    """Two ranges with fractions 0.25 / 0.25: each moved t lies in one of them, about a quarter of the batch
    lands in each (their own share plus the plain draws that fall there); with one range given as a list of
    one, the draws are those of the single-range form; fractions of the wrong count, or summing above 1, are
    one ConfigError line each."""
    two = _source(tokenizer, shapes_data, t_focus_range=[[50, 250], [600, 800]], t_focus_fraction=[0.25, 0.25])
    tp, tt = _plain_and_focused_t(_source(tokenizer, shapes_data), two, 120)
    moved = tt != tp
    in_a, in_b = (tt >= 50) & (tt < 250), (tt >= 600) & (tt < 800)
    assert np.all(in_a[moved] | in_b[moved])
    assert abs(np.mean(moved) - 0.5) < 0.06, np.mean(moved)  # half redrawn (one may land on its own t, rarely)
    for inside in (in_a, in_b):
        assert abs(np.mean(inside) - (0.25 + 0.5 * 0.2)) < 0.06, np.mean(inside)  # 0.25 redrawn + 0.5 x 200 / 1000
    one = _source(tokenizer, shapes_data, t_focus_range=[600, 800], t_focus_fraction=0.3)
    listed = _source(tokenizer, shapes_data, t_focus_range=[[600, 800]], t_focus_fraction=[0.3])
    for step in (0, 7):
        assert np.array_equal(one[step][3], listed[step][3])
    from mind_diffusion.config import ConfigError

    for rng_, frac, needle in (([[50, 250], [600, 800]], 0.5, "list of 2 numbers"),
                               ([[50, 250], [600, 800]], [0.5], "list of 2 numbers"),
                               ([[50, 250], [600, 800]], [0.6, 0.6], "sums to 1.2"),
                               ([[50, 250], [800, 600]], [0.2, 0.2], "t_focus_range"),
                               ([[50, 250], [600, 800]], [0.2, 0.0], r"t_focus_fraction\[1\]")):
        with pytest.raises(ConfigError, match=needle):
            _source(tokenizer, shapes_data, t_focus_range=rng_, t_focus_fraction=frac)


# ------------------------------------------------------------------------ flags and learning rate
def test_original_flags_map_onto_the_config(tmp_path):
    from mind_diffusion.config import load_config
    from mind_diffusion.glide.training import glide_train_config_defaults
    from scripts.train_glide import build_parser, overrides_from_flags

    args = build_parser().parse_args(
        ["--batch_size", "2", "--epochs", "1", "--image_caption_path_file", "list.txt", "--data_path", "D",
         "--start_learning_rate", "1e-4", "--end_learning_rate", "1e-9", "--save_checkpoint_steps", "1",
         "--output_path", "O", "--is_super_res", "false"])
    ov = overrides_from_flags(args)
    cfg = load_config(str(ROOT / "configs/glide/train-gen.yaml"), ov, glide_train_config_defaults())
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.train.ckpt_every, cfg.train.keep_checkpoints) == (2, 1, 1, 1)
    assert (cfg.train.start_learning_rate, cfg.train.end_learning_rate) == (1e-4, 1e-9)
    assert (cfg.data.image_caption_path_file, cfg.data.path, cfg.train.output_dir) == ("list.txt", "D", "O")
    assert cfg.model.stage == "base"
    sr = build_parser().parse_args(["--is_super_res", "true", "--pretrained_model_path", "/m", "--pretrained_model",
                                    "glide_super_res.ckpt", "--cog_model", "cog-pretrain.model"])
    cfg = load_config(str(ROOT / "configs/glide/train-super-res.yaml"), overrides_from_flags(sr),
                      glide_train_config_defaults())
    assert (cfg.model.stage, cfg.init.checkpoint, cfg.tokenizer.sp_model) == (
        "sr", "/m/glide_super_res.ckpt", "/m/cog-pretrain.model")


def test_learning_rate_is_the_originals_cosine(tmp_path, shapes_sp, shapes_data):
    import mindspore as ms
    from mindspore import Tensor

    from mind_diffusion.config import load_config
    from mind_diffusion.glide.training import build_glide_trainer, glide_train_config_defaults
    from mind_diffusion.runtime import init_runtime
    from mind_diffusion.train.schedules import lr_at

    cfg_path = tiny_cfg(tmp_path, shapes_sp, shapes_data, steps=0, epochs=1, start_learning_rate=1e-4,
                        end_learning_rate=1e-9)
    cfg = load_config(str(cfg_path), [], glide_train_config_defaults())
    rt = init_runtime("CPU", "pynative", seed=0, verbose=False)
    trainer, _ = build_glide_trainer(cfg, rt, progress=False)
    decay = N_IMAGES // 2                                    # the original: batches per epoch x epochs
    assert trainer.opts.total_steps == decay
    sched = trainer.train_step.optimizer.learning_rate
    for s in range(decay + 2):
        want = 1e-9 + 0.5 * (1e-4 - 1e-9) * (1 + math.cos(math.pi * min(s, decay) / decay))
        got = float(sched(Tensor(s, ms.int32)).asnumpy())
        assert abs(got - want) <= 1e-6 * 1e-4 and abs(lr_at(s, 1e-4, 1e-9, 0, decay) - want) <= 1e-18


def test_text_side_holds_still_until_its_start_step(tmp_path, shapes_sp, shapes_data, capsys):
    """``train.text_encoder_start_step=2``: after 2 updates the text side (embeddings, text transformer,
    final_ln) is bit-identical to the start while the UNet and transformer_proj moved; the third update
    moves it. A start step at or past the run's end is one clear line."""
    from mind_diffusion.checkpoint.io import read_checkpoint
    from mind_diffusion.config import load_config
    from mind_diffusion.glide.training import TEXT_SIDE_PREFIXES, build_glide_trainer, glide_train_config_defaults
    from mind_diffusion.runtime import init_runtime

    init = _tiny_checkpoint("base", tmp_path / "glide_gen.ckpt", seed=5)
    cfg_path = tiny_cfg(tmp_path, shapes_sp, shapes_data, steps=3, ckpt_every=1, text_encoder_start_step=2)
    cfg = load_config(str(cfg_path), [f"init.checkpoint={tmp_path / 'glide_gen.ckpt'}"], glide_train_config_defaults())
    trainer, make = build_glide_trainer(cfg, init_runtime("CPU", "pynative", seed=0, verbose=False), progress=False)
    assert "(text side trained from step 2)" in capsys.readouterr().out
    trainer.fit(make)
    ck = tmp_path / "run" / "checkpoints"
    two, three = read_checkpoint(ck / "step_0000002.ckpt"), read_checkpoint(ck / "step_0000003.ckpt")
    text = [k for k in init if k.startswith(TEXT_SIDE_PREFIXES)]
    assert len(text) > 10 and "transformer_proj.weight" not in text
    for k in text:
        assert np.array_equal(two[k], init[k].astype(two[k].dtype)), k
    assert any(not np.array_equal(three[k], two[k]) for k in text)
    for k in ("transformer_proj.weight", "input_blocks.0.0.conv.weight"):  # updated (weight decay at least)
        assert not np.array_equal(two[k], init[k].astype(two[k].dtype)), k
    rc = _train_main(capsys, cfg_path, "--overwrite", "train.text_encoder_start_step=3")
    captured_error(capsys, rc, "train.text_encoder_start_step=3 is not below the 3 training steps")


def test_frozen_prefixes_hold_their_tensors(tmp_path, shapes_sp, shapes_data, capsys):
    """``train.frozen_prefixes [middle_block, input_blocks.1]``: after 2 updates those tensors (and the EMA
    export's) are bit-identical to the init checkpoint while the rest moved; ``input_blocks.1`` does not
    hold ``input_blocks.10``-style neighbours; the summary counts what trains. A prefix naming nothing,
    or a list holding everything, is one clear line."""
    from mind_diffusion.checkpoint.io import read_checkpoint
    from mind_diffusion.config import load_config
    from mind_diffusion.glide.training import build_glide_trainer, glide_train_config_defaults
    from mind_diffusion.runtime import init_runtime

    init = _tiny_checkpoint("base", tmp_path / "glide_gen.ckpt", seed=7)
    cfg_path = tiny_cfg(tmp_path, shapes_sp, shapes_data, steps=2, ckpt_every=1, ema_decay=0.9,
                        frozen_prefixes=["middle_block", "input_blocks.1"])
    cfg = load_config(str(cfg_path), [f"init.checkpoint={tmp_path / 'glide_gen.ckpt'}"], glide_train_config_defaults())
    trainer, make = build_glide_trainer(cfg, init_runtime("CPU", "pynative", seed=0, verbose=False), progress=False)
    held = [k for k in init if k.startswith(("middle_block.", "input_blocks.1."))]
    moving = [k for k in init if k not in held and k.endswith("weight") and init[k].ndim > 1]
    assert len(held) > 5 and len(moving) > 5
    n_held = sum(int(np.prod(init[k].shape)) for k in held)
    n_all = sum(int(np.prod(init[k].shape)) for k in init)
    assert f"{n_all - n_held:,} parameters trained ({n_held:,} held still by train.frozen_prefixes)" \
        in capsys.readouterr().out
    trainer.fit(make)
    two = read_checkpoint(tmp_path / "run" / "checkpoints" / "step_0000002.ckpt")
    ema = {k.split("guider_net.")[-1]: v for k, v in read_checkpoint(tmp_path / "run" / "glide_gen_ema.ckpt").items()}
    for k in held:
        assert np.array_equal(two[k], init[k].astype(two[k].dtype)), k
        assert np.array_equal(ema[k], init[k].astype(ema[k].dtype)), k
    assert all(not np.array_equal(two[k], init[k].astype(two[k].dtype)) for k in moving)
    from types import SimpleNamespace

    from mind_diffusion.glide.training import frozen_parameter_names

    stub = SimpleNamespace(get_parameters=lambda: [SimpleNamespace(name=n, requires_grad=True) for n in
                                                   ("input_blocks.1.0.w", "input_blocks.10.0.w", "out.w")])
    assert frozen_parameter_names(stub, ["input_blocks.1"]) == {"input_blocks.1.0.w"}
    assert frozen_parameter_names(stub, ["input_blocks.1.", "out.w"]) == {"input_blocks.1.0.w", "out.w"}
    for prefixes, needle in ((["midle_block"], "'midle_block' names no parameter"),
                             (sorted({k.split(".")[0] for k in init}), "holds every parameter still")):
        rc = _train_main(capsys, cfg_path, "--overwrite", f"train.frozen_prefixes=[{','.join(prefixes)}]")
        captured_error(capsys, rc, needle)


# ------------------------------------------------------------------ bad input, fine-tune starts
def _earlier_run(out: Path) -> dict:
    """A run folder of an earlier run; returns its files' bytes."""
    (out / "checkpoints").mkdir(parents=True)
    for name, text in (("glide_gen.ckpt", "old model"), ("metrics.csv", "step,loss\n2,0.5\n"),
                       ("config.yaml", "train: {}\n"), ("checkpoints/step_0000002.ckpt", "old state"),
                       ("checkpoints/latest.txt", "step_0000002.ckpt\n")):
        (out / name).write_text(text)
    return _files(out)


def _files(out: Path) -> dict:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _copy_data(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _train_main(capsys, cfg: Path, *args):
    from scripts import train_glide

    capsys.readouterr()
    return train_glide.main(["--config", str(cfg), "--device_target", "CPU", "--mode", "pynative", "--no_progress",
                             *map(str, args)])


@pytest.mark.parametrize("case", ["missing list", "corrupt image", "empty caption", "batch", "unknown key", "cap", "foreground",
                                  "edge", "focus", "focus fractions"])
def test_bad_input_one_line_exit_2_earlier_run_kept(case, tmp_path, shapes_sp, shapes_data, capsys):
    data = _copy_data(shapes_data, tmp_path / "data")
    cfg = tiny_cfg(tmp_path, shapes_sp, data)
    before = _earlier_run(tmp_path / "run")
    extra, strict = [], True
    if case == "missing list":
        extra, strict, needles = ["data.image_caption_path_file=nope.txt"], False, ("data list not found", "nope.txt")
    elif case == "corrupt image":
        (data / "images" / "00003.png").write_bytes(b"not a png at all")
        needles = ("1 image(s) missing or unreadable", "00003.png", "of 12 rows")
    elif case == "empty caption":
        caps = (data / "caps.txt").read_text(encoding="utf-8").splitlines()
        caps[5] = caps[5].split("\t")[0] + "\t\u200b"       # not whitespace, yet no token
        (data / "caps.txt").write_text("\n".join(caps) + "\n", encoding="utf-8")
        needles = ("1 row(s) whose captions tokenize to nothing", "of 12 rows")
    elif case == "batch":
        extra, strict, needles = ["train.batch_size=13"], False, ("12 image-text pairs", "global batch of 13",
                                                                  "lower train.batch_size")
    elif case == "cap":
        extra, strict, needles = ["diffusion.loss_weighting=inv_snr", "diffusion.inv_snr_cap=0.5"], False, (
            "diffusion.inv_snr_cap must be", "0.5")
    elif case == "foreground":
        extra, strict, needles = ["diffusion.foreground_weight=-1"], False, ("diffusion.foreground_weight must be",
                                                                            "-1")
    elif case == "edge":
        extra, strict, needles = ["diffusion.edge_weight=2", "diffusion.edge_width=0"], False, (
            "diffusion.edge_width must be", "0")
    elif case == "focus":
        extra, strict, needles = ["diffusion.t_focus_range=[700,300]"], False, ("diffusion.t_focus_range must be",
                                                                             "[700, 300]")
    elif case == "focus fractions":  # two ranges from the command line, the default single fraction
        extra, strict, needles = ["diffusion.t_focus_range=[[50,450],[400,850]]"], False, (
            "diffusion.t_focus_fraction must be a list of 2 numbers", "got None")
    else:
        extra, strict, needles = ["train.btch_size=2"], False, ("unknown config key 'train.btch_size'",)
    rc = _train_main(capsys, cfg, "--overwrite", *(["--strict"] if strict else []), *extra)
    captured_error(capsys, rc, *needles)
    assert _files(tmp_path / "run") == before
    if strict:  # without --strict the row is skipped, counted and training goes on with the rest
        from mind_diffusion.config import load_config
        from mind_diffusion.glide.training import build_glide_trainer, glide_train_config_defaults
        from mind_diffusion.runtime import init_runtime

        c = load_config(str(cfg), [f"train.output_dir={tmp_path / 'run2'}"], glide_train_config_defaults())
        trainer, _ = build_glide_trainer(c, init_runtime("CPU", "pynative", seed=0, verbose=False), progress=False)
        out = capsys.readouterr().out
        assert len(trainer.source.data) == N_IMAGES - 1 and "skipped; training uses the other 11" in out
        assert needles[0] in out and "11 image-text pairs (1 skipped)" in out


def _tiny_checkpoint(stage: str, path: Path, seed: int, n_vocab: int = 101) -> dict:
    import mindspore as ms

    from mind_diffusion.glide.checkpoint import save_glide_checkpoint
    from mind_diffusion.glide.model import build_glide_base, build_glide_sr

    ms.set_seed(seed)
    net = (build_glide_base if stage == "base" else build_glide_sr)(dict(TINY_BASE if stage == "base" else TINY_SR,
                                                                          n_vocab=n_vocab))
    from mind_diffusion.glide.checkpoint import FP16_PARAMS

    save_glide_checkpoint(net, path)  # the released layout: the two embeddings stored in fp16
    return {p.name: p.asnumpy().astype(np.float16 if p.name in FP16_PARAMS else np.float32)
            for p in net.get_parameters()}


@pytest.mark.parametrize("stage", ["base", "sr"])
def test_fine_tune_start_loads_strictly(stage, tmp_path, shapes_sp, shapes_data):
    from mind_diffusion.config import load_config
    from mind_diffusion.glide.training import build_glide_trainer, glide_train_config_defaults
    from mind_diffusion.runtime import init_runtime

    name = {"base": "glide_gen.ckpt", "sr": "glide_super_res.ckpt"}[stage]
    want = _tiny_checkpoint(stage, tmp_path / name, seed=11)
    cfg = load_config(str(tiny_cfg(tmp_path, shapes_sp, shapes_data, stage)), [f"init.checkpoint={tmp_path / name}"],
                      glide_train_config_defaults())
    trainer, _ = build_glide_trainer(cfg, init_runtime("CPU", "pynative", seed=0, verbose=False), progress=False)
    got = {p.name: p.asnumpy() for p in trainer.model.get_parameters()}
    assert sorted(got) == sorted(want)
    assert all(np.array_equal(got[k], want[k].astype(got[k].dtype)) for k in want)


def test_fresh_text_side_keeps_the_initial_text_weights_and_loads_the_rest(tmp_path, shapes_sp, shapes_data,
                                                                            capsys):
    """init.fresh_text_side: the text side (TEXT_SIDE_PREFIXES) is the network's own fresh
    initialisation (the same as a run without init.checkpoint), every other tensor the checkpoint's;
    the checkpoint's text side may have another shape (here another vocabulary, as from another
    tokenizer); without a checkpoint the key is one clear line and nothing is written."""
    from mind_diffusion.config import load_config
    from mind_diffusion.glide.training import TEXT_SIDE_PREFIXES, build_glide_trainer, glide_train_config_defaults
    from mind_diffusion.runtime import init_runtime

    want = _tiny_checkpoint("base", tmp_path / "glide_gen.ckpt", seed=11, n_vocab=77)
    cfg_path = tiny_cfg(tmp_path, shapes_sp, shapes_data, "base")

    def params(*over):
        cfg = load_config(str(cfg_path), list(over), glide_train_config_defaults())
        trainer, _ = build_glide_trainer(cfg, init_runtime("CPU", "pynative", seed=0, verbose=False),
                                         progress=False)
        return {p.name: p.asnumpy() for p in trainer.model.get_parameters()}

    fresh = params(f"train.output_dir={tmp_path / 'fresh'}")
    got = params(f"init.checkpoint={tmp_path / 'glide_gen.ckpt'}", "init.fresh_text_side=true",
                 f"train.output_dir={tmp_path / 'mixed'}")
    assert "text-side tensors keep their fresh initial weights (init.fresh_text_side)" in capsys.readouterr().out
    text = [n for n in got if n.startswith(TEXT_SIDE_PREFIXES)]
    assert text and len(text) < len(got)
    for name, value in got.items():
        src = fresh if name.startswith(TEXT_SIDE_PREFIXES) else want
        assert np.array_equal(value, src[name].astype(value.dtype)), name
    assert want["token_embedding.embedding_table"].shape != got["token_embedding.embedding_table"].shape

    rc = _train_main(capsys, cfg_path, "--overwrite", f"init.checkpoint={tmp_path / 'glide_gen.ckpt'}",
                     f"train.output_dir={tmp_path / 'strict'}")
    captured_error(capsys, rc, "token_embedding")     # without the key: the strict load names the mismatch

    before = _earlier_run(tmp_path / "run")
    rc = _train_main(capsys, cfg_path, "--overwrite", "init.fresh_text_side=true")
    captured_error(capsys, rc, "init.fresh_text_side=true needs init.checkpoint")
    assert _files(tmp_path / "run") == before
    # refused with the config, before any data is read (here the data would be missing too)
    rc = _train_main(capsys, cfg_path, "--overwrite", "init.fresh_text_side=true", f"data.path={tmp_path / 'none'}")
    captured_error(capsys, rc, "init.fresh_text_side=true needs init.checkpoint")
    assert _files(tmp_path / "run") == before


@pytest.mark.parametrize("stage", ["base", "sr"])
def test_the_other_stages_checkpoint_is_refused(stage, tmp_path, shapes_sp, shapes_data, capsys):
    other = "sr" if stage == "base" else "base"
    name = {"base": "glide_gen.ckpt", "sr": "glide_super_res.ckpt"}[other]
    _tiny_checkpoint(other, tmp_path / name, seed=1)
    before = _earlier_run(tmp_path / "run")
    rc = _train_main(capsys, tiny_cfg(tmp_path, shapes_sp, shapes_data, stage), "--overwrite",
                     f"init.checkpoint={tmp_path / name}")
    captured_error(capsys, rc, str(tmp_path / name), f"not the {'GLIDE base' if stage == 'base' else 'GLIDE super'}",
                   "give each file to its own stage")
    assert _files(tmp_path / "run") == before


@pytest.mark.parametrize("stage", ["base", "sr"])
def test_full_size_export_has_the_released_names_shapes_dtypes(stage, shared_dir, monkeypatch):
    """What the trainer exports (glide_state of the stage) for the full-size nets, against the
    released files' manifest: names, order, shapes, dtypes. The nets are built without their
    random initialisation and their values read as zero views (the values are checked on the
    tiny nets)."""
    import json

    import mindspore as ms

    from mind_diffusion.glide.checkpoint import glide_state
    from mind_diffusion.glide.model import build_glide_base, build_glide_sr

    path = shared_dir / "reference" / "glide_param_manifest.json"
    if not path.is_file():
        pytest.skip(f"{path} not found (reference data lives in ../shared beside the repo)")
    entries = json.loads(path.read_text())["models"][{"base": "base_64", "sr": "sr_64_to_256"}[stage]][
        "params_checkpoint_names"]
    net = (build_glide_base if stage == "base" else build_glide_sr)(deferred_init=True)
    np_dtype = {ms.float32: np.float32, ms.float16: np.float16}
    monkeypatch.setattr(ms.Parameter, "asnumpy",
                        lambda self: np.broadcast_to(np.zeros((), np_dtype[self.dtype]), tuple(self.shape)))
    state = glide_state(net, stage)
    got = [(n, list(v.shape), {np.dtype(np.float32): "Float32", np.dtype(np.float16): "Float16"}[v.dtype])
           for n, v in state.items()]
    assert got == [(n, list(s), d) for n, s, d in entries]


def test_export_hands_over_the_parameters_and_writes_the_same_files(tmp_path, monkeypatch):
    """GlideTrainer.export gives save_atomic the Parameters themselves (of the net and of its EMA;
    only the small fp16 embeddings are converted), not a host copy of every tensor, and writes the
    same bytes as the copies did: the released layout, EMA weights over the net's own names."""
    from types import SimpleNamespace

    from mindspore import Parameter, Tensor

    from glide_tiny import randomize
    from mind_diffusion.checkpoint import io as ckio
    from mind_diffusion.glide import training as glide_training
    from mind_diffusion.glide.checkpoint import FP16_PARAMS, TRAINING_PREFIX, glide_state
    from mind_diffusion.glide.model import build_glide_base
    from mind_diffusion.train.step import EMA

    cfg = dict(TINY_BASE, n_vocab=101)
    net = randomize(build_glide_base(cfg), seed=3)
    ema = EMA(net, decay=0.5, start=0)
    for e in ema.ema:  # EMA weights unlike the live ones
        e.set_data(Tensor(e.asnumpy() * 0.5 + 0.25))
    given = []

    def capture(state, path, extra=None):
        given.append((Path(path).name, dict(state)))
        return ckio.save_atomic(state, path, extra=extra)

    monkeypatch.setattr(glide_training, "save_atomic", capture)
    fake = SimpleNamespace(rank=0, model=net, ema=ema, stage="base", out_dir=tmp_path, net_cfg=cfg,
                           tokenizer_cfg={"sp_model": "x.model"},
                           export_names=("glide_gen.ckpt", "glide_gen_ema.ckpt"))
    paths = glide_training.GlideTrainer.export(fake)
    assert [g[0] for g in given] == ["glide_gen.ckpt", "glide_gen_ema.ckpt"]
    live = {id(p) for p in net.get_parameters()} | {id(e) for e in ema.ema}
    for name, state in given:
        for k, v in state.items():
            if k[len(TRAINING_PREFIX):] in FP16_PARAMS:
                assert isinstance(v, np.ndarray) and v.dtype == np.float16, k
            else:
                assert isinstance(v, Parameter) and id(v) in live, (name, k)
    # byte for byte the files of host copies: the net, and the EMA's weights over the net's names
    want = ckio.save_atomic(glide_state(net, "base"), tmp_path / "copy.ckpt")
    assert paths["model"].read_bytes() == want.read_bytes()
    copy = glide_state(net, "base")
    for n, v in ema.model_state().items():
        copy[TRAINING_PREFIX + n] = v.astype(np.float16) if n in FP16_PARAMS else v
    want = ckio.save_atomic(copy, tmp_path / "copy_ema.ckpt")
    assert paths["ema"].read_bytes() == want.read_bytes()
    assert paths["ema"].read_bytes() != paths["model"].read_bytes()


# --------------------------------------------------------------- slow: runs of the training script
def _train(cfg: Path, *args):
    p = run_script("train_glide.py", "--config", cfg, "--device_target", "CPU", "--no_progress", *args, timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    return p


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, shapes_sp, shapes_data):
    """4 steps of the tiny base model in one run (decay over 4 steps, checkpoints at 2 and 4)."""
    d = tmp_path_factory.mktemp("glide_straight")
    cfg = tiny_cfg(d, shapes_sp, shapes_data, decay_steps=4)
    _train(cfg)
    return d / "run", cfg


@pytest.mark.slow
def test_resume_continues_exactly(straight_run, tmp_path):
    from mind_diffusion.checkpoint.io import read_checkpoint

    run, cfg = straight_run
    out = tmp_path / "run"
    _train(cfg, "train.steps=2", f"train.output_dir={out}")
    p = _train(cfg, "--resume", "auto", f"train.output_dir={out}")
    assert "step_0000002" in p.stdout + p.stderr
    a, b = read_checkpoint(out / "checkpoints/step_0000004.ckpt"), read_checkpoint(run / "checkpoints/step_0000004.ckpt")
    assert sorted(a) == sorted(b)
    diff = max(float(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)).max()) for k in a)
    print(f"\n[glide-train] 4 steps vs 2 + resume 2: {len(a)} tensors, max |difference| {diff:.1e}")
    assert diff <= 1e-7
    moved = read_checkpoint(run / "checkpoints/step_0000002.ckpt")
    assert max(float(np.abs(moved[k] - b[k]).max()) for k in b if k.startswith("input_blocks")) > 1e-6


def _check_released_layout(path: Path, stage: str, train_state: dict):
    """The export: every name under the released prefix, fp16 embeddings, loads strictly into a
    fresh net with the trained weights."""
    import yaml

    from mind_diffusion.checkpoint.io import read_checkpoint
    from mind_diffusion.glide.checkpoint import FP16_PARAMS, TRAINING_PREFIX, load_glide_checkpoint
    from mind_diffusion.glide.model import build_glide_base, build_glide_sr

    state = read_checkpoint(path)
    assert state and all(n.startswith("diffusion_with_p_sample.p_mean_variance.guider_net.") for n in state)
    for n, v in state.items():
        assert v.dtype == (np.float16 if n[len(TRAINING_PREFIX):] in FP16_PARAMS else np.float32), n
    net_cfg = yaml.safe_load((path.parent / "model.yaml").read_text())["model"][stage]
    net = (build_glide_base if stage == "base" else build_glide_sr)(net_cfg)
    report = load_glide_checkpoint(net, path, stage)
    params = {p.name: p.asnumpy() for p in net.get_parameters()}
    assert report.loaded == len(params) == len(state)
    for name, value in params.items():
        want = train_state[name]
        if name in FP16_PARAMS:
            want = want.astype(np.float16)
        np.testing.assert_array_equal(value, want.astype(np.float32), err_msg=name)


@pytest.mark.slow
def test_base_export_round_trip_and_sampling(straight_run, shapes_sp):
    from mind_diffusion.checkpoint.io import read_checkpoint
    from mind_diffusion.glide.pipeline import GlidePipeline

    run, _ = straight_run
    _check_released_layout(run / "glide_gen.ckpt", "base", read_checkpoint(run / "checkpoints/step_0000004.ckpt"))
    pipe = GlidePipeline.from_pretrained(run / "model.yaml", run / "glide_gen.ckpt", tokenizer=shapes_sp, stages=64)
    out = pipe("一个红色的圆形在左边", num_inference_steps=4, seed=1, progress=False)
    img = out.images
    assert img.shape[-3:] == (16, 16, 3) and img.dtype == np.uint8 and img.std() > 0


@pytest.mark.slow
def test_sr_fine_tune_trains_and_exports_the_released_layout(tmp_path, shapes_sp, shapes_data):
    from mind_diffusion.checkpoint.io import read_checkpoint

    start = _tiny_checkpoint("sr", tmp_path / "glide_super_res.ckpt", seed=5)
    cfg = tiny_cfg(tmp_path, shapes_sp, shapes_data, "sr", steps=2, ckpt_every=1)
    _train(cfg, f"init.checkpoint={tmp_path / 'glide_super_res.ckpt'}")
    run = tmp_path / "run"
    trained = read_checkpoint(run / "checkpoints/step_0000002.ckpt")
    _check_released_layout(run / "glide_super_res.ckpt", "sr", trained)
    first = read_checkpoint(run / "checkpoints/step_0000001.ckpt")
    # it started from the given weights (one small AdamW step away) and kept training
    k = "input_blocks.0.0.conv.weight"
    assert 0 < np.abs(first[k] - start[k]).max() < 1e-3 and np.abs(trained[k] - first[k]).max() > 0


def test_grow_attention_starts_from_the_smaller_network(tmp_path, shapes_sp, shapes_data, capsys):
    """init.grow_attention: a checkpoint of the network with fewer attention blocks (here none at the
    full-size level) loads into one with them: every tensor of the file in its place, the added blocks fresh with their output projection zero (identity);
    without the key the strict load names the tensors the file lacks; without a checkpoint, one line."""
    from mind_diffusion.config import load_config
    from mind_diffusion.glide.checkpoint import grown_attention_names
    from mind_diffusion.glide.training import build_glide_trainer, glide_train_config_defaults
    from mind_diffusion.runtime import init_runtime

    want = _tiny_checkpoint("base", tmp_path / "glide_gen.ckpt", seed=12)
    cfg_path = tiny_cfg(tmp_path, shapes_sp, shapes_data, "base")
    grown = "model.net.attention_resolutions=[1,2]"
    cfg = load_config(str(cfg_path), [grown, f"init.checkpoint={tmp_path / 'glide_gen.ckpt'}",
                                      "init.grow_attention=true", f"train.output_dir={tmp_path / 'grown'}"],
                      glide_train_config_defaults())
    trainer, _ = build_glide_trainer(cfg, init_runtime("CPU", "pynative", seed=0, verbose=False), progress=False)
    assert "tensors of added attention blocks start as the identity (init.grow_attention)" in capsys.readouterr().out
    got = {p.name: p.asnumpy() for p in trainer.model.get_parameters()}
    rename, added = grown_attention_names(list(want), list(got))
    for name, value in want.items():
        assert np.array_equal(got[rename[name]], value.astype(got[rename[name]].dtype)), name
    assert added and all(".1." in n for n in added)
    proj = [n for n in added if "proj_out" in n and n.endswith("weight")]
    assert proj and all(not got[n].any() for n in proj)

    rc = _train_main(capsys, cfg_path, "--overwrite", grown, f"init.checkpoint={tmp_path / 'glide_gen.ckpt'}",
                     f"train.output_dir={tmp_path / 'strict'}")
    captured_error(capsys, rc, "lacks", "set init.grow_attention=true")  # without the key: one line says which
    before = _earlier_run(tmp_path / "run")
    rc = _train_main(capsys, cfg_path, "--overwrite", grown, "init.grow_attention=true")
    captured_error(capsys, rc, "init.grow_attention=true needs init.checkpoint")
    assert _files(tmp_path / "run") == before
