"""One sampling path for every family: GLIDE's loops are the core samplers (bit-identical to the
loops they replaced), any sampler by name works for GLIDE's base stage, one guided-step cell
serves LDM and GLIDE (bit-identical to the cells it replaced), every pipeline speaks the same
argument vocabulary and returns the same result type, and the older sampling config names
still load."""
import numpy as np
import pytest

from mind_diffusion.diffusion.schedule import DiffusionSchedule
from mind_diffusion.diffusion.samplers import sample_ddim, sample_ddpm
from mind_diffusion.glide import diffusion as gd


# ------------------------------------------------------------------ the loops GLIDE had
def _old_p_mean_variance(c, out, x, k):
    """The removed glide/diffusion.py step, transcribed: eps + learned-range variance, x0
    clipped, eps re-derived from the clipped x0, all through the chain's tables."""
    ch = x.shape[1]
    eps, v = out[:, :ch], out[:, ch:]
    frac = (v + 1.0) / 2.0
    log_var = frac * c.log_betas[k] + (1.0 - frac) * c.posterior_log_variance_clipped[k]
    sr, srm1 = c.sqrt_recip_alphas_cumprod[k], c.sqrt_recipm1_alphas_cumprod[k]
    x0 = np.clip(sr * x - srm1 * eps, -1.0, 1.0)
    mean = c.posterior_mean_coef1[k] * x0 + c.posterior_mean_coef2[k] * x
    return mean, log_var, x0, (sr * x - x0) / srm1


def _old_base_loop(fn, x_T, c, rngs):
    x = np.asarray(x_T, np.float64)
    n = c.num_timesteps
    for i in range(n):
        k = n - 1 - i
        t = np.full((x.shape[0],), c.timestep_map[k], np.int64)
        out = np.asarray(fn(x.astype(np.float32), t), np.float64)
        mean, log_var, _, _ = _old_p_mean_variance(c, out, x, k)
        if k > 0:
            z = np.stack([r.standard_normal(x.shape[1:]) for r in rngs])
            x = mean + np.exp(0.5 * log_var) * z
        else:
            x = mean
    return x.astype(np.float32)


def _old_sr_loop(fn, x_T, c):
    x = np.asarray(x_T, np.float64)
    n = c.num_timesteps
    for i in range(n):
        k = n - 1 - i
        t = np.full((x.shape[0],), c.timestep_map[k], np.int64)
        out = np.asarray(fn(x.astype(np.float32), t), np.float64)
        _, _, x0, eps = _old_p_mean_variance(c, out, x, k)
        ab_prev = float(c.alphas_cumprod_prev[k])
        x = np.sqrt(ab_prev) * x0 + np.sqrt(max(1.0 - ab_prev, 0.0)) * eps
    return x.astype(np.float32)


def _toy6(x, t):
    x = np.asarray(x, np.float64)
    tt = np.asarray(t, np.float64)[:, None, None, None]
    return np.concatenate([np.tanh(0.7 * x + 0.001 * tt), np.sin(0.3 * x + 0.002 * tt)], 1)


def _guided_toy(rngs, uncond="random"):
    def step(x, t, tok, mask, scale):
        p = x.shape[0]
        out = _toy6(np.concatenate([x, x]), np.concatenate([t, t]))
        out = out + 0.01 * tok.mean(1).reshape(-1, 1, 1, 1)
        c, u = out[:p], out[p:]
        return np.concatenate([u[:, :3] + scale * (c[:, :3] - u[:, :3]), c[:, 3:]], 1)
    tok = np.full((len(rngs), 8), 2, np.int32)
    return gd.guided_model_fn(step, tok, np.ones_like(tok), scale=4.0, uncond=uncond, rngs=rngs,
                              n_vocab=50, pad_id=49)


@pytest.mark.parametrize("coeff_dtype", ["float64", "float32", "float16"])
def test_glide_base_loop_is_sample_ddpm_bit_for_bit(coeff_dtype):
    c = gd.base_schedule(12, coeff_dtype)
    x_T = gd.base_noise(gd.make_rngs(5, 2), (3, 4, 4))
    rngs = gd.make_rngs(5, 2)
    new = sample_ddpm(_guided_toy(rngs), x_T, gd.base_diffusion(coeff_dtype), 12, rng=rngs,
                      progress=False, variance_type="learned_range", clip_denoised=True)
    rngs = gd.make_rngs(5, 2)
    old = _old_base_loop(_guided_toy(rngs), x_T, c, rngs)
    np.testing.assert_array_equal(new, old)


