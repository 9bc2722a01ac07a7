"""img2img and inpainting with the latent-diffusion pipeline: the strength rule against
diffusers' schedulers, the samplers' start step and per-step hook, the original inpaint.py's
mask preparation, parity with diffusers' StableDiffusionInpaintPipeline on identical random
weights (9-channel UNet), blended inpainting keeping the outside pixels, and bad input."""
import copy

import numpy as np
import pytest
import yaml

from ldm_tiny import TINY_MODEL, make_tiny_model_dir, randomize

LINEAR = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
              num_train_timesteps=1000)


@pytest.fixture(scope="module")
def ldm_schedule():
    from mind_diffusion.diffusion.schedule import DiffusionSchedule

    return DiffusionSchedule.create("scaled_linear", 1000, 0.00085, 0.012)


# ------------------------------------------------------------------ strength -> start step


def _diffusers_img2img_timesteps(scheduler, steps, strength):
    """StableDiffusionImg2ImgPipeline.get_timesteps, on the scheduler's own list."""
    scheduler.set_timesteps(steps)
    init = min(int(steps * strength), steps)
    t_start = max(steps - init, 0)
    return scheduler.timesteps[t_start * scheduler.order:].numpy()


@pytest.mark.parametrize("steps", [10, 20, 25, 50])
def test_img2img_timesteps_equal_diffusers(ldm_schedule, steps):
    """Same steps and strength: the run starts at diffusers' timestep and visits its list.
    DDIM: our 'ddimN' grid is diffusers' 'leading' spacing with steps_offset 0; PLMS: LDM's grid
    (1, 21, ...) is PNDM's with steps_offset 1 and skip_prk_steps (whose list repeats the second
    timestep for the pseudo improved Euler step: compared as distinct timesteps); DPM-Solver:
    our continuous model times are diffusers' 'linspace' timesteps before rounding."""
    diffusers = pytest.importorskip("diffusers", reason="diffusers' schedulers are the reference")
    from mind_diffusion.diffusion.samplers import sampler_levels, strength_start_step

    schedulers = {
        "ddim": diffusers.DDIMScheduler(**LINEAR, steps_offset=0, clip_sample=False),
        "plms": diffusers.PNDMScheduler(**LINEAR, steps_offset=1, skip_prk_steps=True),
        "dpm_solver": diffusers.DPMSolverMultistepScheduler(**LINEAR),
    }
    for name, scheduler in schedulers.items():
        grid = sampler_levels(name, ldm_schedule, steps)[0]
        for strength in (0.3, 0.5, 0.6, 0.75, 0.8, 0.99, 1.0):
            ref = _diffusers_img2img_timesteps(scheduler, steps, strength)
            ours = grid[strength_start_step(name, steps, strength):]
            label = f"{name} steps={steps} strength={strength}"
            if name == "dpm_solver":
                assert len(ours) == len(ref), label
                assert np.abs(ours - ref).max() <= 0.5 + 1e-6, label
            elif name == "plms":
                assert ours[0] == ref[0], label
                assert list(ours) == list(dict.fromkeys(ref.tolist())), label
            else:
                assert list(ours) == ref.tolist(), label


def test_strength_rule_and_errors():
    from mind_diffusion.diffusion.samplers import check_strength, strength_start_step

    assert strength_start_step("ddim", 50, 0.75) == 13       # int(37.5) = 37 steps run
    assert strength_start_step("dpm_solver", 15, 1.0) == 0
    assert strength_start_step("plms", 50, 0.98) == 1         # one before the repeated entry
    assert strength_start_step("plms", 50, 0.5) == 24         # diffusers' list index 25
    for bad in (0, 0.0, -0.1, 1.01, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match=r"strength must be a number in \(0, 1\]"):
            check_strength(bad)
    with pytest.raises(ValueError, match="leaves no step"):
        strength_start_step("ddim", 10, 0.05)


# --------------------------------------------------------------- samplers: start and hook


