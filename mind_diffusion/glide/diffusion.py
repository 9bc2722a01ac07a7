"""GLIDE's sampling math (Taichu-GLIDE, spec ``glide.md`` §4), numpy-side around a compiled
model call.

* :class:`GlideCoefficients`: the per-step tables of a respaced schedule (``timestep_map``,
  ``log(beta)``, the clipped posterior log variance, the posterior mean coefficients,
  ``sqrt(1/abar)``, ``sqrt(1/abar - 1)``, ``abar``, ``abar_prev``). ``coeff_dtype``:
  ``"float64"`` (OpenAI glide-text2im: float64 from float64 betas, the default on CPU),
  ``"float32"`` (the original's float32 rebuild from float32 respaced betas) or ``"float16"``
  (that rebuild rounded to fp16, as the original stores its tables; used under the fp16 policy).
* :func:`p_mean_variance`: eps + learned-range variance (6 channels), x0 clipped to [-1, 1],
  eps re-derived from the clipped x0 (spec §4.2).
* :func:`sample_base`: the base loop (spec §4.3), ancestral sampling over the respacing
  ``str(N)`` (``"60"``) of the 1000-step ``squaredcos_cap_v2`` schedule; guidance comes from
  ``model_fn`` (see :func:`guided_model_fn`), noise is zero at the last step.
* :func:`sample_super_res`: the SR loop (spec §4.4), DDIM with eta = 0 over ``"fast27"`` of the
  1000-step ``linear`` schedule.
* Classifier-free guidance helpers: :func:`combine_guidance` (the original's doubled-batch
  combination), :func:`random_uncond_tokens` / :func:`empty_uncond_tokens` (the two choices of
  unconditional branch) and :func:`guided_model_fn`.
* :func:`quantize_low_res`: 8-bit quantisation of the SR conditioning image.

All randomness comes from numpy generators, one per image (``seed + k``), so image ``k`` of a
batch is regenerated alone with seed ``seed + k`` (DESIGN principle 8). Per step, an image's
generator first gives its random unconditional tokens (``uncond="random"``), then its noise.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from ..diffusion.schedule import DiffusionSchedule

__all__ = [
    "BASE_NUM_TIMESTEPS", "BASE_SCHEDULE", "SR_SCHEDULE", "SR_RESPACING", "SR_STEPS",
    "UPSAMPLE_TEMP", "UNCOND_MODES", "COEFF_DTYPES",
    "GlideCoefficients", "base_schedule", "sr_schedule", "check_super_res_steps",
    "p_mean_variance", "combine_guidance", "random_uncond_tokens", "empty_uncond_tokens",
    "guided_model_fn", "quantize_low_res", "make_rngs", "base_noise",
    "sr_noise", "sample_base", "sample_super_res",
]

BASE_NUM_TIMESTEPS = 1000
BASE_SCHEDULE = "squaredcos_cap_v2"
SR_SCHEDULE = "linear"
SR_RESPACING = "fast27"
SR_STEPS = 27
#: The SR start noise is scaled by this "upsample temperature" (hard-coded in the original).
UPSAMPLE_TEMP = 0.997
UNCOND_MODES = ("random", "empty")
COEFF_DTYPES = ("float64", "float32", "float16")


# ----------------------------------------------------------------------------- tables
@dataclass(frozen=True)
class GlideCoefficients:
    """Per-step tables of one respaced schedule (index ``k`` = respaced step), float64 arrays
    holding values of ``coeff_dtype`` precision."""

    timestep_map: np.ndarray
    log_betas: np.ndarray
    posterior_log_variance_clipped: np.ndarray
    posterior_mean_coef1: np.ndarray
    posterior_mean_coef2: np.ndarray
    sqrt_recip_alphas_cumprod: np.ndarray
    sqrt_recipm1_alphas_cumprod: np.ndarray
    alphas_cumprod: np.ndarray
    alphas_cumprod_prev: np.ndarray
    coeff_dtype: str = "float64"

    @property
    def num_steps(self) -> int:
        return int(self.timestep_map.shape[0])

    @classmethod
    def from_schedule(cls, schedule: DiffusionSchedule, coeff_dtype: str = "float64"
                      ) -> "GlideCoefficients":
        if coeff_dtype not in COEFF_DTYPES:
            raise ValueError(f"coeff_dtype must be one of {COEFF_DTYPES}, got {coeff_dtype!r}")
        tmap = np.asarray(schedule.timestep_map, dtype=np.int64)
        if coeff_dtype == "float64":
            s = schedule
            tables = (np.log(s.betas), s.posterior_log_variance_clipped, s.posterior_mean_coef1,
                      s.posterior_mean_coef2, s.sqrt_recip_alphas_cumprod,
                      s.sqrt_recipm1_alphas_cumprod, s.alphas_cumprod, s.alphas_cumprod_prev)
        else:
            tables = _float32_rebuild(np.asarray(schedule.betas))
            if coeff_dtype == "float16":
                tables = tuple(np.asarray(a, np.float32).astype(np.float16) for a in tables)
        tables = tuple(np.asarray(a, dtype=np.float64) for a in tables)
        return cls(tmap, *tables, coeff_dtype=coeff_dtype)


def _float32_rebuild(betas64: np.ndarray) -> tuple:
    """The original's tables: everything derived in float32 from the float32 respaced betas."""
    f = np.float32
    betas = betas64.astype(f)
    alphas = f(1) - betas
    abar = np.cumprod(alphas, dtype=f)
    abar_prev = np.append(f(1), abar[:-1]).astype(f)
    post_var = (betas * (f(1) - abar_prev) / (f(1) - abar)).astype(f)
    if betas.shape[0] > 1:
        post_log = np.log(np.append(post_var[1], post_var[1:]).astype(f))
    else:
        post_log = np.log(betas)
    coef1 = betas * np.sqrt(abar_prev) / (f(1) - abar)
    coef2 = (f(1) - abar_prev) * np.sqrt(alphas) / (f(1) - abar)
    sqrt_recip = np.sqrt(f(1) / abar)
    sqrt_recipm1 = np.sqrt(f(1) / abar - f(1))
    return (np.log(betas), post_log, coef1, coef2, sqrt_recip, sqrt_recipm1, abar, abar_prev)


