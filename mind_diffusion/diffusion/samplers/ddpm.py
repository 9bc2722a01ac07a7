"""Ancestral DDPM sampling (Ho et al. 2020; respaced as in improved DDPM / GLIDE)."""
from __future__ import annotations

import numbers
from typing import Callable, Optional

import numpy as np

from ..schedule import DiffusionSchedule, RespacingSpec
from ._common import (Callback, StepHook, apply_hook, chain_step, check_callback, check_hook,
                      check_model_options, check_nonneg, check_rng, check_schedule, check_spec,
                      check_start, check_step_count, check_x, emit, standard_normal, step_iter)

__all__ = ["sample_ddpm", "ddpm_schedule", "ddpm_levels"]

NAME = "ddpm"


def ddpm_schedule(schedule: DiffusionSchedule, num_steps: RespacingSpec) -> DiffusionSchedule:
    """The respaced chain DDPM samples on: an int ``N`` keeps ``N`` evenly spaced timesteps
    (``space_timesteps(T, str(N))``, both ends included); a str/list is a respacing spec
    (e.g. ``"fast27"``, ``"10,10,5"``, ``"ddim50"``)."""
    check_spec(num_steps, NAME)
    if isinstance(num_steps, numbers.Integral):
        check_step_count(num_steps, schedule.num_timesteps, NAME)
        return schedule.respace(str(int(num_steps)))
    return schedule.respace(num_steps)


def ddpm_levels(schedule: DiffusionSchedule, num_steps: RespacingSpec):
    """``(timesteps, alpha, sigma)`` of the steps DDPM takes, noisiest first (see
    :func:`~mind_diffusion.diffusion.samplers.ddim.ddim_levels`)."""
    check_schedule(schedule, NAME)
    sched = ddpm_schedule(schedule, num_steps)
    abar = np.asarray(sched.alphas_cumprod, dtype=np.float64)[::-1]
    return (np.asarray(sched.timestep_map, dtype=np.int64)[::-1].copy(), np.sqrt(abar),
            np.sqrt(1.0 - abar))


def sample_ddpm(model_fn: Callable, x_T, schedule: DiffusionSchedule,
                num_steps: RespacingSpec = 1000, *, rng: Optional[np.random.Generator] = None,
                progress: bool = True, callback: Optional[Callback] = None,
                prediction_type: str = "epsilon", variance_type: str = "fixed_small",
                clip_denoised: bool = False, temperature: float = 1.0, start_step: int = 0,
                step_hook: Optional[StepHook] = None) -> np.ndarray:
    """Ancestral sampling ``x_{t-1} ~ N(mean_theta(x_t), sigma_t^2 I)`` from ``x_T``.

    Args:
        model_fn: ``model_fn(x, t) -> prediction`` with ``x`` float32 ``(B, ...)`` and ``t``
            int64 ``(B,)`` in the original timestep scale ``0..T-1``; returns eps (or v / x0
            per ``prediction_type``), with ``2C`` channels for ``variance_type='learned_range'``.
        x_T: starting noise ``(B, ...)``.
        schedule: the base (unrespaced) schedule.
        num_steps: an int ``N`` (``N`` evenly spaced timesteps) or a respacing spec such as
            ``"fast27"`` (see :func:`ddpm_schedule`). The variances come from the respaced
            chain, as in improved DDPM.
        rng: ``np.random.Generator`` for the ancestral noise (required unless temperature=0),
            or a list of one Generator per image (each image's noise from its own).
        progress: show a tqdm bar. callback: ``callback(step_index, t, x, pred_x0)`` after each
            step, with ``t`` the original timestep the model was evaluated at.
        prediction_type: ``'epsilon'``, ``'v'`` or ``'sample'``.
        variance_type: ``'fixed_small'`` (posterior variance), ``'fixed_large'`` (``beta_t``;
            with no clipping this is exactly Ho's update
            ``x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) + sqrt(beta_t) z``)
            or ``'learned_range'``.
        clip_denoised: clip the predicted x0 to ``[-1, 1]`` at every step.
        temperature: multiplier of the ancestral noise (1.0 = exact sampler).
        start_step: skip the first (noisiest) ``start_step`` steps (``x_T`` is at the noise
            level of that step, :func:`ddpm_levels`; img2img).
        step_hook: ``step_hook(step_index, x, alpha, sigma) -> x`` after every step (blended
            inpainting), with ``x``'s new noise level (the posterior mean's, ``abar_{t-1}``).

    Returns:
        float32 array of the same shape as ``x_T``. No noise is added at the last step.
    """
    check_schedule(schedule, NAME)
    check_model_options(prediction_type, variance_type)
    check_callback(callback, NAME)
    check_hook(step_hook, NAME)
    temperature = check_nonneg(temperature, "temperature", NAME)
    sched = ddpm_schedule(schedule, num_steps)
    x = check_x(x_T, NAME)
    batch = x.shape[0]
    if temperature > 0.0:
        rng = check_rng(rng, f"sampler {NAME!r}", "ancestral noise at every step", batch)
    n = sched.num_timesteps
    start = check_start(start_step, n, NAME)
    for i in step_iter(n - start, NAME, progress):
        k = n - 1 - start - i
        t_orig, pmv = chain_step(model_fn, sched, x, k, NAME, prediction_type=prediction_type,
                                 variance_type=variance_type, clip_denoised=clip_denoised)
        if k > 0 and temperature > 0.0:
            noise = standard_normal(rng, x.shape)
            x = pmv["mean"] + np.exp(0.5 * pmv["log_variance"]) * (temperature * noise)
        else:
            x = np.asarray(pmv["mean"], dtype=np.float64)
        abar_prev = float(sched.alphas_cumprod_prev[k])
        x = apply_hook(step_hook, i, x, np.sqrt(abar_prev), np.sqrt(1.0 - abar_prev))
        emit(callback, i, t_orig, x, pmv["pred_x0"])
    return x.astype(np.float32)
