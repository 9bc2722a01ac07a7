"""What is particular to GLIDE's sampling; the loops themselves are the core samplers.

Taichu-GLIDE (``model/glide_text2im/main_funcs.py`` and ``model/gaussian_diffusion.py`` of the
release) samples its base model with ancestral steps over the respacing ``"60"`` of the
1000-step ``squaredcos_cap_v2`` schedule, and its super-resolution model with DDIM (eta = 0)
over ``"fast27"`` of the 1000-step ``linear`` schedule; both with a learned-range variance and
x0 clipped to [-1, 1]. Those are :func:`~mind_diffusion.diffusion.samplers.sample_ddpm` and
:func:`~mind_diffusion.diffusion.samplers.sample_ddim` on the schedules built here (any other
core sampler works too). This module holds the rest:

* the schedules (:func:`base_diffusion`, :func:`sr_diffusion`, and their respaced chains
  :func:`base_schedule` / :func:`sr_schedule`), with the coefficient-table precision
  ``coeff_dtype`` (``"float64"``: OpenAI glide-text2im; ``"float32"`` / ``"float16"``: the
  release's tables, see :class:`~mind_diffusion.diffusion.schedule.DiffusionSchedule`);
* the unconditional text of classifier-free guidance: :func:`random_uncond_tokens` (the
  release: random ids, redrawn every step), :func:`empty_uncond_tokens` (OpenAI: the empty
  prompt), or a negative prompt's tokens; :func:`guided_model_fn` builds the doubled text batch
  ``[cond; uncond]`` around the compiled guided step;
* per-image noise (:func:`make_rngs`, :func:`base_noise`, :func:`sr_noise`) and the 8-bit
  quantisation of the super-resolution input (:func:`quantize_low_res`).

All randomness comes from numpy generators, one per image (``seed + k``), so image ``k`` of a
batch is regenerated alone with seed ``seed + k``. Per step, an image's generator first gives
its random unconditional tokens (``uncond="random"``), then its noise.
"""
from __future__ import annotations

import numbers
from typing import Callable, Optional, Sequence

import numpy as np

from ..config import ConfigError
from ..diffusion.schedule import COEFF_DTYPES, DiffusionSchedule

__all__ = [
    "BASE_NUM_TIMESTEPS", "BASE_SCHEDULE", "SR_SCHEDULE", "SR_RESPACING", "SR_STEPS",
    "UPSAMPLE_TEMP", "UNCOND_MODES", "COEFF_DTYPES",
    "base_diffusion", "sr_diffusion", "base_schedule", "sr_schedule", "check_steps", "check_snr_scale",
    "check_super_res_steps", "random_uncond_tokens", "empty_uncond_tokens", "guided_model_fn",
    "quantize_low_res", "make_rngs", "base_noise", "sr_noise",
]

BASE_NUM_TIMESTEPS = 1000
BASE_SCHEDULE = "squaredcos_cap_v2"
SR_SCHEDULE = "linear"
SR_RESPACING = "fast27"
SR_STEPS = 27
#: The SR start noise is scaled by this "upsample temperature" (hard-coded in the original).
UPSAMPLE_TEMP = 0.997
UNCOND_MODES = ("random", "empty")


# ----------------------------------------------------------------------------- schedules
def check_steps(steps, what: str = "denoise steps") -> int:
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) \
            or not 1 <= steps <= BASE_NUM_TIMESTEPS:
        raise ValueError(f"{what} must be an integer in [1, {BASE_NUM_TIMESTEPS}], got {steps!r}")
    return int(steps)


def check_snr_scale(value, key: str = "diffusion.snr_scale") -> float:
    """A schedule's ``snr_scale`` as a float > 0 (1: the schedule as released), else one clear line
    naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < float(value) < float("inf"):
        raise ConfigError(f"{key} must be a number > 0 (1: the released schedule; below 1 shifts it towards "
                          f"noise, e.g. 0.0625), got {value!r}")
    return float(value)


def base_diffusion(coeff_dtype: str = "float64", snr_scale: float = 1.0) -> DiffusionSchedule:
    """The base model's 1000-step cosine schedule (what the samplers take); ``snr_scale`` != 1 scales
    its signal-to-noise ratios (a model trained with ``diffusion.snr_scale``; the released ones: 1)."""
    return DiffusionSchedule.create(BASE_SCHEDULE, BASE_NUM_TIMESTEPS, coeff_dtype=coeff_dtype,
                                    snr_scale=snr_scale)


def sr_diffusion(coeff_dtype: str = "float64", snr_scale: float = 1.0) -> DiffusionSchedule:
    """The super-resolution model's 1000-step linear schedule (``snr_scale``: as for the base)."""
    return DiffusionSchedule.create(SR_SCHEDULE, BASE_NUM_TIMESTEPS, coeff_dtype=coeff_dtype,
                                    snr_scale=snr_scale)


def base_schedule(steps: int = 60, coeff_dtype: str = "float64", snr_scale: float = 1.0) -> DiffusionSchedule:
    """The chain the base model is sampled on by default: respacing ``str(steps)`` of the
    cosine schedule (``--denoise_steps``; 60 in the original)."""
    steps = check_steps(steps)
    return base_diffusion(coeff_dtype, snr_scale).respace(str(steps))


