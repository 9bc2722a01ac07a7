"""Image editing with a latent diffusion model: img2img (SDEdit) and inpainting.

Both are the text-to-image loop of :class:`~mind_diffusion.ldm.pipeline.LDMPipeline` with one
change each, made through the samplers' two editing options (every sampler has them):

* **img2img**: the init image is VAE-encoded (posterior mean, or a seeded posterior sample),
  noised to the level of the step ``strength`` picks (diffusers' rule,
  :func:`~mind_diffusion.diffusion.samplers.strength_start_step`) and sampled from there
  (``start_step``).
* **inpainting, mode "model"**: the released inpaint UNet (Wukong-Huahua
  ``wukong-huahua-inpaint-ms.ckpt``, SD ``sd-v1-5-inpainting``) takes
  ``concat[x_t(4), mask(1), masked-image latents(4)]``, prepared as the original ``inpaint.py``
  does: mask binarised at 0.5, ``masked_image = image * (mask < 0.5)``, the mask resized to the
  latent grid by nearest neighbour (MindSpore ``ResizeNearestNeighbor`` / torch ``interpolate``:
  pixel ``(8i, 8j)``), the masked image encoded and scaled by the latent scale factor. The
  unconditional half of classifier-free guidance gets the same concat input.
* **inpainting, mode "blend"** (any 4-channel UNet): blended latent diffusion. After every step
  (``step_hook``) the known region of the latents is replaced by the init latents noised to the
  step's new level with the start noise (as diffusers' legacy inpainting), so it ends as the
  init latents; the decoded image then keeps the original pixels wherever the (optionally
  blurred) mask is 0, byte for byte. The latent mask is the pixel mask max-pooled to the latent
  grid (a latent cell is repainted when any of its pixels is), so every masked pixel is generated.

Images are uint8 ``(H, W, 3)`` (or ``(N, H, W, 3)``, one per prompt); masks uint8 / bool
``(H, W)``, white (``>= 128``) or True = repaint.
"""
from __future__ import annotations

import hashlib
import math

import numpy as np

from mindspore import nn, ops

from ..diffusion.samplers import check_strength, sampler_levels, strength_start_step
from ..utils.output import DiffusionOutput

INPAINT_MODES = ("auto", "model", "blend")
ENCODE_MODES = ("mean", "sample")


def check_encode(encode) -> str:
    """``encode`` must name how the init image becomes latents: the posterior mean or a sample."""
    if encode not in ENCODE_MODES:
        raise ValueError(f"encode must be 'mean' or 'sample', got {encode!r}")
    return encode


DEFAULT_STRENGTH = 0.8  # diffusers' StableDiffusionImg2ImgPipeline default


class ConcatUNet(nn.Cell):
    """The inpaint UNet step: ``unet(concat[x, c_concat], t, context)`` (the original's
    ``DiffusionWrapper`` with ``conditioning_key: hybrid``); parameter names unchanged."""

    def __init__(self, unet: nn.Cell):
        super().__init__(auto_prefix=False)
        self.unet = unet

    def construct(self, x, t, context, c_concat):
        return self.unet(ops.concat((x, ops.cast(c_concat, x.dtype)), 1), t, context)


class LatentEncoder(nn.Cell):
    """``(mean, logvar)`` of the VAE posterior for images in [-1, 1], in fp32."""

    def __init__(self, vae: nn.Cell):
        super().__init__(auto_prefix=False)  # keep the model's parameter names
        self.vae = vae

    def construct(self, x):
        return self.vae.encode_moments(x)


# ------------------------------------------------------------------------------ inputs


