"""Multistep DPM-Solver++ (Lu et al. 2022) for discrete-time diffusion models.

The discrete schedule is turned into a continuous VP noise schedule the way the reference
DPM-Solver code does for discrete models: ``log alpha(t) = 0.5 * log(abar)`` sampled at
``t_k = (k + 1) / T`` and interpolated piecewise-linearly in ``t``, with ``t`` running from
``t_T = 1`` down to ``t_0 = 1 / T``. The network sees the continuous time mapped back to the
original timestep scale, ``(t - 1/T) * T`` (a float such as ``999.0`` or ``932.6``).
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from ..schedule import DiffusionSchedule, interp_linear
from ._common import (Callback, check_callback, check_model_options, check_schedule,
                      check_step_count, check_x, emit, predict_x0_eps, step_iter)

__all__ = ["sample_dpm_solver", "DiscreteVPSchedule", "SKIP_TYPES"]

NAME = "dpm_solver"
SKIP_TYPES = ("time_uniform", "time_quadratic", "logSNR")


class DiscreteVPSchedule:
    """Continuous-time view ``t in [1/T, 1]`` of a discrete schedule (DPM-Solver's
    ``NoiseScheduleVP('discrete')``): ``alpha_t = exp(log_alpha(t))``,
    ``sigma_t = sqrt(1 - alpha_t^2)``, ``lambda_t = log(alpha_t / sigma_t)``."""

    def __init__(self, schedule: DiffusionSchedule):
        self.total_n = schedule.num_timesteps
        self.t_array = np.linspace(0.0, 1.0, self.total_n + 1)[1:]
        self.log_alpha_array = 0.5 * np.log(np.asarray(schedule.alphas_cumprod))
        self.t_max = 1.0
        self.t_min = 1.0 / self.total_n

    def log_alpha(self, t):
        return interp_linear(t, self.t_array, self.log_alpha_array)

    def alpha(self, t):
        return np.exp(self.log_alpha(t))

    def sigma(self, t):
        return np.sqrt(1.0 - np.exp(2.0 * self.log_alpha(t)))

    def lambda_(self, t):
        log_alpha = self.log_alpha(t)
        return log_alpha - 0.5 * np.log(1.0 - np.exp(2.0 * log_alpha))

    def inverse_lambda(self, lamb):
        log_alpha = -0.5 * np.logaddexp(0.0, -2.0 * np.asarray(lamb, dtype=np.float64))
        return interp_linear(log_alpha, self.log_alpha_array[::-1], self.t_array[::-1])

    def model_time(self, t):
        """Continuous ``t`` -> the network's timestep scale ``(t - 1/T) * T``."""
        return (np.asarray(t, dtype=np.float64) - 1.0 / self.total_n) * self.total_n

    def time_steps(self, skip_type: str, num_steps: int) -> np.ndarray:
        """``num_steps + 1`` decreasing times from ``t_T = 1`` to ``t_0 = 1/T``."""
        t_T, t_0 = self.t_max, self.t_min
        if skip_type == "time_uniform":
            return np.linspace(t_T, t_0, num_steps + 1)
        if skip_type == "time_quadratic":
            return np.linspace(np.sqrt(t_T), np.sqrt(t_0), num_steps + 1) ** 2
        if skip_type == "logSNR":
            lambdas = np.linspace(float(self.lambda_(t_T)), float(self.lambda_(t_0)),
                                  num_steps + 1)
            return self.inverse_lambda(lambdas)
        raise ValueError(f"unknown skip_type {skip_type!r}; expected one of {SKIP_TYPES}")


