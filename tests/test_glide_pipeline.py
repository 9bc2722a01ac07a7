"""The GLIDE pipeline on tiny random checkpoints (GLIDE_TINY shapes, saved in the official
layout): the compiled guided step against separate network calls, the stage wiring (the SR
network gets the 8-bit quantised base output, SRGAN the SR output), graph == pynative, seeds,
image k alone, the NaN guard and argument errors."""
import numpy as np
import pytest

from glide_tiny import make_tiny_glide_dir

PROMPTS = ["一张画着柯基的油画", "一只可爱的猫坐在草地上"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_glide_dir(tmp_path_factory.mktemp("glide_tiny"))


def make_pipe(tiny_dir, stages=1024, **kw):
    from mind_diffusion.glide.pipeline import GlidePipeline

    files = {64: "glide_gen.ckpt", 256: "glide_super_res.ckpt", 1024: "srgan.ckpt"}
    ckpts = [tiny_dir / files[s] if s <= stages else None for s in (64, 256, 1024)]
    return GlidePipeline.from_pretrained(tiny_dir / "glide-tiny.yaml", *ckpts,
                                         tokenizer=tiny_dir / "cog-pretrain.model", stages=stages, **kw)


@pytest.fixture(scope="module")
def pipe(tiny_dir):
    """One pipeline for the graph-mode tests (each compiled shape is compiled once)."""
    return make_pipe(tiny_dir)


def test_guided_step_equals_separate_network_calls(tiny_dir, graph_mode):
    """Compiled (graph mode); the pynative run of the same cell is in the parity test below."""
    from mindspore import Tensor

    from mind_diffusion.diffusion.guidance import guidance_combine
    from mind_diffusion.glide import diffusion as gd

    p = make_pipe(tiny_dir, stages=64)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    t = np.array([999.0, 17.0], np.float32)
    tok, mask = p.tokenize(PROMPTS, 16)
    u_tok, u_mask = gd.random_uncond_tokens(gd.make_rngs(3, 2), 100, 16)
    e_c = p.base(Tensor(x), Tensor(t), Tensor(tok), Tensor(mask)).asnumpy()
    e_u = p.base(Tensor(x), Tensor(t), Tensor(u_tok), Tensor(u_mask)).asnumpy()
    assert np.abs(e_c - e_u).max() > 1e-2  # the text really conditions the tiny model
    for scale in (5.0, 1.5):
        guided = p._base_step(Tensor(x), Tensor(t), Tensor(np.float32(scale)),
                              Tensor(np.concatenate([tok, u_tok])),
                              Tensor(np.concatenate([mask, u_mask]))).asnumpy()
        want = np.concatenate([e_u[:, :3] + scale * (e_c[:, :3] - e_u[:, :3]), e_c[:, 3:]], 1)
        np.testing.assert_allclose(guided, want, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(guided, guidance_combine(np.concatenate([e_c, e_u]), scale,
                                                            eps_channels=3, cond_first=True),
                                   atol=1e-4, rtol=1e-4)


def test_stage_wiring(pipe, graph_mode):
    """SR gets the quantised 64 px output at every one of its 27 steps (the fast27 timesteps)
    with the prompt's tokens; SRGAN gets the SR output; uint8 = rounded [-1, 1] floats."""
    from mind_diffusion.glide import diffusion as gd
    from mind_diffusion.utils.images import to_uint8

    calls = {"sr": [], "srgan": []}
    sr_step, srgan_step = pipe._sr_step, pipe._srgan_step

    def sr_spy(x, t, low_res, tokens, mask):
        calls["sr"].append((t.asnumpy(), low_res.asnumpy(), tokens.asnumpy(), mask.asnumpy()))
        return sr_step(x, t, low_res, tokens, mask)

    def srgan_spy(x):
        calls["srgan"].append(x.asnumpy())
        return srgan_step(x)

    pipe._sr_step, pipe._srgan_step = sr_spy, srgan_spy
    seen = []
    try:
        out = pipe(PROMPTS[0], num_images_per_prompt=2, num_inference_steps=2, seed=3,
                   output_type="np", progress=False, on_stage=lambda s, im: seen.append((s, im)))
    finally:
        pipe._sr_step, pipe._srgan_step = sr_step, srgan_step
    assert list(out) == [64, 256, 1024] and [s for s, _ in seen] == [64, 256, 1024]
    assert out[64].shape == (2, 3, 16, 16) and out[256].shape == (2, 3, 32, 32)
    assert out[1024].shape == (2, 3, 128, 128)
    assert len(calls["sr"]) == 27
    assert [int(c[0][0]) for c in calls["sr"]] == gd.sr_schedule().timestep_map[::-1].tolist()
    q = gd.quantize_low_res(out[64])
    assert np.abs(q - out[64]).max() > 0  # quantisation is not a no-op here
    for _, low_res, tokens, mask in calls["sr"]:
        np.testing.assert_array_equal(low_res, q)
    tok, msk = pipe.tokenize([PROMPTS[0]] * 2, 16)
    np.testing.assert_array_equal(calls["sr"][0][2], tok)
    np.testing.assert_array_equal(calls["sr"][0][3], msk)
    np.testing.assert_array_equal(np.concatenate(calls["srgan"]), out[256])
    unsaturated = np.mean(np.abs(out[256]) < 0.99)
    assert unsaturated > 0.02, unsaturated  # the comparisons below see real values
    images = pipe(PROMPTS[0], num_images_per_prompt=2, num_inference_steps=2, seed=3,
                  progress=False)
    for s in (64, 256, 1024):
        np.testing.assert_array_equal(images[s], to_uint8(out[s]))


def test_graph_equals_pynative_per_stage(pipe, tiny_dir):
    """The base stage end to end, and the SR and SRGAN compiled calls, in both modes (the SR
    loop around its call is the same numpy code; the whole pipeline is the slow test)."""
    import mindspore as ms
    from mindspore import Tensor

    rng = np.random.default_rng(5)
    x_sr = Tensor(rng.standard_normal((2, 3, 32, 32)).astype(np.float32))
    low = Tensor(rng.uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32))
    t = Tensor(np.array([997.0, 200.0], np.float32))
    tok, mask = pipe.tokenize(PROMPTS, 16)
    res = {}
    for mode in (ms.GRAPH_MODE, ms.PYNATIVE_MODE):
        ms.set_context(mode=mode)
        base = pipe.run_base(tok, mask, seed=1, steps=2, scale=5.0, uncond="random", progress=False)
        sr = pipe._sr_step(x_sr, t, low, Tensor(tok), Tensor(mask)).asnumpy()
        up = pipe._srgan_step(low).asnumpy()
        res[mode] = (base, sr, up)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    for a, b in zip(res[ms.GRAPH_MODE], res[ms.PYNATIVE_MODE]):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
    assert np.mean(np.abs(res[ms.GRAPH_MODE][0]) < 0.99) > 0.1


@pytest.mark.slow
def test_whole_pipeline_graph_equals_pynative(tiny_dir):
    import mindspore as ms

    outs = {}
    for mode in (ms.GRAPH_MODE, ms.PYNATIVE_MODE):
        ms.set_context(mode=mode)
        outs[mode] = make_pipe(tiny_dir)(PROMPTS, num_images_per_prompt=1, num_inference_steps=3,
                                         seed=11, output_type="np", progress=False)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    for s in (64, 256, 1024):
        np.testing.assert_allclose(outs[ms.GRAPH_MODE][s], outs[ms.PYNATIVE_MODE][s], atol=1e-4)
    assert np.mean(np.abs(outs[ms.GRAPH_MODE][256]) < 0.99) > 0.02


def test_seeds_reproduce_and_image_k_alone(pipe, graph_mode):
    kw = dict(num_inference_steps=3, progress=False, output_type="np")
    two = pipe(PROMPTS[1], num_images_per_prompt=2, seed=20, stages=256, **kw)
    alone = pipe(PROMPTS[1], num_images_per_prompt=1, seed=21, stages=256, **kw)
    for s in (64, 256):
        # batch 2 vs batch 1 differ only by float summation order (measured: 0 at 64 px,
        # 2.5e-4 at 256 px after 27 steps; one uint8 level is 7.8e-3)
        np.testing.assert_allclose(two[s][1:], alone[s], atol=1e-3)
        assert np.abs(two[s][0] - two[s][1]).max() > 1e-2
    again = pipe(PROMPTS[1], num_images_per_prompt=2, seed=20, stages=64, **kw)
    np.testing.assert_array_equal(two[64], again[64])
    empty = pipe(PROMPTS[1], num_images_per_prompt=2, seed=20, uncond="empty", stages=64, **kw)
    assert np.abs(empty[64] - two[64]).max() > 1e-3  # the unconditional branch matters


def test_snr_scale_of_the_config_is_the_chain_the_base_is_sampled_on(tiny_dir):
    """``diffusion.base_snr_scale``: the base stage samples the cosine chain with its SNRs scaled (a model
    trained with ``diffusion.snr_scale``); the images change with it; a bad value is one clear line."""
    from mind_diffusion.config import ConfigError
    from mind_diffusion.glide import diffusion as gd

    shifted = make_pipe(tiny_dir, stages=64, overrides=["diffusion.base_snr_scale=0.0625"])
    plain = make_pipe(tiny_dir, stages=64)
    np.testing.assert_array_equal(shifted.schedule("base").alphas_cumprod,
                                  gd.base_diffusion(snr_scale=0.0625).alphas_cumprod)
    np.testing.assert_array_equal(plain.schedule("base").alphas_cumprod, gd.base_diffusion().alphas_cumprod)
    kw = dict(num_inference_steps=3, progress=False, output_type="np", seed=3)
    assert np.abs(shifted(PROMPTS[0], **kw)[64] - plain(PROMPTS[0], **kw)[64]).max() > 1e-2
    bad = make_pipe(tiny_dir, stages=64, overrides=["diffusion.base_snr_scale=-1"])
    with pytest.raises(ConfigError, match="diffusion.base_snr_scale must be a number > 0"):
        bad(PROMPTS[0], **kw)


def test_nan_guard_keeps_earlier_stages(pipe, graph_mode):
    from mindspore import Tensor

    from mind_diffusion.utils.images import NonFiniteImageError

    real = pipe._srgan_step
    pipe._srgan_step = lambda x: Tensor(np.full((1, 3, 128, 128), np.nan, np.float32))
    seen = []
    try:
        with pytest.raises(NonFiniteImageError, match="1024 px images hold .*NaN"):
            pipe(PROMPTS[0], num_images_per_prompt=2, num_inference_steps=2, progress=False,
                 on_stage=lambda s, im: seen.append(s))
    finally:
        pipe._srgan_step = real
    assert seen == [64, 256]


@pytest.mark.parametrize("strength", [0.5, 0.2])
def test_super_res_strength_against_a_hand_written_ddim(pipe, graph_mode, strength):
    """``super_res_strength`` < 1: the SR stage starts at the "fast27" step of diffusers' img2img rule
    from ``alpha up(q) + sigma z`` (q: the quantised low-res image enlarged with the network's legacy
    bilinear map; z: the standard-normal draws of the strength-1 start) and runs eta-0 DDIM with x0
    clipped from there: the same numbers as a loop written here on the same network calls."""
    import mindspore as ms
    from mindspore import Tensor, ops

    from mind_diffusion.glide import diffusion as gd

    rng = np.random.default_rng(4)
    low = np.clip(rng.uniform(-1.2, 1.2, (2, 3, 16, 16)), -1, 1).astype(np.float32)
    tok, msk = pipe.tokenize(PROMPTS, 16)
    got = pipe.run_super_res(low, tok, msk, seed=9, progress=False, strength=strength)
    n = 27
    start = n - int(n * strength)
    chain = gd.sr_schedule()
    ts = chain.timestep_map[::-1]
    abar = np.asarray(chain.alphas_cumprod, np.float64)[::-1]
    q = gd.quantize_low_res(low)
    up = ops.ResizeBilinearV2(align_corners=False, half_pixel_centers=False)(Tensor(q), (32, 32)).asnumpy()
    z = np.stack([np.random.default_rng([9 + k, 1]).standard_normal((3, 32, 32)) for k in range(2)])
    x = np.sqrt(abar[start]) * up.astype(np.float64) + np.sqrt(1 - abar[start]) * z
    calls = 0
    for k in range(start, n):
        out = pipe._sr_step(Tensor(x.astype(np.float32)), Tensor(np.full(2, ts[k], np.float32)), Tensor(q),
                            Tensor(tok), Tensor(msk)).asnumpy().astype(np.float64)[:, :3]
        calls += 1
        a, sg = np.sqrt(abar[k]), np.sqrt(1 - abar[k])
        x0 = np.clip((x - sg * out) / a, -1, 1)
        eps = (x - a * x0) / sg
        a_next = np.sqrt(abar[k + 1]) if k + 1 < n else 1.0
        x = a_next * x0 + np.sqrt(max(0.0, 1 - a_next ** 2)) * eps
    assert calls == int(n * strength)
    assert np.abs(got - x).max() <= 2e-5, np.abs(got - x).max()
    # the start keeps the low-res image: the result is far closer to its enlargement than a strength-1 run
    full = pipe.run_super_res(low, tok, msk, seed=9, progress=False)
    assert np.abs(got - up).mean() < np.abs(full - up).mean()
    with pytest.raises(ValueError, match="super_res_strength must be a number in"):
        pipe.run_super_res(low, tok, msk, seed=9, progress=False, strength=0.0)
    with pytest.raises(ValueError, match="leaves no step"):
        pipe(PROMPTS[0], super_res_strength=0.02, progress=False)
    assert ms.get_context("mode") == ms.GRAPH_MODE


def test_base_from_init_images_against_a_hand_written_ddim(pipe, graph_mode):
    """``run_base(init=..., start_step=k)``: the base starts at step k of its grid from ``alpha_k init +
    sigma_k z`` (z: the standard-normal draws of the start noise) and runs from there: the same numbers
    as an eta-0 DDIM loop written here on the same guided network calls (empty unconditional rows)."""
    from mindspore import Tensor

    from mind_diffusion.diffusion.samplers import sampler_levels
    from mind_diffusion.glide import diffusion as gd

    rng = np.random.default_rng(5)
    init = rng.uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)
    tok, msk = pipe.tokenize(PROMPTS, 16)
    steps, start, scale = 10, 4, 3.0
    got = pipe.run_base(tok, msk, seed=3, steps=steps, scale=scale, uncond="empty", sampler="ddim", progress=False,
                        init=init, start_step=start)
    ts, alpha, sigma = (np.asarray(a, np.float64) for a in sampler_levels("ddim", pipe.schedule("base"), steps))
    z = np.stack([np.random.default_rng(3 + j).standard_normal((3, 16, 16)) for j in range(2)])
    x = alpha[start] * init + sigma[start] * z
    u_tok, u_msk = gd.empty_uncond_tokens(2, 16, int(pipe.tokenizer.end_token))
    tok2, msk2 = np.concatenate([tok, u_tok]), np.concatenate([msk, u_msk])
    for k in range(start, steps):
        eps = pipe._base_step(Tensor(x.astype(np.float32)), Tensor(np.full(2, ts[k], np.float32)),
                              Tensor(np.float32(scale)), Tensor(tok2), Tensor(msk2)).asnumpy().astype(np.float64)[:, :3]
        x0 = np.clip((x - sigma[k] * eps) / alpha[k], -1, 1)
        eps = (x - alpha[k] * x0) / sigma[k]
        x = (alpha[k + 1] * x0 + sigma[k + 1] * eps) if k + 1 < steps else x0
    assert np.abs(got - x).max() <= 2e-5, np.abs(got - x).max()
    # a late start keeps the image; a start from noise does not
    late = pipe.run_base(tok, msk, seed=3, steps=steps, scale=scale, uncond="empty", sampler="ddim", progress=False,
                         init=init, start_step=steps - 1)
    full = pipe.run_base(tok, msk, seed=3, steps=steps, scale=scale, uncond="empty", sampler="ddim", progress=False)
    assert np.abs(late - init).mean() < 0.5 * np.abs(full - init).mean()
    kw = dict(seed=3, steps=steps, scale=scale, uncond="empty", progress=False)
    with pytest.raises(ValueError, match="init images must be"):
        pipe.run_base(tok, msk, init=init[:, :, :8], start_step=2, **kw)
    with pytest.raises(ValueError, match=r"start_step must be in \[1, 9\]"):
        pipe.run_base(tok, msk, init=init, start_step=0, **kw)
    with pytest.raises(ValueError, match="start_step needs init images"):
        pipe.run_base(tok, msk, start_step=3, **kw)