def _check_steps(steps, what: str) -> int:
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) \
            or not 1 <= steps <= BASE_NUM_TIMESTEPS:
        raise ValueError(f"{what} must be an integer in [1, {BASE_NUM_TIMESTEPS}], got {steps!r}")
    return int(steps)


def base_schedule(steps: int = 60, coeff_dtype: str = "float64") -> GlideCoefficients:
    """The base model's tables: respacing ``str(steps)`` of the 1000-step cosine schedule
    (``--denoise_steps``; 60 in the original)."""
    steps = _check_steps(steps, "denoise steps")
    sched = DiffusionSchedule.create(BASE_SCHEDULE, BASE_NUM_TIMESTEPS).respace(str(steps))
    return GlideCoefficients.from_schedule(sched, coeff_dtype)


def check_super_res_steps(steps) -> int:
    """Only 27 is valid: the SR schedule is always ``"fast27"`` (27 steps); the original accepts
    other values and then mis-indexes its tables."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps != SR_STEPS:
        raise ValueError(f"--super_res_step must be {SR_STEPS}: the super-resolution schedule is "
                         f"always the 27-step 'fast27' respacing (the original silently "
                         f"mis-indexes its tables for other values), got {steps!r}")
    return SR_STEPS


def sr_schedule(steps: int = SR_STEPS, coeff_dtype: str = "float64") -> GlideCoefficients:
    """The SR model's tables: ``"fast27"`` of the 1000-step linear schedule."""
    check_super_res_steps(steps)
    sched = DiffusionSchedule.create(SR_SCHEDULE, BASE_NUM_TIMESTEPS).respace(SR_RESPACING)
    return GlideCoefficients.from_schedule(sched, coeff_dtype)