def _oracle(schedule, mu=0.5, s=0.3):
    def model_fn(x, t):
        ab = schedule.alpha_bar_at(np.asarray(t, np.float64)).reshape(-1, 1)
        return np.sqrt(1 - ab) * (x - np.sqrt(ab) * mu) / (ab * s * s + 1 - ab)
    return model_fn


@pytest.mark.parametrize("name", ["ddim", "plms", "dpm_solver", "ddpm"])
def test_start_step_and_hook_levels(ldm_schedule, name):
    """A run started at step k visits the grid from k; the hook sees every new x with the noise
    level of the next grid step (the last: the sampler's end level); an identity hook changes
    nothing, a hook's output is what the sampler continues from."""
    from mind_diffusion.diffusion.samplers import get_sampler, sampler_levels

    fn = get_sampler(name)
    steps, k = 8, 3
    ts, alphas, sigmas = sampler_levels(name, ldm_schedule, steps)
    x = np.random.default_rng(0).standard_normal((4, 1))
    opts = {"rng": np.random.default_rng(1), "temperature": 0.0} if name == "ddpm" else {}
    seen, calls = [], []

    def hook(i, xh, alpha, sigma):
        seen.append((i, alpha, sigma))
        return xh

    def cb(i, t, xc, x0):
        calls.append(t)

    model = _oracle(ldm_schedule)
    plain = fn(model, x, ldm_schedule, steps, progress=False, start_step=k, **opts)
    hooked = fn(model, x, ldm_schedule, steps, progress=False, start_step=k, step_hook=hook,
                callback=cb, **opts)
    np.testing.assert_array_equal(plain, hooked)
    n = len(ts) - k
    assert [i for i, _, _ in seen] == list(range(n)) and len(calls) == n
    np.testing.assert_allclose(np.asarray(calls, np.float64), ts[k:], atol=1e-3)
    np.testing.assert_allclose([a for _, a, _ in seen[:-1]], alphas[k + 1:], rtol=1e-12)
    np.testing.assert_allclose([s for _, _, s in seen[:-1]], sigmas[k + 1:], rtol=1e-12)
    _, a_end, s_end = seen[-1]
    assert abs(a_end ** 2 + s_end ** 2 - 1) < 1e-9 and a_end > alphas[-1]
    # what the hook returns is what the run goes on with: pin x to 0.25 at the end level
    pinned = fn(model, x, ldm_schedule, steps, progress=False, start_step=k,
                step_hook=lambda i, xh, a, s: np.full_like(xh, 0.25), **opts)
    np.testing.assert_allclose(pinned, 0.25)
    with pytest.raises(ValueError, match="start_step"):
        fn(model, x, ldm_schedule, steps, progress=False, start_step=len(ts), **opts)


def test_ddim_start_equals_the_tail_of_a_full_run(ldm_schedule):
    """DDIM is Markov: a run from step k equals the full run's steps k.. from its x at k."""
    from mind_diffusion.diffusion.samplers import sample_ddim

    x = np.random.default_rng(0).standard_normal((4, 1))
    model = _oracle(ldm_schedule)
    mids = {}
    full = sample_ddim(model, x, ldm_schedule, 10, progress=False,
                       callback=lambda i, t, xc, x0: mids.setdefault(i, xc))
    tail = sample_ddim(model, mids[3], ldm_schedule, 10, progress=False, start_step=4)
    np.testing.assert_allclose(tail, full, atol=1e-6)


# ------------------------------------------------------------------ mask preparation