def sample_dpm_solver(model_fn: Callable, x_T, schedule: DiffusionSchedule,
                      num_steps: int = 20, *, rng: Optional[np.random.Generator] = None,
                      progress: bool = True, callback: Optional[Callback] = None,
                      prediction_type: str = "epsilon", order: int = 2,
                      lower_order_final: bool = True, skip_type: str = "time_uniform",
                      variance_type: str = "fixed_small") -> np.ndarray:
    """Multistep DPM-Solver++ (data prediction) with the first-order warm-up step.

    With ``h = lambda_t - lambda_s`` and ``D = x0_{s} - x0_{s'}`` (``s'`` the step before
    ``s``, ``r = (lambda_s - lambda_s') / h``)::

        order 1: x_t = (sigma_t / sigma_s) x_s - alpha_t expm1(-h) x0_s
        order 2: x_t = (sigma_t / sigma_s) x_s - alpha_t expm1(-h) x0_s
                       - 0.5 alpha_t expm1(-h) D / r          ("dpmsolver" second-order form)

    The first step is first order. With ``lower_order_final`` and fewer than 15 steps the
    last step is first order too. Exactly ``num_steps`` model calls are made (the model is
    not evaluated at the final time; no extra denoising step to ``t=0``).

    Args:
        model_fn, x_T, schedule, progress, callback, prediction_type: as in
            :func:`~mind_diffusion.diffusion.samplers.sample_ddpm`, except that the model gets
            float32 continuous timesteps ``(t - 1/T) * T`` and the callback's ``t`` is that
            model time for the prediction used by the step.
        num_steps: number of solver steps ``S`` (``1 <= S <= T``).
        rng: accepted for interface uniformity and never used (deterministic solver).
        order: 1 or 2 (lowered to ``num_steps`` when ``num_steps == 1``).
        lower_order_final: use first order for the final step when ``num_steps < 15``.
        skip_type: ``'time_uniform'`` (default, as in LDM), ``'time_quadratic'`` or
            ``'logSNR'``.
        variance_type: only ``'learned_range'`` matters (variance channels are dropped).

    Returns:
        float32 array of the same shape as ``x_T``.
    """
    del rng  # deterministic
    check_schedule(schedule, NAME)
    check_model_options(prediction_type, variance_type)
    check_callback(callback, NAME)
    steps = check_step_count(num_steps, schedule.num_timesteps, NAME)
    if isinstance(order, bool) or order not in (1, 2):
        raise ValueError(f"{NAME}: order must be 1 or 2, got {order!r}")
    if skip_type not in SKIP_TYPES:
        raise ValueError(f"{NAME}: unknown skip_type {skip_type!r}; expected one of {SKIP_TYPES}")
    order = min(order, steps)
    vp = DiscreteVPSchedule(schedule)
    times = vp.time_steps(skip_type, steps)
    alphas = vp.alpha(times)
    sigmas = vp.sigma(times)
    lambdas = vp.lambda_(times)
    model_times = vp.model_time(times)

    x = check_x(x_T, NAME)
    batch = x.shape[0]

    def data_pred(x_in, j):
        t_model = np.full((batch,), model_times[j], dtype=np.float32)
        x0, _ = predict_x0_eps(model_fn, x_in, t_model, float(alphas[j]) ** 2,
                               prediction_type, variance_type, NAME)
        return x0

    # history of (index into `times`, data prediction), newest last
    hist = [(0, data_pred(x, 0))]
    for i in step_iter(steps, NAME, progress):
        step = i + 1  # advance from times[hist[-1][0]] to times[step]
        if step < order:
            step_order = step  # warm-up: first step is first order
        elif lower_order_final and steps < 15:
            step_order = min(order, steps + 1 - step)
        else:
            step_order = order
        s, m_s = hist[-1]
        h = lambdas[step] - lambdas[s]
        phi = np.expm1(-h)
        x_new = (sigmas[step] / sigmas[s]) * x - (alphas[step] * phi) * m_s
        if step_order == 2:
            s_prev, m_prev = hist[-2]
            r = (lambdas[s] - lambdas[s_prev]) / h
            x_new = x_new - (0.5 * alphas[step] * phi / r) * (m_s - m_prev)
        x = x_new
        emit(callback, i, float(model_times[s]), x, m_s)
        if step < steps:
            hist.append((step, data_pred(x, step)))
            hist = hist[-2:]
    return x.astype(np.float32)