@pytest.mark.parametrize("kwargs, needle", [
    (dict(prompt="   "), "prompt is empty"),
    (dict(stages=512), "stages must be 64"),
    (dict(super_res_steps=26), "--super_res_step must be 27"),
    (dict(uncond="zeros"), "uncond must be 'random'"),
    (dict(num_images_per_prompt=0), "num_images_per_prompt must be an integer >= 1"),
    (dict(num_inference_steps=0), "num_inference_steps"),
    (dict(guidance_scale=float("nan")), "guidance scale must be a finite"),
    (dict(seed=-1), "seed must be an integer >= 0"),
    (dict(output_type="pil"), "output_type"),
    (dict(super_res_strength=1.5), "super_res_strength must be a number in"),
])
def test_bad_arguments(pipe, kwargs, needle):
    kw = {"prompt": PROMPTS[0], "progress": False, **kwargs}
    with pytest.raises(ValueError, match=needle):
        pipe(kw.pop("prompt"), **kw)


def test_only_requested_checkpoints_are_needed(tiny_dir):
    from mind_diffusion.checkpoint.io import CheckpointError
    from mind_diffusion.glide.pipeline import GlidePipeline

    import mindspore as ms

    p = make_pipe(tiny_dir, stages=64)
    assert p.sr is None and p.srgan is None and p.max_stage == 64
    assert p.coeff_dtype == "float64"  # fp32 compute: OpenAI's float64 tables
    assert make_pipe(tiny_dir, stages=64, compute_dtype=ms.float16).coeff_dtype == "float16"
    assert set(p.checkpoint_hashes()) == {"base"}
    with pytest.raises(ValueError, match="built up to stage 64"):
        p(PROMPTS[0], stages=256, progress=False)
    cfg = tiny_dir / "glide-tiny.yaml"
    tok = tiny_dir / "cog-pretrain.model"
    with pytest.raises(CheckpointError, match="glide_super_res.ckpt"):
        GlidePipeline.from_pretrained(cfg, tiny_dir / "glide_gen.ckpt", None, tokenizer=tok, stages=256)
    with pytest.raises(CheckpointError, match="not found: .*nope.ckpt.*glide_gen.ckpt"):
        GlidePipeline.from_pretrained(cfg, tiny_dir / "nope.ckpt", tokenizer=tok, stages=64)
    with pytest.raises(CheckpointError, match="glide_super_res.ckpt"):  # the SR file as the base
        GlidePipeline.from_pretrained(cfg, tiny_dir / "glide_super_res.ckpt", tokenizer=tok, stages=64)
    with pytest.raises(ValueError, match="token embedding has 20 rows"):
        GlidePipeline.from_pretrained(cfg, tokenizer=tok, stages=64, allow_random=True,
                                      overrides=["model.base.n_vocab=20"])