# ----------------------------------------------------------------------------- one step
def p_mean_variance(coeffs: GlideCoefficients, model_output, x_t, k: int) -> dict:
    """Mean and log variance of p(x_{k-1} | x_k) from a 6-channel eps + v output.

    ``frac = (v + 1) / 2``; ``log var = frac log(beta_k) + (1 - frac) post_log_var_k``;
    ``x0 = sqrt(1/abar_k) x_t - sqrt(1/abar_k - 1) eps`` clipped to [-1, 1];
    ``mean = coef1_k x0 + coef2_k x_t``; ``eps = (sqrt(1/abar_k) x_t - x0) / sqrt(1/abar_k - 1)``.
    Returns float64 arrays ``mean``, ``log_variance``, ``pred_x0``, ``eps`` and the scalars
    ``alpha_bar``, ``alpha_bar_prev``.
    """
    x_t = np.asarray(x_t, dtype=np.float64)
    out = np.asarray(model_output, dtype=np.float64)
    c = x_t.shape[1]
    if out.shape != (x_t.shape[0], 2 * c) + x_t.shape[2:]:
        raise ValueError(f"the GLIDE model output must have {2 * c} channels (eps + variance) "
                         f"and x_t's shape otherwise, got {out.shape} for x_t {x_t.shape}")
    if not 0 <= k < coeffs.num_steps:
        raise ValueError(f"step index {k} outside [0, {coeffs.num_steps})")
    eps, v = out[:, :c], out[:, c:]
    frac = (v + 1.0) / 2.0
    log_var = frac * coeffs.log_betas[k] + (1.0 - frac) * coeffs.posterior_log_variance_clipped[k]
    sr, srm1 = coeffs.sqrt_recip_alphas_cumprod[k], coeffs.sqrt_recipm1_alphas_cumprod[k]
    x0 = np.clip(sr * x_t - srm1 * eps, -1.0, 1.0)
    mean = coeffs.posterior_mean_coef1[k] * x0 + coeffs.posterior_mean_coef2[k] * x_t
    eps_new = (sr * x_t - x0) / srm1
    return {"mean": mean, "log_variance": log_var, "pred_x0": x0, "eps": eps_new,
            "alpha_bar": float(coeffs.alphas_cumprod[k]),
            "alpha_bar_prev": float(coeffs.alphas_cumprod_prev[k])}


# ----------------------------------------------------------------------------- guidance
def combine_guidance(out, scale: float, eps_channels: int = 3) -> np.ndarray:
    """The original's guider on a doubled batch ``[cond; uncond]`` (conditional half FIRST):
    ``g = eps_u + s (eps_c - eps_u)``, returned for both halves, each half keeping its own
    variance channels: ``[[g, v_c]; [g, v_u]]``."""
    out = np.asarray(out)
    if out.shape[0] % 2:
        raise ValueError(f"guidance needs an even batch [cond; uncond], got {out.shape[0]}")
    p = out.shape[0] // 2
    eps_c, eps_u = out[:p, :eps_channels], out[p:, :eps_channels]
    g = eps_u + scale * (eps_c - eps_u)
    return np.concatenate([np.concatenate([g, g]), out[:, eps_channels:]], axis=1)


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
                    rngs: Sequence[np.random.Generator], n_vocab: int, pad_id: int) -> Callable:
    """``model_fn(x, t)`` for :func:`sample_base`: builds the doubled-batch text input
    ``[cond; uncond]`` (the unconditional rows drawn anew at every call for ``"random"``)
    and calls ``step_fn(x, t, tokens_2p, mask_2p, scale)``, which returns the guided
    ``(P, 6, H, W)`` output (guided eps, the conditional half's variance channels)."""
    tokens = np.asarray(tokens, np.int32)
    mask = np.asarray(mask, np.int32)
    if uncond not in UNCOND_MODES:
        raise ValueError(f"uncond must be one of {UNCOND_MODES} ('random': random tokens as "
                         f"the original, 'empty': the empty prompt as OpenAI), got {uncond!r}")
    rngs = list(rngs)
    if tokens.shape[0] != len(rngs) or mask.shape != tokens.shape:
        raise ValueError(f"{tokens.shape[0]} token rows (mask {mask.shape}) for {len(rngs)} images")
    text_ctx = tokens.shape[1]
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