def check_super_res_steps(steps) -> int:
    """Only 27 is valid: the SR schedule is always ``"fast27"`` (27 steps); the original accepts
    other values and then mis-indexes its tables."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps != SR_STEPS:
        raise ValueError(f"--super_res_step must be {SR_STEPS}: the super-resolution schedule is "
                         f"always the 27-step 'fast27' respacing (the original silently "
                         f"mis-indexes its tables for other values), got {steps!r}")
    return SR_STEPS


def sr_schedule(steps: int = SR_STEPS, coeff_dtype: str = "float64") -> DiffusionSchedule:
    """The SR chain: ``"fast27"`` of the 1000-step linear schedule."""
    check_super_res_steps(steps)
    return sr_diffusion(coeff_dtype).respace(SR_RESPACING)


# ----------------------------------------------------------------------------- guidance text
def random_uncond_tokens(rngs: Sequence[np.random.Generator], n_vocab: int, text_ctx: int
                         ) -> tuple:
    """The original's unconditional branch: random ids uniform in ``[1, n_vocab - 2]`` with a
    full mask, one row per image drawn from that image's generator (redrawn at every step).
    (The original draws one row for the whole batch; per-image rows keep image k
    reproducible alone.)"""
    if n_vocab < 3:
        raise ValueError(f"random unconditional tokens need n_vocab >= 3, got {n_vocab}")
    tokens = np.stack([rng.integers(1, n_vocab - 1, size=text_ctx) for rng in rngs])
    return tokens.astype(np.int32), np.ones((len(rngs), text_ctx), np.int32)


def empty_uncond_tokens(batch: int, text_ctx: int, pad_id: int) -> tuple:
    """OpenAI's unconditional branch: the empty prompt (all pad, mask 0)."""
    return (np.full((batch, text_ctx), pad_id, np.int32), np.zeros((batch, text_ctx), np.int32))


def guided_model_fn(step_fn: Callable, tokens, mask, *, scale: float, uncond: str,
                    rngs: Sequence[np.random.Generator], n_vocab: int, pad_id: int,
                    negative: Optional[tuple] = None) -> Callable:
    """``model_fn(x, t)`` for a core sampler: builds the doubled-batch text input
    ``[cond; uncond]`` and calls ``step_fn(x, t, tokens_2p, mask_2p, scale)``, which returns the
    guided ``(P, 6, H, W)`` output (guided eps, the conditional half's variance channels).

    The unconditional rows are a negative prompt's ``(tokens, mask)`` when ``negative`` is
    given, else per ``uncond``: ``"random"`` (drawn anew at every call from each image's
    generator, the original) or ``"empty"`` (OpenAI)."""
    tokens = np.asarray(tokens, np.int32)
    mask = np.asarray(mask, np.int32)
    if uncond not in UNCOND_MODES:
        raise ValueError(f"uncond must be one of {UNCOND_MODES} ('random': random tokens as "
                         f"the original, 'empty': the empty prompt as OpenAI), got {uncond!r}")
    rngs = list(rngs)
    if tokens.shape[0] != len(rngs) or mask.shape != tokens.shape:
        raise ValueError(f"{tokens.shape[0]} token rows (mask {mask.shape}) for {len(rngs)} images")
    text_ctx = tokens.shape[1]
    if negative is not None:
        fixed = tuple(np.asarray(a, np.int32) for a in negative)
        if fixed[0].shape != tokens.shape or fixed[1].shape != tokens.shape:
            raise ValueError(f"negative-prompt tokens {fixed[0].shape} must match the prompt "
                             f"tokens {tokens.shape}")
    else:
        fixed = empty_uncond_tokens(len(rngs), text_ctx, pad_id) if uncond == "empty" else None

    def fn(x, t):
        u_tok, u_mask = fixed if fixed is not None else random_uncond_tokens(rngs, n_vocab, text_ctx)
        return step_fn(x, t, np.concatenate([tokens, u_tok]), np.concatenate([mask, u_mask]),
                       scale)

    return fn


# ----------------------------------------------------------------------------- noise
def make_rngs(seed: int, n: int, stream: int = 0) -> list:
    """One generator per image: ``default_rng(seed + k)`` for the base stage (stream 0), and
    independent streams ``default_rng([seed + k, stream])`` for later stages."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if stream == 0:
        return [np.random.default_rng(int(seed) + k) for k in range(n)]
    return [np.random.default_rng([int(seed) + k, int(stream)]) for k in range(n)]


def base_noise(rngs: Sequence[np.random.Generator], shape=(3, 64, 64)) -> np.ndarray:
    return np.stack([rng.standard_normal(shape) for rng in rngs]).astype(np.float32)


def sr_noise(rngs: Sequence[np.random.Generator], shape=(3, 256, 256),
             temperature: float = UPSAMPLE_TEMP) -> np.ndarray:
    """SR start noise, N(0, I) x 0.997 (the original's ``upsample_temp``)."""
    return (np.stack([rng.standard_normal(shape) for rng in rngs]) * temperature).astype(np.float32)


def quantize_low_res(x, dtype: str = "float32") -> np.ndarray:
    """The SR conditioning image on the 8-bit grid, as the original's ``superResPreprocess``
    computes it before every SR model call: ``round((x + 1) * 127.5) / 127.5 - 1``, each
    operation a MindSpore op in the compute dtype (``"float32"``, or ``"float16"`` under the
    fp16 policy), ``Round`` being round-half-to-even. Returns float32."""
    import mindspore as ms
    from mindspore import ops

    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    ms_dtype = ms.float16 if dtype == "float16" else ms.float32
    one = ms.Tensor(1, ms_dtype)
    half_levels = ms.Tensor(127.5, ms_dtype)
    v = ms.Tensor(np.asarray(x, np.float32), ms_dtype)
    v = ops.round(ops.mul(ops.add(v, one), half_levels))
    v = ops.add(ops.div(v, half_levels), ops.neg(one))
    return v.asnumpy().astype(np.float32)