def _original_make_batch(image_u8, mask_u8, factor):
    """The original inpaint.py (make_batch_sd + the c_concat mask resize), with its MindSpore
    ops, on arrays (its PIL steps: RGB image, 'L' mask)."""
    import mindspore as ms
    from mindspore import Tensor, ops

    image = image_u8[None].transpose(0, 3, 1, 2)
    image = Tensor(image, dtype=ms.float32) / 127.5 - 1.0
    mask = mask_u8.astype(np.float32) / 255.0
    mask = mask[None, None]
    mask[mask < 0.5] = 0
    mask[mask >= 0.5] = 1
    mask = Tensor(mask, dtype=ms.float32)
    masked_image = image * (mask < 0.5)
    h, w = image_u8.shape[:2]
    cc = ops.ResizeNearestNeighbor((h // factor, w // factor))(mask)
    return masked_image.asnumpy(), cc.asnumpy()[0, 0]


def test_mask_preparation_matches_the_original():
    from mind_diffusion.ldm.editing import check_mask, masked_image_and_mask

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    mask = rng.integers(0, 256, (64, 48)).astype(np.uint8)
    mask[:5, :5] = 127   # 127 / 255 < 0.5: kept
    mask[5:9, :5] = 128  # 128 / 255 >= 0.5: repainted
    masked_ref, cc_ref = _original_make_batch(image, mask, 8)
    masked, cc = masked_image_and_mask(image[None], check_mask(mask, 64, 48), 8)
    np.testing.assert_allclose(masked, masked_ref, atol=1e-6)
    np.testing.assert_array_equal(cc, cc_ref)
    assert cc.shape == (8, 6) and 0 < cc.sum() < cc.size
    # bool masks: True = repaint
    masked_b, cc_b = masked_image_and_mask(image[None], check_mask(mask >= 128, 64, 48), 8)
    np.testing.assert_array_equal(cc_b, cc) and np.testing.assert_array_equal(masked_b, masked)


def test_blur_and_pool():
    from mind_diffusion.ldm.editing import blur_mask, mask_any

    m = np.zeros((32, 32))
    m[8:16, 8:12] = 1.0
    soft = blur_mask(m, 2)
    assert soft[8:16, 8:12].min() == 1.0 and soft[0].max() == 0.0 and soft[:, 20:].max() == 0.0
    assert 0 < soft[7, 10] < 1
    # the feather reaches 3 sigma = 6 px: rows 2..21, columns 2..17
    assert np.argwhere(soft > 0).min(0).tolist() == [2, 2]
    assert np.argwhere(soft > 0).max(0).tolist() == [21, 17]
    pooled = mask_any(soft, 8)
    assert pooled.tolist() == [[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]]


# ------------------------------------------------------------------ pipelines (tiny models)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from conftest import SHARED

    if not SHARED.is_dir():
        pytest.skip(f"../shared not found at {SHARED} (the vocab lives there in CI)")
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny_edit"), SHARED)


@pytest.fixture(scope="module")
def tiny_pipe(tiny_dir):
    import mindspore as ms

    from mind_diffusion.ldm.pipeline import LDMPipeline

    ms.set_context(mode=ms.PYNATIVE_MODE)
    return LDMPipeline.from_pretrained(*tiny_dir)


def _scene(seed=0, size=32):
    """A flat scene with one coloured block; 32x32 is the tiny model's smallest size (VAE /8,
    one UNet halving), which keeps these runs short."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 200, np.uint8)
    img[size // 4:size * 5 // 8, size // 8:size // 2] = rng.integers(0, 256, 3, dtype=np.uint8)
    return img


def test_img2img_strength_one_is_txt2img_from_the_noised_init(tiny_pipe):
    """img2img = txt2img started from alpha z0 + sigma noise at the first grid step (same
    seed, same noise); strength picks the start and the result records its settings."""
    import hashlib

    from mind_diffusion.diffusion.samplers import sampler_levels

    img = _scene()
    kw = dict(num_inference_steps=2, sampler="ddim", seed=5, progress=False, output_type="latent")
    out = tiny_pipe.img2img("红色 圆形", img, strength=1.0, **kw)
    _, alphas, sigmas = sampler_levels("ddim", tiny_pipe.schedule, 2)
    z0 = tiny_pipe.encode_images(img[None], encode="mean", seed=5).astype(np.float64)
    noise = tiny_pipe.initial_noise(1, 32, 32, 5)
    x_T = (alphas[0] * z0 + sigmas[0] * noise).astype(np.float32)
    ref = tiny_pipe("红色 圆形", x_T=x_T, height=32, width=32, **kw)
    np.testing.assert_array_equal(out.images, ref.images)
    s = out.settings
    assert s["mode"] == "img2img" and s["strength"] == 1.0 and s["start_step"] == 0
    assert s["init_image_sha256"] == hashlib.sha256(img.tobytes()).hexdigest()
    # a lower strength starts later (one DDIM step from the second grid level)
    part = tiny_pipe.img2img("红色 圆形", img, strength=0.5, **kw)
    assert part.settings["start_step"] == 1
    eps = tiny_pipe.model_fn(tiny_pipe._guidance_context(["红色 圆形"], {**s, "guidance_scale": 7.5}),
                             7.5)
    x1 = alphas[1] * z0 + sigmas[1] * noise
    t1 = sampler_levels("ddim", tiny_pipe.schedule, 2)[0][1]
    e = eps(x1.astype(np.float32), np.array([t1], np.float32)).astype(np.float64)
    np.testing.assert_allclose(part.images, (x1 - sigmas[1] * e) / alphas[1], atol=1e-4)
    # the posterior sample is seeded per image: mean + std * N(0, 1) from its own stream
    a = tiny_pipe.encode_images(img[None], encode="sample", seed=5, n=2)
    b = tiny_pipe.encode_images(img[None], encode="sample", seed=5, n=2)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a[0] - a[1]).max() > 1e-4 and np.abs(a[0] - z0[0]).max() > 1e-4


def test_blend_inpaint_keeps_outside_pixels(tiny_pipe):
    """Blended inpainting with a 4-channel UNet: the known latents end as the init latents, the
    output keeps every pixel outside the (blurred) mask byte for byte and changes inside."""
    from mind_diffusion.ldm.editing import blur_mask, check_mask, mask_any

    img = _scene(1)
    mask = np.zeros((32, 32), np.uint8)
    mask[20:30, 18:30] = 255
    final = {}
    out = tiny_pipe.inpaint("蓝色 方形", img, mask, mask_blur=1.5, num_inference_steps=2,
                            sampler="ddim", seed=3, progress=False,
                            callback=lambda i, t, x, x0: final.update(x=x))
    assert out.settings["mode"] == "blend" and out.settings["mask_blur"] == 1.5
    assert len(out.settings["mask_sha256"]) == 64
    soft = blur_mask(check_mask(mask, 32, 32), 1.5)
    outside = soft == 0
    assert outside.sum() > 600
    np.testing.assert_array_equal(out.images[0][outside], img[outside])
    assert (out.images[0][mask > 0] != img[mask > 0]).any()
    known = mask_any(soft, 8) == 0
    z0 = tiny_pipe.encode_images(img[None], encode="mean", seed=3)
    np.testing.assert_allclose(final["x"][0][:, known], z0[0][:, known], atol=1e-6)
    assert np.abs(final["x"][0][:, ~known] - z0[0][:, ~known]).max() > 1e-3


def test_bad_editing_inputs(tiny_pipe):
    img = _scene()
    mask = np.zeros((32, 32), np.uint8)
    mask[:8, :8] = 255
    run = dict(num_inference_steps=2, progress=False)
    cases = [
        (lambda: tiny_pipe.img2img("红色", img, strength=0.0, **run), r"strength must be"),
        (lambda: tiny_pipe.img2img("红色", img, strength=1.5, **run), r"strength must be"),
        (lambda: tiny_pipe.img2img("红色", img[:24], **run), "multiples of"),
        (lambda: tiny_pipe.img2img("红色", img.astype(np.float32), **run), "uint8"),
        (lambda: tiny_pipe.inpaint("红色", img, mask[:16], **run), "mask is 32x16 but the image is 32x32"),
        (lambda: tiny_pipe.inpaint("红色", img, np.zeros_like(mask), **run), "mask is empty"),
        (lambda: tiny_pipe.inpaint("红色", img, np.full_like(mask, 255), **run), "whole image"),
        (lambda: tiny_pipe.inpaint("红色", img, mask, mode="model", **run), "inpaint-inference.yaml"),
        (lambda: tiny_pipe.inpaint("红色", img, mask, mode="paint", **run), "mode must be"),
        (lambda: tiny_pipe.inpaint("红色", img, mask, strength=2, **run), "strength must be"),
    ]
    for fn, match in cases:
        with pytest.raises(ValueError, match=match):
            fn()


# ------------------------------------------------------------- 9-channel inpaint model


INPAINT_TINY = copy.deepcopy(TINY_MODEL)
INPAINT_TINY["family"] = "sd-inpaint-tiny"
INPAINT_TINY["unet"].update({"in_channels": 9, "gelu": "exact", "time_freqs": "float64"})


def _inpaint_cfg(folder):
    cfg = {"model": INPAINT_TINY,
           "tokenizer": {"kind": "wordpiece", "vocab_file": "vocab_zh.txt", "pad_id": 0},
           "checkpoint": {"name": "inpaint-tiny.ckpt", "url": ""},
           "sampling": {"sampler": "ddim", "num_inference_steps": 4, "guidance_scale": 7.5,
                        "height": 64, "width": 64, "seed": 0, "quantize": "round"}}
    path = folder / "inpaint-tiny.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return path


@pytest.fixture(scope="module")
def inpaint_reference(tmp_path_factory):
    """A tiny diffusers inpainting UNet (9 input channels) and VAE with random weights, and the
    same weights as our state (converted names) next to a random text encoder of ours."""
    torch = pytest.importorskip("torch", reason="torch is the reference for inpaint parity")
    diffusers = pytest.importorskip("diffusers", reason="diffusers is the inpaint reference")
    from conftest import SHARED

    from mind_diffusion.checkpoint.convert_unet import (compvis_unet_config_to_diffusers,
                                                        compvis_unet_to_ours,
                                                        diffusers_unet_to_compvis)
    from mind_diffusion.checkpoint.convert_vae import compvis_vae_to_ours, diffusers_vae_to_compvis
    from mind_diffusion.config import load_config
    from mind_diffusion.ldm.config import ldm_config_defaults
    from mind_diffusion.ldm.model import build_ldm

    if not SHARED.is_dir():
        pytest.skip(f"../shared not found at {SHARED}")
    folder = tmp_path_factory.mktemp("inpaint_tiny")
    cfg_path = _inpaint_cfg(folder)
    unet_kw = {k: v for k, v in INPAINT_TINY["unet"].items() if k not in ("gelu", "time_freqs")}
    dcfg = compvis_unet_config_to_diffusers(unet_kw)
    assert dcfg["in_channels"] == 9
    g = torch.Generator().manual_seed(0)

    def randomize_torch(module):
        with torch.no_grad():
            for name, p in module.named_parameters():
                s = 0.05 if "quant_conv" in name else 0.2
                if name.endswith("weight") and p.ndim == 1:
                    p.copy_(1.0 + s * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(s * torch.randn(p.shape, generator=g))
        return module.eval()

    unet = randomize_torch(diffusers.UNet2DConditionModel(sample_size=8, **dcfg))
    v = INPAINT_TINY["vae"]
    vae = randomize_torch(diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=v["num_groups"],
        block_out_channels=tuple(v["ch"] * m for m in v["ch_mult"]),
        layers_per_block=v["num_res_blocks"], down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4))
    cfg = load_config(cfg_path, (), ldm_config_defaults())
    net = randomize(build_ldm(cfg.model), 4)
    state = {p.name: p.asnumpy() for p in net.get_parameters()
             if p.name.startswith("cond_stage_model.")}
    unet_sd = {k: t.detach().numpy().copy() for k, t in unet.state_dict().items()}
    vae_sd = {k: t.detach().numpy().copy() for k, t in vae.state_dict().items()}
    state.update({"model.diffusion_model." + k: a
                  for k, a in compvis_unet_to_ours(diffusers_unet_to_compvis(unet_sd, dcfg)).items()})
    vae_ours, filled = compvis_vae_to_ours(diffusers_vae_to_compvis(vae_sd))
    state.update({"first_stage_model." + k: a for k, a in vae_ours.items() if k not in filled})
    return {"cfg": cfg_path, "state": state, "unet": unet, "vae": vae,
            "vocab": SHARED / "reference" / "vocab_zh.txt"}


def _diffusers_inpaint(ref, monkeypatch, prompt_embeds, negative_embeds, image, mask, x_T,
                       steps, scale):
    import torch
    from PIL import Image
    import diffusers
    from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_inpaint as mod

    real = mod.retrieve_latents
    # the posterior mean (our encode="mean"): diffusers would draw a torch-seeded sample
    monkeypatch.setattr(mod, "retrieve_latents",
                        lambda out, generator=None, sample_mode="sample": real(out, generator, "argmax"))
    # LDM's PLMS (the original inpaint.py's sampler) is PNDM with skip_prk_steps, steps_offset 1
    scheduler = diffusers.PNDMScheduler(**LINEAR, steps_offset=1, skip_prk_steps=True)
    pipe = diffusers.StableDiffusionInpaintPipeline(
        vae=ref["vae"], text_encoder=None, tokenizer=None, unet=ref["unet"], scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        out = pipe(prompt_embeds=torch.from_numpy(prompt_embeds),
                   negative_prompt_embeds=torch.from_numpy(negative_embeds),
                   image=Image.fromarray(image), mask_image=Image.fromarray(mask, mode="L"),
                   height=image.shape[0], width=image.shape[1], num_inference_steps=steps,
                   guidance_scale=scale, latents=torch.from_numpy(x_T), strength=1.0,
                   output_type="np")
    return out.images  # (N, H, W, 3) in [0, 1]


@pytest.mark.parametrize("mode", ["pynative", pytest.param("graph", marks=pytest.mark.slow)])
def test_inpaint_model_parity_with_diffusers(inpaint_reference, monkeypatch, mode):
    """The whole 9-channel path against StableDiffusionInpaintPipeline on the same random
    weights: mask binarised and resized, masked image encoded, concat UNet input, guided PLMS
    (3 steps: timesteps 667, 334, 1 as diffusers' PNDM), decode; the same text embeddings and start noise on both sides
    (max abs err ~6e-6 on [0, 1] images; graph mode in the slow run: ~25 s more to compile)."""
    import mindspore as ms

    from mind_diffusion.ldm.pipeline import LDMPipeline

    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    ms_mode = mode

    ref = inpaint_reference
    pipe = LDMPipeline.from_pretrained(ref["cfg"], None, state=dict(ref["state"]),
                                       vocab=ref["vocab"])
    assert pipe.is_inpaint and pipe.inpaint_mode() == "model"
    image = _scene(2)
    mask = np.zeros((32, 32), np.uint8)
    mask[10:26, 6:22] = 255
    x_T = pipe.initial_noise(1, 32, 32, 11)
    out = pipe.inpaint("红色 圆形", image, mask, num_inference_steps=3, guidance_scale=3.0,
                       sampler="plms", seed=11, encode="mean", progress=False, output_type="np")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    assert out.settings["mode"] == "model" and out.settings["encode"] == "mean"
    ours = np.clip(out.images.transpose(0, 2, 3, 1) / 2 + 0.5, 0, 1)
    theirs = _diffusers_inpaint(ref, monkeypatch, pipe.encode_text(["红色 圆形"]),
                                pipe.encode_text([""]), image, mask, x_T, 3, 3.0)
    assert theirs.std() > 0.05  # a non-trivial image
    err = float(np.abs(ours - theirs).max())
    assert err <= 1e-4, f"{ms_mode}: max abs err {err:.3g}"


def test_inpaint_checkpoint_refused_for_txt2img_and_img2img(inpaint_reference):
    from mind_diffusion.config import load_config
    from mind_diffusion.ldm.config import ldm_config_defaults
    from mind_diffusion.ldm.pipeline import LDMPipeline

    cfg = load_config(inpaint_reference["cfg"], (), ldm_config_defaults())
    for task in ("txt2img", "img2img"):
        with pytest.raises(ValueError, match=f"inpainting model .* cannot run {task}: use it "
                                             "with scripts/inpaint.py"):
            LDMPipeline.check_inputs(cfg, "红色", task=task)
    LDMPipeline.check_inputs(cfg, "红色", task="inpaint")


# ------------------------------------------------------------- the released inpaint layout


def _load_cfg(name):
    from conftest import ROOT

    from mind_diffusion.config import load_config
    from mind_diffusion.ldm.config import ldm_config_defaults

    return load_config(ROOT / name, (), ldm_config_defaults())


def test_wukong_inpaint_config_is_the_release_with_nine_channels():
    """wukong-huahua_inpaint_inference.yaml = the txt2img model with a 9-channel UNet input and
    its schedule in fp32 (no model-level use_fp16); PLMS 30 steps as inpaint.py."""
    from mind_diffusion.config import to_plain
    from mind_diffusion.diffusion.schedule import schedule_from_config

    inp = to_plain(_load_cfg("configs/wukong/inpaint-inference.yaml"))
    t2i = to_plain(_load_cfg("configs/wukong/v1-inference-chinese.yaml"))
    assert inp["model"]["unet"].pop("in_channels") == 9 and t2i["model"]["unet"].pop("in_channels") == 4
    assert inp["model"]["schedule"].pop("coeff_dtype") == "float32"
    t2i["model"]["schedule"].pop("coeff_dtype")
    for m in (inp["model"], t2i["model"]):
        m.pop("family")
    assert inp["model"] == t2i["model"] and inp["tokenizer"] == t2i["tokenizer"]
    assert inp["checkpoint"]["name"] == "wukong-huahua-inpaint-ms.ckpt"
    s = inp["sampling"]
    assert (s["sampler"], s["num_inference_steps"], s["guidance_scale"], s["seed"]) == ("plms", 30, 7.5, 42)
    sch = schedule_from_config(_load_cfg("configs/wukong/inpaint-inference.yaml").model.schedule)
    abar = np.asarray(sch.alphas_cumprod)
    assert np.array_equal(abar, abar.astype(np.float32).astype(np.float64))  # fp32 tables
    sd = to_plain(_load_cfg("configs/sd/v1-inpainting-inference.yaml"))["model"]["unet"]
    assert sd["in_channels"] == 9 and sd["gelu"] == "exact"


@pytest.mark.slow  # builds the full-size inpaint model (~1.1 G parameters, ~40 s, ~5 GB RSS)
def test_wukong_inpaint_layout_loads_strictly(shared_dir):
    """The released wukong-huahua-inpaint-ms.ckpt layout: the txt2img manifest with
    input_blocks.0.0.conv.weight [320, 9, 3, 3] loads strictly into the inpaint config's model;
    a txt2img file given to it names the configs that fit."""
    import json

    from mind_diffusion.checkpoint.io import CheckpointMismatchError
    from mind_diffusion.ldm.checkpoint import load_ldm_checkpoint
    from mind_diffusion.ldm.model import build_ldm

    manifest = json.loads((shared_dir / "reference" / "wukong_param_manifest.json").read_text())
    net = build_ldm(_load_cfg("configs/wukong/inpaint-inference.yaml").model)
    first = "model.diffusion_model.input_blocks.0.0.conv.weight"
    ours = [(p.name, list(p.shape)) for p in net.get_parameters()]
    expected = [(n, [320, 9, 3, 3] if n == first else s) for n, s, _ in manifest]
    assert ours == expected
    dtypes = {"Float32": np.float32, "Float16": np.float16}
    state = {n: np.broadcast_to(np.zeros((), dtypes[d]), s) for n, s, d in manifest}
    with pytest.raises(CheckpointMismatchError, match="a text-to-image checkpoint"):
        load_ldm_checkpoint(net, "wukong-huahua-ms.ckpt", state=state, dry_run=True)
    state[first] = np.broadcast_to(np.float32(0), (320, 9, 3, 3))
    report = load_ldm_checkpoint(net, "wukong-huahua-inpaint-ms.ckpt", state=state, dry_run=True)
    assert report.loaded == 1086


def test_resample_hook_closed_form():
    """RePaint resampling in the step hook, against a closed form: with the exact denoiser of a
    single latent ``z`` (``eps(x, t) = (x - a z) / s``) every DDIM re-denoising lands on the
    level's ``a' z + s' eps``, so a fully masked run ends at ``z`` itself; the known region is
    the noised init latents; ``jump`` / ``resample_steps`` set how often and how many times the
    model is called again."""
    from mind_diffusion.ldm.editing import ResampleHook

    rng = np.random.default_rng(0)
    z, z0, noise = (rng.standard_normal((1, 4, 2, 2)) for _ in range(3))
    a = np.array([0.2, 0.5, 0.8, 0.95])
    s = np.sqrt(1 - a ** 2)
    t = np.array([900.0, 600.0, 300.0, 100.0])
    cur = {}

    def eps_fn(x, tt):
        k = int(np.flatnonzero(t == float(np.asarray(tt).ravel()[0]))[0])
        cur["k"] = k
        return ((x - a[k] * z) / s[k]).astype(np.float32)

    mask = np.array([[1.0, 1.0], [0.0, 1.0]])
    hook = ResampleHook(z0, noise, mask, model_fn=eps_fn, levels=(t, a, s), resample_steps=3,
                        jump=2, rng=np.random.default_rng(1))
    x = rng.standard_normal(z.shape)
    out = hook(0, x, a[1], s[1])  # level 1: 1 is not a multiple of jump 2, plain blend
    assert hook.model_calls == 0
    np.testing.assert_allclose(out[..., 1, 0], (a[1] * z0 + s[1] * noise)[..., 1, 0])
    np.testing.assert_array_equal(out[..., 0, :], x[..., 0, :])
    out = hook(3, x, 1.0, 0.0)  # the final level, after grid levels 2 and 3: two DDIM steps x 3
    assert hook.model_calls == 6 and cur["k"] == 3
    np.testing.assert_allclose(out[..., 0, :], z[..., 0, :], atol=1e-6)
    np.testing.assert_allclose(out[..., 1, 1], z[..., 1, 1], atol=1e-6)
    np.testing.assert_allclose(out[..., 1, 0], z0[..., 1, 0], atol=1e-12)


def test_blend_inpaint_with_resampling(tiny_pipe):
    """resample_steps > 0: the model is called again each step, the outside pixels stay exact,
    the settings record it; 0 is plain blending; bad values get one clear line."""
    img = _scene(2)
    mask = np.zeros((32, 32), np.uint8)
    mask[16:, :] = 255
    calls = []
    fn = tiny_pipe.model_fn

    def counting(*a, **k):
        inner = fn(*a, **k)
        return lambda x, t: (calls.append(1), inner(x, t))[1]

    run = dict(num_inference_steps=1, sampler="ddim", seed=4, progress=False)
    plain = tiny_pipe.inpaint("蓝色 方形", img, mask, **run)
    tiny_pipe.model_fn = counting
    try:
        out = tiny_pipe.inpaint("蓝色 方形", img, mask, resample_steps=2, **run)
    finally:
        del tiny_pipe.model_fn
    assert len(calls) == 1 + 2  # one step, re-denoised twice
    assert out.settings["resample_steps"] == 2 and out.settings["jump"] == 1
    assert "resample_steps" not in plain.settings
    np.testing.assert_array_equal(out.images[0][mask == 0], img[mask == 0])
    assert (out.images[0][mask > 0] != plain.images[0][mask > 0]).any()
    for kw, match in (({"resample_steps": -1}, "resample_steps must be"), ({"jump": 0}, "jump must be"),
                      ({"resample_steps": 1, "mode": "model"}, "inpaint-inference.yaml")):
        with pytest.raises(ValueError, match=match):
            tiny_pipe.inpaint("红色", img, mask, **{**run, **kw})