@pytest.mark.parametrize("coeff_dtype", ["float64", "float32", "float16"])
def test_glide_super_res_loop_is_sample_ddim_bit_for_bit(coeff_dtype):
    x_T = gd.sr_noise(gd.make_rngs(2, 2, stream=1), (3, 4, 4))
    new = sample_ddim(_toy6, x_T, gd.sr_diffusion(coeff_dtype), gd.SR_RESPACING, progress=False,
                      variance_type="learned_range", clip_denoised=True)
    old = _old_sr_loop(_toy6, x_T, gd.sr_schedule(27, coeff_dtype))
    np.testing.assert_array_equal(new, old)


def test_fp16_tables_log_betas_are_the_originals():
    """Taichu-GLIDE takes Log of the betas tensor in the compute dtype (fp16 under its fp16
    policy): Tensor(float32 betas, fp16) then ops.Log, in fp16."""
    import mindspore as ms
    from mindspore import ops

    for make in (gd.base_schedule, gd.sr_schedule):
        c64, c16 = make(coeff_dtype="float64"), make(coeff_dtype="float16")
        betas32 = np.asarray(c64.betas, np.float32)
        want = ops.Log()(ms.Tensor(betas32, ms.float16)).asnumpy().astype(np.float64)
        np.testing.assert_array_equal(c16.log_betas, want)
        rounded = np.log(betas32).astype(np.float16).astype(np.float64)  # the former tables
        assert (c16.log_betas != rounded).any()


# ------------------------------------------------------------------ the guided-step cell
def test_guided_model_equals_the_cells_it_replaced(ms_mode):
    """GuidedModel with the scale as an input == the former LDM (context [uncond; cond]) and
    GLIDE ([cond; uncond], eps channels) cells, to the bit."""
    import mindspore as ms
    from mindspore import Tensor, nn, ops

    from mind_diffusion.diffusion.guidance import GuidedModel

    class Net(nn.Cell):
        def construct(self, x, t, a, b=None):
            y = x * ops.reshape(ops.cast(t, ms.float32) * 0.001 + 1.0, (-1, 1, 1, 1))
            y = y + ops.reshape(ops.reduce_mean(a, 1), (-1, 1, 1, 1))
            return ops.concat((ops.sin(y), ops.tanh(y)), 1)

    class OldLDM(nn.Cell):
        def __init__(self, unet):
            super().__init__(auto_prefix=False)
            self.unet = unet

        def construct(self, x, t, context, scale):
            out = ops.cast(self.unet(ops.concat((x, x), 0), ops.concat((t, t), 0), context), ms.float32)
            b = x.shape[0]
            return out[:b] + scale * (out[b:] - out[:b])

    class OldGlide(nn.Cell):
        def __init__(self, unet):
            super().__init__(auto_prefix=False)
            self.unet = unet

        def construct(self, x, t, tokens, mask, scale):
            out = ops.cast(self.unet(ops.concat((x, x), 0), ops.concat((t, t), 0), tokens, mask),
                           ms.float32)
            b = x.shape[0]
            cond, uncond = out[:b], out[b:]
            guided = uncond[:, :2] + scale * (cond[:, :2] - uncond[:, :2])
            return ops.concat((guided, cond[:, 2:]), 1)

    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((2, 2, 3, 3)).astype(np.float32))
    t = Tensor(np.array([999.0, 13.5], np.float32))
    ctx = Tensor(rng.standard_normal((4, 5)).astype(np.float32))
    mask = Tensor(np.ones((4, 5), np.int32))
    s = Tensor(np.float32(6.5))
    net = Net()
    np.testing.assert_array_equal(GuidedModel(net)(x, t, s, ctx).asnumpy(),
                                  OldLDM(net)(x, t, ctx, s).asnumpy())
    np.testing.assert_array_equal(
        GuidedModel(net, eps_channels=2, cond_first=True)(x, t, s, ctx, mask).asnumpy(),
        OldGlide(net)(x, t, ctx, mask, s).asnumpy())


# ------------------------------------------------------------------ GLIDE: any sampler
@pytest.fixture(scope="module")
def glide_dir(tmp_path_factory):
    from glide_tiny import make_tiny_glide_dir

    return make_tiny_glide_dir(tmp_path_factory.mktemp("glide_tiny_one_path"))


def _glide(glide_dir, stages=64):
    from mind_diffusion.glide.pipeline import GlidePipeline

    files = {64: "glide_gen.ckpt", 256: "glide_super_res.ckpt", 1024: "srgan.ckpt"}
    ckpts = [glide_dir / files[s] if s <= stages else None for s in (64, 256, 1024)]
    return GlidePipeline.from_pretrained(glide_dir / "glide-tiny.yaml", *ckpts,
                                         tokenizer=glide_dir / "cog-pretrain.model", stages=stages)


@pytest.fixture(scope="module")
def glide_base(glide_dir):
    """One base-stage pipeline for the GLIDE sampling tests, which run in graph mode (the scripts'
    default), so its step is compiled once for all of them."""
    return _glide(glide_dir)