def quantize_low_res(x) -> np.ndarray:
    """``round_half_even((x + 1) * 127.5) / 127.5 - 1``: the SR conditioning image on the
    8-bit grid (float32), as the original does before every SR model call."""
    x = np.asarray(x, dtype=np.float64)
    return (np.rint((x + 1.0) * 127.5) / 127.5 - 1.0).astype(np.float32)


# ----------------------------------------------------------------------------- loops
def _steps(n: int, desc: str, progress: bool):
    if not progress:
        return range(n)
    from tqdm.auto import tqdm

    return tqdm(range(n), desc=desc, total=n)


def _call(model_fn, x, t, name):
    out = np.asarray(model_fn(x.astype(np.float32), t), dtype=np.float64)
    if not np.all(np.isfinite(out)):
        raise FloatingPointError(f"{name}: the model output holds NaN/Inf at timestep {int(t[0])}; "
                                 f"on fp16 devices try --precision fp32")
    return out


def _rng_list(rngs, batch: int, name: str) -> list:
    if isinstance(rngs, np.random.Generator):
        raise ValueError(f"{name}: pass one numpy Generator per image (make_rngs(seed, n))")
    rngs = list(rngs)
    if len(rngs) != batch or not all(isinstance(r, np.random.Generator) for r in rngs):
        raise ValueError(f"{name}: need {batch} numpy Generators (one per image), got {len(rngs)}")
    return rngs


def sample_base(model_fn: Callable, x_T, coeffs: GlideCoefficients, *,
                rngs: Sequence[np.random.Generator], progress: bool = True,
                callback: Optional[Callable] = None, desc: str = "GLIDE base") -> np.ndarray:
    """Ancestral sampling with learned variance over ``coeffs`` (k = N-1 ... 0).

    ``model_fn(x_float32 (P,C,H,W), t (P,) int64 on the 0..999 scale) -> (P, 2C, H, W)``, the
    guided output. ``x_{k-1} = mean + exp(log_var / 2) z`` with ``z`` from each image's
    generator, ``z = 0`` at the last step (which returns the clipped x0). Returns float32.
    """
    x = np.asarray(x_T, dtype=np.float64)
    rngs = _rng_list(rngs, x.shape[0], "sample_base")
    n = coeffs.num_steps
    for i in _steps(n, desc, progress):
        k = n - 1 - i
        t = np.full((x.shape[0],), coeffs.timestep_map[k], dtype=np.int64)
        pm = p_mean_variance(coeffs, _call(model_fn, x, t, desc), x, k)
        if k > 0:
            z = np.stack([rng.standard_normal(x.shape[1:]) for rng in rngs])
            x = pm["mean"] + np.exp(0.5 * pm["log_variance"]) * z
        else:
            x = pm["mean"]
        if callback is not None:
            callback(i, int(t[0]), x.astype(np.float32), pm["pred_x0"].astype(np.float32))
    return x.astype(np.float32)


def sample_super_res(model_fn: Callable, x_T, coeffs: GlideCoefficients, *,
                     progress: bool = True, callback: Optional[Callable] = None,
                     desc: str = "GLIDE super-res") -> np.ndarray:
    """DDIM with eta = 0: ``x_{k-1} = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps`` with the
    clipped x0 and re-derived eps of :func:`p_mean_variance`; ``abar_prev = 1`` at the last
    step, which returns x0. Deterministic. ``model_fn`` as in :func:`sample_base` (it holds
    the quantised low-res image and the tokens)."""
    x = np.asarray(x_T, dtype=np.float64)
    n = coeffs.num_steps
    for i in _steps(n, desc, progress):
        k = n - 1 - i
        t = np.full((x.shape[0],), coeffs.timestep_map[k], dtype=np.int64)
        pm = p_mean_variance(coeffs, _call(model_fn, x, t, desc), x, k)
        ab_prev = pm["alpha_bar_prev"]
        x = np.sqrt(ab_prev) * pm["pred_x0"] + np.sqrt(max(1.0 - ab_prev, 0.0)) * pm["eps"]
        if callback is not None:
            callback(i, int(t[0]), x.astype(np.float32), pm["pred_x0"].astype(np.float32))
    return x.astype(np.float32)
