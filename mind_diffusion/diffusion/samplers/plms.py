"""PLMS (pseudo linear multi-step, Liu et al. 2022) as implemented in LDM / Wukong-Huahua."""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from ..gaussian import eps_to_x0_ab
from ..schedule import DiffusionSchedule
from ._common import (Callback, StepHook, apply_hook, check_callback, check_hook,
                      check_model_options, check_schedule, check_start, check_step_count, check_x,
                      emit, predict_x0_eps, step_iter)

__all__ = ["sample_plms", "plms_timesteps", "plms_levels"]

NAME = "plms"

# Adams-Bashforth weights for orders 1..4, newest eps first.
_AB_WEIGHTS = {
    2: (np.array([3.0, -1.0]), 2.0),
    3: (np.array([23.0, -16.0, 5.0]), 12.0),
    4: (np.array([55.0, -59.0, 37.0, -9.0]), 24.0),
}


def plms_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
    """Original timesteps visited by LDM's PLMS (its ``ddim_discretize='uniform'`` rule).

    ``c = T // S`` and ``ts = arange(0, T, c) + 1``. This reproduces LDM's quirks: the steps
    start at 1, not 0 (``S=50`` -> ``1, 21, ..., 981``), and when ``c`` does not divide ``T``
    there can be more than ``S`` of them (``S=15`` -> ``c=66`` -> 16 steps ``1, 67, ..., 991``).
    For ``S > T // 2`` (``c == 1``) LDM would index past the schedule; here the out-of-range
    timestep ``T`` is dropped, giving ``T-1`` steps ``1..T-1``.
    """
    S = check_step_count(num_steps, num_timesteps, NAME)
    c = num_timesteps // S
    ts = np.arange(0, num_timesteps, c, dtype=np.int64) + 1
    return ts[ts < num_timesteps]


def plms_levels(schedule: DiffusionSchedule, num_steps: int):
    """``(timesteps, alpha, sigma)`` of the steps PLMS takes, noisiest first: the model's
    timestep at step ``i`` and the noise level ``x ~ alpha x0 + sigma eps`` it starts from."""
    check_schedule(schedule, NAME)
    ts = plms_timesteps(schedule.num_timesteps, num_steps)[::-1].copy()
    abar = np.asarray(schedule.alphas_cumprod, dtype=np.float64)[ts]
    return ts, np.sqrt(abar), np.sqrt(1.0 - abar)


def sample_plms(model_fn: Callable, x_T, schedule: DiffusionSchedule, num_steps: int = 50, *,
                rng: Optional[np.random.Generator] = None, progress: bool = True,
                callback: Optional[Callback] = None, prediction_type: str = "epsilon",
                variance_type: str = "fixed_small", start_step: int = 0,
                step_hook: Optional[StepHook] = None) -> np.ndarray:
    """Deterministic PLMS sampling (LDM's ``PLMSSampler`` with ``eta=0``).

    With ``a_t = abar[ts[i]]`` and ``a_prev = abar[ts[i-1]]`` (``abar[0]`` for the last step,
    so the output sits at noise level ``t=0``, not exactly ``x0``), one step is the DDIM update
    ``x_prev = sqrt(a_prev) x0(e') + sqrt(1 - a_prev) e'`` where ``e'`` is

    * first step: pseudo improved Euler, ``(e_t + e(x_prev, t_next)) / 2`` (two model calls);
    * then Adams-Bashforth of order 2, 3, 4 over the previous model eps:
      ``(3, -1)/2``, ``(23, -16, 5)/12``, ``(55, -59, 37, -9)/24``.

    Args:
        model_fn, x_T, schedule, progress, callback, prediction_type: as in
            :func:`~mind_diffusion.diffusion.samplers.sample_ddpm`; the model gets int64
            timesteps from :func:`plms_timesteps`.
        num_steps: the requested step count ``S`` (see :func:`plms_timesteps` for how many
            steps are actually taken: the callback fires once per taken step).
        rng: accepted for interface uniformity and never used (PLMS is deterministic).
        variance_type: only ``'learned_range'`` matters (variance channels are dropped).
        start_step: skip the first (noisiest) ``start_step`` steps: ``x_T`` is at the noise
            level of that step (:func:`plms_levels`; img2img); the first step taken is the
            pseudo improved Euler step.
        step_hook: ``step_hook(step_index, x, alpha, sigma) -> x`` after every step (blended
            inpainting), with ``x``'s new noise level ``sqrt(a_prev)``.

    Returns:
        float32 array of the same shape as ``x_T``.
    """
    del rng  # deterministic
    check_schedule(schedule, NAME)
    check_model_options(prediction_type, variance_type)
    check_callback(callback, NAME)
    check_hook(step_hook, NAME)
    ts = plms_timesteps(schedule.num_timesteps, num_steps)
    abar_all = np.asarray(schedule.alphas_cumprod)
    alphas = abar_all[ts]
    alphas_prev = np.append(abar_all[0], abar_all[ts[:-1]])
    x = check_x(x_T, NAME)
    batch = x.shape[0]
    n = len(ts)
    start = check_start(start_step, n, NAME)
    old_eps = []  # newest last, at most 3 kept

    def model_eps(x_in, t_orig, abar):
        _, eps_ = predict_x0_eps(model_fn, x_in, np.full((batch,), t_orig, dtype=np.int64),
                                   abar, prediction_type, variance_type, NAME)
        return eps_

    def ddim_step(x_in, eps, a_t, a_prev):
        x0 = eps_to_x0_ab(a_t, x_in, eps)
        return np.sqrt(a_prev) * x0 + np.sqrt(1.0 - a_prev) * eps, x0

    for i in step_iter(n - start, NAME, progress):
        index = n - 1 - start - i
        t_orig = int(ts[index])
        t_next = int(ts[max(index - 1, 0)])
        a_t, a_prev = float(alphas[index]), float(alphas_prev[index])
        e_t = model_eps(x, t_orig, a_t)
        if not old_eps:
            x_prev, _ = ddim_step(x, e_t, a_t, a_prev)
            e_next = model_eps(x_prev, t_next, float(abar_all[t_next]))
            e_prime = (e_t + e_next) / 2.0
        else:
            order = min(len(old_eps) + 1, 4)
            weights, denom = _AB_WEIGHTS[order]
            history = [e_t] + old_eps[::-1][:order - 1]
            e_prime = sum(w * e for w, e in zip(weights, history)) / denom
        x, x0 = ddim_step(x, e_prime, a_t, a_prev)
        x = apply_hook(step_hook, i, x, np.sqrt(a_prev), np.sqrt(1.0 - a_prev))
        old_eps.append(e_t)
        if len(old_eps) > 3:
            old_eps.pop(0)
        emit(callback, i, t_orig, x, x0)
    return x.astype(np.float32)