@pytest.mark.parametrize("sampler", ["ddim", "dpm_solver", "plms"])
def test_glide_base_stage_with_other_samplers(glide_base, graph_mode, sampler):
    """The base stage by name: deterministic samplers are reproducible and differ from ancestral
    sampling."""
    from mind_diffusion.utils.output import DiffusionOutput

    pipe = glide_base
    kw = dict(num_images_per_prompt=2, seed=4, output_type="np", progress=False)
    out = pipe("一只可爱的猫坐在草地上", num_inference_steps=6, sampler=sampler, uncond="empty", **kw)
    assert isinstance(out, DiffusionOutput) and list(out) == [64]
    again = pipe("一只可爱的猫坐在草地上", num_inference_steps=6, sampler=sampler, uncond="empty", **kw)
    np.testing.assert_array_equal(out.images, again.images)
    ancestral = pipe("一只可爱的猫坐在草地上", num_inference_steps=6, uncond="empty", **kw)
    assert np.abs(out.images - ancestral.images).max() > 1e-3
    assert out.settings["sampler"] == sampler and ancestral.settings["sampler"] == "ddpm"
    assert out.seeds == [4, 5] and out.prompts == ["一只可爱的猫坐在草地上"] * 2


def test_glide_negative_prompt_is_the_unconditional_text(glide_base, graph_mode):
    pipe = glide_base
    seen = []
    real = pipe._base_step

    def spy(x, t, s, tok, mask):
        seen.append(tok.asnumpy())
        return real(x, t, s, tok, mask)

    pipe._base_step = spy
    try:
        kw = dict(num_images_per_prompt=1, num_inference_steps=2, seed=0, progress=False,
                  output_type="np")
        neg = pipe("一只可爱的猫坐在草地上", negative_prompt="城市夜景 赛博朋克", **kw)
    finally:
        pipe._base_step = real
    want_tok, _ = pipe.tokenize(["城市夜景 赛博朋克"], 16)
    assert all(np.array_equal(tok[1:], want_tok) for tok in seen)
    plain = pipe("一只可爱的猫坐在草地上", **kw)
    assert np.abs(neg.images - plain.images).max() > 1e-3


def test_glide_callback_sees_every_base_step(glide_base, graph_mode):
    pipe = glide_base
    steps = []
    pipe("一只可爱的猫坐在草地上", num_images_per_prompt=1, num_inference_steps=3, seed=0,
         progress=False, sampler="ddim", callback=lambda i, t, x, x0: steps.append((i, t)))
    assert [i for i, _ in steps] == [0, 1, 2]


def test_glide_size_and_sampler_errors(glide_base, graph_mode):
    pipe = glide_base
    with pytest.raises(ValueError, match="fixed by its checkpoint"):
        pipe("猫", height=32)
    with pytest.raises(ValueError, match="unknown sampler"):
        pipe("猫", sampler="euler")


# ------------------------------------------------------------------ config vocabulary
def test_older_sampling_keys_load_as_the_one_vocabulary(tmp_path):
    from mind_diffusion.config import load_config
    from mind_diffusion.ddpm.config import ddpm_config_defaults
    from mind_diffusion.glide.config import glide_config_defaults

    old = tmp_path / "old-glide.yaml"
    old.write_text("sampling:\n  denoise_steps: 30\n  super_res_step: 27\n  pics_generated: 2\n",
                   encoding="utf-8")
    cfg = load_config(old, ["sampling.denoise_steps=40"], glide_config_defaults())
    assert cfg.sampling.num_inference_steps == 40 and cfg.sampling.num_images_per_prompt == 2
    assert cfg.sampling.super_res_steps == 27
    old = tmp_path / "old-ddpm.yaml"
    old.write_text("sample:\n  num_steps: 50\n  sampler: ddim\n", encoding="utf-8")
    cfg = load_config(old, (), ddpm_config_defaults())
    assert cfg.sampling.num_inference_steps == 50 and cfg.sampling.sampler == "ddim"
    with pytest.raises(ValueError, match="unknown config key 'sampling.stepz'"):
        load_config(None, ["sampling.stepz=3"], glide_config_defaults())


def test_diffusion_output_mapping():
    from mind_diffusion.utils.output import DiffusionOutput

    a, b = np.zeros((2, 4, 4, 3), np.uint8), np.ones((2, 16, 16, 3), np.uint8)
    out = DiffusionOutput({4: a, 16: b}, prompts=["x", "x"], seeds=[3, 4])
    assert list(out) == [4, 16] and out.images is b and out[4] is a and len(out) == 2
    with pytest.raises(KeyError, match="use .images"):
        out[0]