def image_sha256(image: np.ndarray) -> str:
    """sha256 of an image array's bytes (C order), as recorded in the settings."""
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def check_image(image, multiple: int, what: str = "init image") -> np.ndarray:
    """``image`` as uint8 ``(N, H, W, 3)``; H and W multiples of ``multiple``."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"the {what} must be a uint8 array (H, W, 3), got {type(image).__name__}")
    arr = image[None] if image.ndim == 3 else image
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] < 1 or arr.dtype != np.uint8:
        raise ValueError(f"the {what} must be a uint8 RGB array (H, W, 3) or (N, H, W, 3), got "
                         f"shape {image.shape} dtype {image.dtype}")
    h, w = arr.shape[1:3]
    if h % multiple or w % multiple or h < multiple or w < multiple:
        raise ValueError(f"the {what} is {w}x{h}; this model needs sides that are multiples of "
                         f"{multiple}: resize or crop it, e.g. to "
                         f"{max(multiple, w // multiple * multiple)}x"
                         f"{max(multiple, h // multiple * multiple)}")
    return arr


def check_mask(mask, height: int, width: int) -> np.ndarray:
    """``mask`` as float64 ``(H, W)`` in {0, 1}, 1 = repaint (uint8 ``>= 128``, i.e. the
    original's ``/ 255 >= 0.5``, or True); not empty, same size as the image."""
    if not isinstance(mask, np.ndarray) or mask.ndim != 2 or \
            not (mask.dtype == np.uint8 or mask.dtype == np.bool_):
        shape = getattr(mask, "shape", None)
        raise ValueError(f"the mask must be a uint8 or bool array (H, W) (white / True = "
                         f"repaint), got {type(mask).__name__} shape {shape}")
    if mask.shape != (height, width):
        raise ValueError(f"the mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
                         f"{width}x{height}: give a mask of the image's size")
    m = (mask.astype(np.float64) / 255.0 >= 0.5) if mask.dtype == np.uint8 else mask
    m = np.asarray(m, dtype=np.float64)
    if not m.any():
        raise ValueError("the mask is empty (no white pixel): paint the region to repaint white")
    return m


def to_model_range(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [-1, 1] (``x / 127.5 - 1``, the original)."""
    return (images.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(127.5)
            - np.float32(1.0))


def mask_nearest(mask: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour downscale by an integer factor: pixel ``(f i, f j)`` (MindSpore
    ``ResizeNearestNeighbor`` and torch ``interpolate(mode='nearest')`` at an exact factor)."""
    return mask[::factor, ::factor]


def mask_any(mask: np.ndarray, factor: int) -> np.ndarray:
    """Max-pool by an integer factor: a cell is 1 when any pixel of its block is non-zero."""
    h, w = mask.shape
    return (mask.reshape(h // factor, factor, w // factor, factor) > 0).any(axis=(1, 3)) \
        .astype(np.float64)


def blur_mask(mask: np.ndarray, radius) -> np.ndarray:
    """Gaussian-feathered mask (sigma = ``radius`` pixels, kernel cut at 3 sigma, so pixels
    farther than that from the mask stay exactly 0); ``radius`` 0 returns the mask."""
    if isinstance(radius, bool) or not isinstance(radius, (int, float, np.integer, np.floating)) \
            or not np.isfinite(radius) or radius < 0:
        raise ValueError(f"mask_blur must be a number of pixels >= 0, got {radius!r}")
    if radius == 0:
        return mask
    r = int(math.ceil(3 * radius))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / float(radius)) ** 2)
    k /= k.sum()
    out = np.pad(mask, r, mode="constant")
    out = np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), 0, out)
    out = np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), 1, out)
    out = np.clip(out, 0.0, 1.0)
    out[np.abs(out) < 1e-12] = 0.0
    return np.maximum(out, mask)  # the painted region itself stays fully repainted


def masked_image_and_mask(images: np.ndarray, mask: np.ndarray, factor: int):
    """The original ``make_batch_sd`` + ``c_concat`` mask: ``(image * (mask < 0.5))`` as
    float32 (N, 3, H, W) in [-1, 1], and the binary mask resized to the latent grid by nearest
    neighbour, float32 (H/f, W/f)."""
    x = to_model_range(images)
    masked = x * (mask < 0.5).astype(np.float32)[None, None]
    return masked, mask_nearest(mask, factor).astype(np.float32)


class BlendHook:
    """Blended latent diffusion's per-step hook: ``x = m x + (1 - m) (alpha z0 + sigma noise)``
    with the latent mask ``m`` (1 = generate), the init latents ``z0`` and the start noise."""

    def __init__(self, z0: np.ndarray, noise: np.ndarray, mask_latent: np.ndarray):
        self.z0 = np.asarray(z0, np.float64)
        self.noise = np.asarray(noise, np.float64)
        self.m = np.asarray(mask_latent, np.float64)[None, None]

    def __call__(self, step_index, x, alpha, sigma):
        known = alpha * self.z0 + sigma * self.noise
        return self.m * x + (1.0 - self.m) * known


