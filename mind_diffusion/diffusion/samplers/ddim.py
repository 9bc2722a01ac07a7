"""DDIM sampling (Song et al. 2021), following guided-diffusion's ``ddim_sample`` update."""
from __future__ import annotations

import numbers
from typing import Callable, Optional

import numpy as np

from ..schedule import DiffusionSchedule, RespacingSpec, space_timesteps
from ._common import (Callback, StepHook, apply_hook, chain_step, check_callback, check_hook,
                      check_model_options, check_nonneg, check_rng, check_schedule, check_spec,
                      check_start, check_step_count, check_x, emit, standard_normal, step_iter)

__all__ = ["sample_ddim", "ddim_timesteps", "ddim_levels"]

NAME = "ddim"


def ddim_timesteps(num_timesteps: int, num_steps: RespacingSpec) -> list:
    """Original timesteps DDIM visits (ascending).

    An int ``N`` uses guided-diffusion's ``"ddimN"`` rule: the uniform stride ``s`` with
    ``len(range(0, T, s)) == N`` (``N=50``, ``T=1000`` -> ``0, 20, ..., 980``). When no
    integer stride gives exactly ``N`` steps (e.g. ``N=1`` or ``N`` close to ``T``) it falls
    back to ``N`` evenly spaced steps including ``T-1`` (the section rule ``str(N)``).
    A str/list is used as a respacing spec directly.
    """
    check_spec(num_steps, NAME)
    if isinstance(num_steps, numbers.Integral):
        n = check_step_count(num_steps, num_timesteps, NAME)
        try:
            return space_timesteps(num_timesteps, f"ddim{n}")
        except ValueError:
            return space_timesteps(num_timesteps, str(n))
    return space_timesteps(num_timesteps, num_steps)


def ddim_levels(schedule: DiffusionSchedule, num_steps: RespacingSpec):
    """``(timesteps, alpha, sigma)`` of the steps DDIM takes, noisiest first: the model's
    timestep at step ``i`` and the noise level ``x ~ alpha x0 + sigma eps`` it starts from."""
    check_schedule(schedule, NAME)
    chain = schedule.respace(ddim_timesteps(schedule.num_timesteps, num_steps))
    abar = np.asarray(chain.alphas_cumprod, dtype=np.float64)[::-1]
    return (np.asarray(chain.timestep_map, dtype=np.int64)[::-1].copy(), np.sqrt(abar),
            np.sqrt(1.0 - abar))


def sample_ddim(model_fn: Callable, x_T, schedule: DiffusionSchedule,
                num_steps: RespacingSpec = 50, *, rng=None,
                progress: bool = True, callback: Optional[Callback] = None,
                prediction_type: str = "epsilon", eta: float = 0.0,
                clip_denoised: bool = False, temperature: float = 1.0,
                variance_type: str = "fixed_small", start_step: int = 0,
                step_hook: Optional[StepHook] = None) -> np.ndarray:
    """DDIM sampling over the timesteps of :func:`ddim_timesteps` (guided-diffusion's
    ``ddim_sample``, which GLIDE's super-resolution stage runs with ``eta = 0``).

    The visited timesteps form a respaced chain; at its step ``k`` the model output gives
    ``x0`` and ``eps`` through the chain's tables (:func:`~mind_diffusion.diffusion.gaussian.
    p_mean_variance`: ``eps`` re-derived from the clipped ``x0`` when ``clip_denoised``), then::

        sigma = eta * sqrt((1 - abar_prev) / (1 - abar)) * sqrt(1 - abar / abar_prev)
        x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + temperature*sigma*z

    with ``abar_prev = 1`` after the last visited timestep, so the result is the final ``x0``
    prediction. ``eta=0`` is deterministic (``rng`` is never used); ``eta=1`` matches the
    DDPM posterior variance of the respaced chain. A schedule built with a reduced
    ``coeff_dtype`` supplies the original's rounded tables.

    Args:
        model_fn, x_T, schedule, rng, progress, callback, prediction_type: as in
            :func:`~mind_diffusion.diffusion.samplers.sample_ddpm` (``rng`` may be a list of
            one Generator per image).
        num_steps: an int or a respacing spec (see :func:`ddim_timesteps`).
        eta: stochasticity in ``[0, inf)``; ``rng`` is required when ``eta * temperature > 0``.
        clip_denoised: clip the predicted x0 to ``[-1, 1]``.
        temperature: noise multiplier. variance_type: only ``'learned_range'`` matters: the
            model's variance channels are dropped.
        start_step: skip the first (noisiest) ``start_step`` steps: ``x_T`` is at the noise
            level of step ``start_step`` (:func:`ddim_levels`; img2img). The callback's step
            index counts the steps taken.
        step_hook: ``step_hook(step_index, x, alpha, sigma) -> x`` after every step (blended
            inpainting), with ``x``'s new noise level.

    Returns:
        float32 array of the same shape as ``x_T``.
    """
    check_schedule(schedule, NAME)
    check_model_options(prediction_type, variance_type)
    check_callback(callback, NAME)
    check_hook(step_hook, NAME)
    eta = check_nonneg(eta, "eta", NAME)
    temperature = check_nonneg(temperature, "temperature", NAME)
    stochastic = eta * temperature > 0.0
    chain = schedule.respace(ddim_timesteps(schedule.num_timesteps, num_steps))
    x = check_x(x_T, NAME)
    batch = x.shape[0]
    if stochastic:
        rng = check_rng(rng, f"sampler {NAME!r} with eta={eta}", "eta > 0 adds noise", batch)
    n = chain.num_timesteps
    start = check_start(start_step, n, NAME)
    for i in step_iter(n - start, NAME, progress):
        k = n - 1 - start - i
        t_orig, pmv = chain_step(model_fn, chain, x, k, NAME, prediction_type=prediction_type,
                                 variance_type=variance_type, clip_denoised=clip_denoised)
        x0, eps = pmv["pred_x0"], pmv["eps"]
        abar = float(chain.alphas_cumprod[k])
        abar_prev = float(chain.alphas_cumprod_prev[k])
        sigma = 0.0 if eta == 0.0 else \
            eta * np.sqrt((1.0 - abar_prev) / (1.0 - abar)) * np.sqrt(1.0 - abar / abar_prev)
        x = np.sqrt(abar_prev) * x0 + np.sqrt(max(1.0 - abar_prev - sigma ** 2, 0.0)) * eps
        if stochastic and k > 0:
            x = x + (temperature * sigma) * standard_normal(rng, x.shape)
        x = apply_hook(step_hook, i, x, np.sqrt(abar_prev), np.sqrt(1.0 - abar_prev))
        emit(callback, i, t_orig, x, x0)
    return x.astype(np.float32)