class ResampleHook(BlendHook):
    """Blended latent diffusion with RePaint's resampling (Lugmayr et al. 2022, "RePaint:
    Inpainting using Denoising Diffusion Probabilistic Models", sec. 4.2): after the step that
    ends at grid level ``i + 1`` (and after the blend), whenever ``i + 1`` is a multiple of
    ``jump``, the harmonised latents are sent back ``jump`` levels by the forward process
    ``q(x_s | x_t)`` (``x_s = (a_s / a_t) x_t + sqrt(s_s^2 - (a_s / a_t)^2 s_t^2) z``) and
    denoised again to level ``i + 1`` with deterministic DDIM steps of the same guided model,
    blending after each; ``resample_steps`` times. The generated region so sees the known one
    through the model many times per level, instead of once.

    ``levels``: ``(timesteps, alpha, sigma)`` of the run's steps from its start step, noisiest
    first (:func:`~mind_diffusion.diffusion.samplers.sampler_levels` sliced at the start step);
    ``model_fn(x, t)``: the guided model (epsilon prediction); ``rng``: the generator of the
    re-noising draws."""

    def __init__(self, z0, noise, mask_latent, *, model_fn, levels, resample_steps: int,
                 jump: int = 1, rng: np.random.Generator, prediction_type: str = "epsilon"):
        super().__init__(z0, noise, mask_latent)
        self.model_fn, self.rng = model_fn, rng
        self.t, self.a, self.s = (np.asarray(v, np.float64) for v in levels)
        self.r, self.jump, self.prediction_type = int(resample_steps), int(jump), prediction_type
        self.model_calls = 0

    def _ddim(self, x, t, a, s, a_next, s_next):
        from ..diffusion.gaussian import model_output_to_x0_eps_ab

        out = np.asarray(self.model_fn(x.astype(np.float32), np.full((x.shape[0],), t)), np.float64)
        self.model_calls += 1
        x0, eps = model_output_to_x0_eps_ab(self.prediction_type, a * a, x, out)
        return a_next * x0 + s_next * eps

    def __call__(self, step_index, x, alpha, sigma):
        x = super().__call__(step_index, x, alpha, sigma)
        end = step_index + 1  # the grid level x is now at (len(levels): the final one)
        if self.r <= 0 or end % self.jump or end < self.jump:
            return x
        # levels end - jump .. end - 1 of the grid, then the one x is at
        lv_a = list(self.a[end - self.jump:end]) + [alpha]
        lv_s = list(self.s[end - self.jump:end]) + [sigma]
        lv_t = list(self.t[end - self.jump:end])
        for _ in range(self.r):
            ratio = lv_a[0] / alpha
            var = max(lv_s[0] ** 2 - ratio ** 2 * sigma ** 2, 0.0)
            x = ratio * x + np.sqrt(var) * self.rng.standard_normal(x.shape)
            for j in range(self.jump):
                x = self._ddim(x, lv_t[j], lv_a[j], lv_s[j], lv_a[j + 1], lv_s[j + 1])
                x = BlendHook.__call__(self, step_index, x, lv_a[j + 1], lv_s[j + 1])
        return x


def check_resample(resample_steps, jump, mode: str) -> tuple[int, int]:
    """``(resample_steps, jump)`` as ints (>= 0, >= 1); resampling only in mode blend."""
    for name, v, lo in (("resample_steps", resample_steps, 0), ("jump", jump, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    if resample_steps and mode != "blend":
        raise ValueError("resample_steps applies to mode 'blend' (RePaint resampling of blended "
                         "inpainting); the inpaint model path does not resample: use resample_steps=0")
    return int(resample_steps), int(jump)


# ------------------------------------------------------------------------------ pipeline


class LDMEditing:
    """img2img and inpainting for :class:`~mind_diffusion.ldm.pipeline.LDMPipeline` (mixed in:
    it uses the pipeline's checks, text encoding, sampling and decoding)."""

    # ------------------------------------------------------------- encoding
    def encode_images(self, images: np.ndarray, *, encode: str, seed: int,
                      n: int | None = None) -> np.ndarray:
        """uint8 (M, H, W, 3) (M = 1 or ``n``) -> (n, 4, H/f, W/f) scaled latents:
        ``scale_factor * (mean | mean + std * z)``, ``z`` drawn for image ``j`` from
        ``np.random.default_rng([seed + j, 1])`` (a stream apart from the start noise's)."""
        check_encode(encode)
        return self.encode_model_range(to_model_range(images), encode=encode, seed=seed, n=n)

    def encode_model_range(self, x: np.ndarray, *, encode: str, seed: int,
                           n: int | None = None) -> np.ndarray:
        from mindspore import Tensor

        n = x.shape[0] if n is None else n
        moments = [self._encode(Tensor(np.ascontiguousarray(xi[None]))) for xi in x]
        moments = [(m.asnumpy()[0].astype(np.float64), lv.asnumpy()[0].astype(np.float64))
                   for m, lv in moments]
        out = []
        for j in range(n):
            mean, logvar = moments[j if len(moments) > 1 else 0]
            z = mean
            if encode == "sample":
                eps = np.random.default_rng([seed + j, 1]).standard_normal(mean.shape)
                z = mean + np.exp(0.5 * logvar) * eps
            out.append(self.scale_factor * z)
        return np.stack(out).astype(np.float32)

    # ------------------------------------------------------------- checks
    def _edit_inputs(self, prompt, image, *, task, flags=None, **kw):
        """The txt2img checks with the image's size, plus the image as (M, H, W, 3)."""
        images = check_image(image, self.size_multiple)
        h, w = images.shape[1:3]
        a = self.check_inputs(self.cfg, prompt, height=int(h), width=int(w), task=task,
                              flags=flags, **kw)
        if images.shape[0] not in (1, len(a["prompts"])):
            raise ValueError(f"give one init image or one per prompt: {images.shape[0]} images "
                             f"for {len(a['prompts'])} prompts")
        # image i of a batch goes with prompt i, repeated for its images
        per = a["num_images_per_prompt"]
        if images.shape[0] > 1:
            images = np.repeat(images, per, axis=0)
        return a, images

    def _start(self, a, strength, sampler_options) -> tuple[int, float, float]:
        """(start step, alpha, sigma) of the step ``strength`` picks for this run."""
        steps, name = a["num_inference_steps"], a["sampler"]
        k = strength_start_step(name, steps, strength)
        _, alphas, sigmas = sampler_levels(name, self.schedule, steps, **sampler_options)
        return k, float(alphas[k]), float(sigmas[k])

    # ------------------------------------------------------------- img2img
    def img2img(self, prompt, image, *, strength=None, negative_prompt=None,
                num_inference_steps=None, guidance_scale=None, sampler=None, seed=None,
                num_images_per_prompt=None, callback=None, encode: str = "mean",
                progress: bool = True, output_type: str = "uint8",
                **sampler_options) -> DiffusionOutput:
        """SDEdit: the init ``image`` (uint8 (H, W, 3), or (N, H, W, 3) one per prompt; its
        size sets the output's) encoded (``encode``: posterior ``"mean"`` or a seeded
        ``"sample"``), noised with the seed's start noise to the level of the step
        ``strength`` in (0, 1] picks (as diffusers' img2img for the same steps and strength:
        about ``strength x steps`` steps run) and denoised by any sampler, with guidance and
        negative prompt as text-to-image (``strength=None``: 0.8, diffusers' default).
        ``.settings`` add ``mode`` ("img2img"),
        ``strength``, ``start_step``, ``encode`` and ``init_image_sha256``."""
        strength = check_strength(DEFAULT_STRENGTH if strength is None else strength)
        check_encode(encode)
        a, images = self._edit_inputs(
            prompt, image, task="img2img", negative_prompt=negative_prompt,
            num_images_per_prompt=num_images_per_prompt, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, sampler=sampler, seed=seed, callback=callback,
            output_type=output_type)
        prompts = self._expand_prompts(a)
        n, h, w = len(prompts), a["height"], a["width"]
        k, alpha, sigma = self._start(a, strength, sampler_options)
        z0 = self.encode_images(images, encode=encode, seed=a["seed"], n=n)
        noise = self.initial_noise(n, h, w, a["seed"])
        x_start = (alpha * z0.astype(np.float64) + sigma * noise).astype(np.float32)
        latents = self._sample(a, self._guidance_context(prompts, a), x_start, callback=callback,
                               progress=progress, start_step=k, **sampler_options)
        extra = {"mode": "img2img", "strength": strength, "start_step": k, "encode": encode,
                 "init_image_sha256": image_sha256(image)}
        return self._result(latents, a, prompts, output_type, extra)

    # ------------------------------------------------------------- inpaint
    def inpaint_mode(self, mode: str = "auto") -> str:
        """The inpainting path for this model: "model" (9-channel inpaint UNet) or "blend"."""
        if mode not in INPAINT_MODES:
            raise ValueError(f"inpaint mode must be one of {', '.join(INPAINT_MODES)}, got {mode!r}")
        if mode == "auto":
            return "model" if self.is_inpaint else "blend"
        if mode == "model" and not self.is_inpaint:
            raise ValueError(
                f"mode 'model' needs an inpainting checkpoint (UNet with 9 input channels, e.g. "
                f"wukong-huahua-inpaint-ms.ckpt with configs/wukong/inpaint-inference.yaml); this "
                f"model's UNet takes {self.latent_channels} channels: use mode 'blend' (or 'auto')")
        if mode == "blend" and self.is_inpaint:
            raise ValueError("mode 'blend' needs a text-to-image UNet (4 input channels); this "
                             "is an inpainting checkpoint: use mode 'model' (or 'auto')")
        return mode

    def prepare_inpaint(self, images: np.ndarray, mask: np.ndarray, *, encode: str, seed: int,
                        n: int) -> np.ndarray:
        """The original ``inpaint.py``'s ``c_concat`` (n, 1 + 4, H/f, W/f): the binary mask
        resized by nearest neighbour and the scaled latents of ``image * (mask < 0.5)``."""
        masked, m = masked_image_and_mask(images, mask, self.vae_factor)
        z = self.encode_model_range(masked, encode=encode, seed=seed, n=n)
        return np.concatenate([np.broadcast_to(m, (n, 1) + m.shape), z], axis=1)

    def inpaint(self, prompt, image, mask, *, mode: str = "auto", mask_blur=0,
                strength=1.0, negative_prompt=None, num_inference_steps=None,
                guidance_scale=None, sampler=None, seed=None, num_images_per_prompt=None,
                callback=None, encode: str | None = None, x_T: np.ndarray | None = None,
                progress: bool = True, output_type: str = "uint8", resample_steps: int = 0,
                jump: int = 1, **sampler_options) -> DiffusionOutput:
        """Repaint the white (``>= 128`` / True) region of ``mask`` (uint8 or bool (H, W), the
        image's size) in ``image`` (uint8 (H, W, 3) or one per prompt).

        ``mode``: ``"model"`` (the 9-channel inpaint UNet, as the original ``inpaint.py``),
        ``"blend"`` (blended latent diffusion with any text-to-image UNet; the output keeps
        the original pixels outside the mask, feathered by ``mask_blur`` pixels of Gaussian
        sigma) or ``"auto"`` (model when the UNet has 9 input channels). ``strength`` < 1
        starts from the noised init latents (as diffusers' inpainting), 1 from pure noise
        (``x_T``, e.g. the original's ``RandomState(seed).randn`` start codes, or the seed's
        noise). ``encode``: VAE posterior ``"sample"`` (default in mode model, as the
        original) or ``"mean"`` (default in mode blend). ``resample_steps`` (mode blend):
        RePaint's resampling (:class:`ResampleHook`): every ``jump`` steps the latents go back
        ``jump`` levels and are denoised again, ``resample_steps`` times (about
        ``1 + resample_steps`` times the model calls; 0 = plain blending). ``.settings`` add
        ``mode``, ``strength``, ``mask_blur``, ``encode``, ``init_image_sha256`` and
        ``mask_sha256`` (and ``resample_steps`` / ``jump`` when resampling)."""
        mode = self.inpaint_mode(mode)
        resample_steps, jump = check_resample(resample_steps, jump, mode)
        strength = check_strength(strength)
        encode = ("sample" if mode == "model" else "mean") if encode is None else encode
        check_encode(encode)
        a, images = self._edit_inputs(
            prompt, image, task="inpaint", negative_prompt=negative_prompt,
            num_images_per_prompt=num_images_per_prompt, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, sampler=sampler, seed=seed, callback=callback,
            output_type=output_type)
        h, w = a["height"], a["width"]
        m = check_mask(mask, h, w)
        if mode == "model" and mask_blur:
            raise ValueError("mask_blur applies to mode 'blend'; the inpaint model takes the "
                             "binary mask as the original does (use mask_blur=0)")
        soft = blur_mask(m, mask_blur)
        if soft.min() >= 1.0:
            raise ValueError("the mask covers the whole image (all white): nothing is kept, "
                             "use text-to-image instead, or paint only the region to repaint")
        prompts = self._expand_prompts(a)
        n = len(prompts)
        k, alpha, sigma = self._start(a, strength, sampler_options)
        noise = self.initial_noise(n, h, w, a["seed"])
        if x_T is not None:
            shape = (n, self.latent_channels, h // self.vae_factor, w // self.vae_factor)
            if strength < 1.0:
                raise ValueError("x_T is the start noise of strength 1; with strength < 1 the "
                                 "start is the noised init image (leave x_T out)")
            if np.shape(x_T) != shape:
                raise ValueError(f"x_T must have shape {shape}, got {np.shape(x_T)}")
            noise = np.asarray(x_T, np.float32)
        opts = dict(sampler_options)
        c_concat, z0 = None, None
        if mode == "model":
            c_concat = self.prepare_inpaint(images, m, encode=encode, seed=a["seed"], n=n)
            if strength < 1.0:
                z0 = self.encode_images(images, encode=encode, seed=a["seed"], n=n)
        else:
            z0 = self.encode_images(images, encode=encode, seed=a["seed"], n=n)
            m_lat = mask_any(soft, self.vae_factor)
            if resample_steps:
                levels = sampler_levels(a["sampler"], self.schedule, a["num_inference_steps"],
                                        **sampler_options)
                opts["step_hook"] = ResampleHook(
                    z0, noise, m_lat, model_fn=self.model_fn(self._guidance_context(prompts, a),
                                                             a["guidance_scale"]),
                    levels=[v[k:] for v in levels], resample_steps=resample_steps, jump=jump,
                    rng=np.random.default_rng([a["seed"], 2]))
            else:
                opts["step_hook"] = BlendHook(z0, noise, m_lat)
        x_start = noise if strength == 1.0 else \
            (alpha * z0.astype(np.float64) + sigma * noise).astype(np.float32)
        latents = self._sample(a, self._guidance_context(prompts, a), x_start, callback=callback,
                               progress=progress, start_step=k, c_concat=c_concat, **opts)
        extra = {"mode": mode, "strength": strength, "start_step": k, "mask_blur": mask_blur,
                 "encode": encode, "init_image_sha256": image_sha256(image),
                 "mask_sha256": image_sha256(mask)}
        if resample_steps:
            extra.update(resample_steps=resample_steps, jump=jump)
        keep = None
        if mode == "blend":
            keep = (soft, np.repeat(images, n, axis=0) if images.shape[0] == 1 else images)
        return self._result(latents, a, prompts, output_type, extra, keep=keep)

    def paste_outside(self, decoded: np.ndarray, soft: np.ndarray, originals: np.ndarray,
                      output_type: str) -> np.ndarray:
        """The final image of blended inpainting: ``soft * decoded + (1 - soft) * original``,
        and the original pixels exactly (bytes for uint8) where ``soft`` is 0."""
        orig = to_model_range(originals)
        mixed = soft[None, None] * decoded + (1.0 - soft[None, None]) * orig
        outside = (soft == 0)[None, None]
        if output_type == "np":
            return np.where(outside, orig, mixed).astype(np.float32)
        img = self.to_uint8(mixed.astype(np.float32))
        return np.where(outside[:, 0, :, :, None], originals, img)
