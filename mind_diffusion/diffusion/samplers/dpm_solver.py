"""Multistep DPM-Solver++ (Lu et al. 2022) for discrete-time diffusion models.

The discrete schedule is turned into a continuous VP noise schedule the way the reference
DPM-Solver code does for discrete models: ``log alpha(t) = 0.5 * log(abar)`` sampled at
``t_k = (k + 1) / T`` and interpolated piecewise-linearly in ``t``, with ``t`` running from
``t_T = 1`` down to ``t_0 = 1 / T``. The network sees the continuous time mapped back to the
original timestep scale, ``(t - 1/T) * T`` (a float such as ``999.0`` or ``932.6``).

``precision="original_fp16"`` instead follows the MindSpore Wukong-Huahua release step by step
(:func:`_sample_original_fp16`): fp16 ``alphas_cumprod``, time grid, keypoints, solver state and
model inputs, with MindSpore kernels for every op, so that official weights give its numbers.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np

from ..schedule import DiffusionSchedule, interp_linear
from ._common import (Callback, StepHook, apply_hook, check_callback, check_hook,
                      check_model_options, check_schedule, check_start, check_step_count, check_x,
                      emit, predict_x0_eps, step_iter)

__all__ = ["sample_dpm_solver", "dpm_solver_levels", "DiscreteVPSchedule", "SKIP_TYPES",
           "PRECISIONS"]

NAME = "dpm_solver"
SKIP_TYPES = ("time_uniform", "time_quadratic", "logSNR")
#: ``"fp32"``: float64 solver state, float32 model inputs; ``"original_fp16"``: Wukong's fp16 steps
PRECISIONS = ("fp32", "original_fp16")


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


def dpm_solver_levels(schedule: DiffusionSchedule, num_steps: int,
                      skip_type: str = "time_uniform"):
    """``(model_times, alpha, sigma)`` of the steps DPM-Solver takes, noisiest first: the
    model's (float) timestep at step ``i`` and the noise level ``x ~ alpha x0 + sigma eps`` it
    starts from."""
    check_schedule(schedule, NAME)
    steps = check_step_count(num_steps, schedule.num_timesteps, NAME)
    if skip_type not in SKIP_TYPES:
        raise ValueError(f"{NAME}: unknown skip_type {skip_type!r}; expected one of {SKIP_TYPES}")
    vp = DiscreteVPSchedule(schedule)
    times = vp.time_steps(skip_type, steps)[:-1]
    return vp.model_time(times), vp.alpha(times), vp.sigma(times)


def _step_order(step: int, start: int, steps: int, order: int, lower_order_final: bool) -> int:
    """The order of the step that ends at grid index ``step`` of a run that began at ``start``:
    first order for the first step (warm-up), lowered at the end with ``lower_order_final``."""
    if step - start < order:
        return step - start
    if lower_order_final and steps < 15:
        return min(order, steps + 1 - step)
    return order


def sample_dpm_solver(model_fn: Callable, x_T, schedule: DiffusionSchedule,
                      num_steps: int = 20, *, rng: Optional[np.random.Generator] = None,
                      progress: bool = True, callback: Optional[Callback] = None,
                      prediction_type: str = "epsilon", order: int = 2,
                      lower_order_final: bool = True, skip_type: str = "time_uniform",
                      variance_type: str = "fixed_small", precision: str = "fp32",
                      start_step: int = 0, step_hook: Optional[StepHook] = None) -> np.ndarray:
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
        precision: ``"fp32"`` (default; the float64 path above) or ``"original_fp16"``, the MindSpore
            Wukong-Huahua release's dtypes and kernels step by step (see
            :func:`_sample_original_fp16`; ``prediction_type='epsilon'`` and
            ``skip_type='time_uniform'`` only). There the model gets ``x`` and ``t`` as float16
            arrays and its output is rounded to float16, as the original's fp16 UNet returns.
        start_step: skip the first (noisiest) ``start_step`` of the ``num_steps`` steps:
            ``x_T`` is at the noise level of that grid time (:func:`dpm_solver_levels`;
            img2img); the first step taken is first order, the grid and the final-step order
            are those of the full ``num_steps`` run.
        step_hook: ``step_hook(step_index, x, alpha, sigma) -> x`` after every step (blended
            inpainting), with ``x``'s new noise level.

    Returns:
        float32 array of the same shape as ``x_T`` (fp16 values with ``"original_fp16"``).
    """
    del rng  # deterministic
    check_schedule(schedule, NAME)
    check_model_options(prediction_type, variance_type)
    check_callback(callback, NAME)
    check_hook(step_hook, NAME)
    steps = check_step_count(num_steps, schedule.num_timesteps, NAME)
    start = check_start(start_step, steps, NAME)
    if isinstance(order, bool) or order not in (1, 2):
        raise ValueError(f"{NAME}: order must be 1 or 2, got {order!r}")
    if skip_type not in SKIP_TYPES:
        raise ValueError(f"{NAME}: unknown skip_type {skip_type!r}; expected one of {SKIP_TYPES}")
    if precision not in PRECISIONS:
        raise ValueError(f"{NAME}: precision must be one of {PRECISIONS}, got {precision!r}")
    order = min(order, steps)
    if precision == "original_fp16":
        if prediction_type != "epsilon" or skip_type != "time_uniform":
            raise ValueError(f"{NAME}: precision='original_fp16' reproduces Wukong-Huahua's sampler, "
                             "which takes an epsilon model and skip_type='time_uniform'; got "
                             f"prediction_type={prediction_type!r}, skip_type={skip_type!r}")
        return _sample_original_fp16(model_fn, check_x(x_T, NAME), schedule, steps, order,
                                     lower_order_final, variance_type, progress, callback,
                                     start, step_hook)
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
    hist = [(start, data_pred(x, start))]
    for i in step_iter(steps - start, NAME, progress):
        step = start + i + 1  # advance from times[hist[-1][0]] to times[step]
        step_order = _step_order(step, start, steps, order, lower_order_final)
        s, m_s = hist[-1]
        h = lambdas[step] - lambdas[s]
        phi = np.expm1(-h)
        x_new = (sigmas[step] / sigmas[s]) * x - (alphas[step] * phi) * m_s
        if step_order == 2:
            s_prev, m_prev = hist[-2]
            r = (lambdas[s] - lambdas[s_prev]) / h
            x_new = x_new - (0.5 * alphas[step] * phi / r) * (m_s - m_prev)
        x = apply_hook(step_hook, i, x_new, alphas[step], sigmas[step])
        emit(callback, i, float(model_times[s]), x, m_s)
        if step < steps:
            hist.append((step, data_pred(x, step)))
            hist = hist[-2:]
    return x.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# precision="original_fp16": the MindSpore Wukong-Huahua release's DPM-Solver, dtype for dtype.
#
# What it computes (facts read from its ``ldm/models/diffusion/dpm_solver``, re-implemented):
# * alphas_cumprod: betas = MindSpore LinSpace(sqrt(b0), sqrt(b1), T) ** 2 in float32 (its
#   "linear" = our scaled_linear), float32 numpy cumprod of 1 - betas, stored as float16
#   (use_fp16). log_alpha = 0.5 * log(alphas_cumprod) in fp16; keypoints t_k = fp16(k / T),
#   k = 1..T, from a float32 linspace.
# * the time grid: fp16 of a float32 linspace(1, 1/T, steps + 1); the start noise is cast to fp16;
#   the model gets fp16 x and fp16 t_model = (t - 1/T) * 1000 (T = 1000), and returns fp16.
#   With classifier-free guidance the original combines u + s (c - u) in fp16 ops on its fp16
#   UNet outputs; a model_fn that does the same gives its numbers (this path only rounds the
#   model output to fp16).
# * interpolation of log_alpha(t) through the keypoints, in fp16: x's rank among the keypoints
#   by a MindSpore Sort of [x, keypoints] (its tie order decides the segment), then
#   y0 + (x - x0) * (y1 - y0) / (x1 - x0) on the segment (extrapolating at the ends).
# * alpha = exp(la), sigma = sqrt(1 - exp(2 la)), lambda = la - 0.5 log(1 - exp(2 la)), all fp16.
# * DPM-Solver++ (predict_x0=True, no thresholding), multistep order 2, lower_order_final:
#   x0 = (x - sigma_t eps) / alpha_t;
#   order 1: x_t = (sigma_t / sigma_s) x - (alpha_t expm1(-h)) x0_s;
#   order 2: D = (1 / r0) (x0_s - x0_s'), r0 = h0 / h,
#            x_t = (sigma_t / sigma_s) x - (alpha_t (exp(-h) - 1)) x0_s - 0.5 (alpha_t (exp(-h) - 1)) D.


class _OriginalFP16Schedule:
    """The fp16 keypoint tables and marginals of Wukong's ``NoiseScheduleVP('discrete')``."""

    def __init__(self, schedule: DiffusionSchedule):
        import mindspore as ms
        from mindspore import Tensor, ops

        self.ms, self.ops, self.Tensor = ms, ops, Tensor
        f32, f16 = ms.float32, ms.float16
        T = schedule.num_timesteps
        self.total_n = T
        betas = np.asarray(schedule.betas, dtype=np.float64)
        if schedule.kind == "scaled_linear":
            # the original's make_beta_schedule: float32 LinSpace of the square roots, squared
            lo, hi = math.sqrt(betas[0]), math.sqrt(betas[-1])
            b32 = ops.LinSpace()(Tensor(lo, f32), Tensor(hi, f32), T) ** 2
        else:  # other kinds: the float64 betas rounded to float32
            b32 = Tensor(betas.astype(np.float32))
        abar32 = np.cumprod((1.0 - b32).asnumpy(), axis=0)       # float32 numpy cumprod
        abar16 = Tensor(abar32, dtype=f16)
        self.log_alpha = (0.5 * ops.log(abar16)).asnumpy()       # (T,) fp16
        grid = ops.linspace(Tensor(0.0, f32), Tensor(1.0, f32), T + 1)[1:]
        self.t_keys = ops.cast(grid, f16).asnumpy()             # (T,) fp16, increasing

    def time_grid(self, steps: int) -> np.ndarray:
        ms, ops, Tensor = self.ms, self.ops, self.Tensor
        grid = ops.linspace(Tensor(1.0, ms.float32), Tensor(1.0 / self.total_n, ms.float32), steps + 1)
        return ops.cast(grid, ms.float16).asnumpy()

    def log_alpha_at(self, t):
        """Piecewise-linear log_alpha at the fp16 times ``t`` (a (B,) fp16 Tensor), in fp16."""
        ms, ops, Tensor = self.ms, self.ops, self.Tensor
        n, k = t.shape[0], self.t_keys.shape[0]
        keys = ops.broadcast_to(Tensor(self.t_keys).reshape(1, k), (n, k))
        _, order = ops.Sort(axis=1)(ops.concat((t.reshape(n, 1), keys), axis=1))
        # where t (column 0) sorted to = its rank among the keypoints, ties as MindSpore's Sort
        rank = ops.Argmin(axis=1)(ops.cast(order, ms.float32)).asnumpy()
        seg = np.clip(rank - 1, 0, k - 2)
        x0, x1 = Tensor(self.t_keys[seg]), Tensor(self.t_keys[seg + 1])
        y0, y1 = Tensor(self.log_alpha[seg]), Tensor(self.log_alpha[seg + 1])
        return y0 + (t - x0) * (y1 - y0) / (x1 - x0)

    def marginals(self, t):
        """``(log_alpha, alpha, sigma, lambda)`` at ``t``, each (B,) fp16, in the original's ops."""
        ops = self.ops
        la = self.log_alpha_at(t)
        sigma = ops.sqrt(1.0 - ops.exp(2.0 * la))
        lam = la - 0.5 * ops.log(1.0 - ops.exp(2.0 * la))
        return la, ops.exp(la), sigma, lam


def _sample_original_fp16(model_fn, x_T, schedule, steps, order, lower_order_final,
                          variance_type, progress, callback, start=0, step_hook=None):
    import mindspore as ms
    from mindspore import Tensor, ops

    from ..gaussian import split_learned_variance

    f16 = ms.float16
    vp = _OriginalFP16Schedule(schedule)
    grid = vp.time_grid(steps)                                  # (steps + 1,) fp16
    x = ops.cast(Tensor(x_T.astype(np.float32)), f16)
    batch, nd = x.shape[0], x.ndim

    def col(v):  # (B,) -> (B, 1, ..., 1)
        return v.reshape((batch,) + (1,) * (nd - 1))

    def at(j):
        return Tensor(np.full((batch,), grid[j], dtype=np.float16))

    def data_pred(x_in, t):
        t_model = (t - 1.0 / vp.total_n) * float(vp.total_n)   # fp16
        out = np.asarray(model_fn(x_in.asnumpy(), t_model.asnumpy()))
        if variance_type == "learned_range":
            out, _ = split_learned_variance(out, tuple(x_in.shape))
        elif out.shape != tuple(x_in.shape):
            raise ValueError(f"{NAME}: model_fn returned shape {out.shape} for x of shape "
                             f"{tuple(x_in.shape)}; for a learned-variance model with 2C channels "
                             "pass variance_type='learned_range'")
        eps = ops.cast(Tensor(np.ascontiguousarray(out)), f16)
        _, alpha, sigma, _ = vp.marginals(t)
        return (x_in - col(sigma) * eps) / col(alpha), float(t_model.asnumpy()[0])

    t0 = at(start)
    m0, tm0 = data_pred(x, t0)
    hist = [(t0, m0, tm0)]                                      # (t, x0 prediction, model time)
    for i in step_iter(steps - start, NAME, progress):
        step = start + i + 1
        step_order = _step_order(step, start, steps, order, lower_order_final)
        t = at(step)
        s, m_s, tm_s = hist[-1]
        _, _, sigma_s, lam_s = vp.marginals(s)
        la_t, _, sigma_t, lam_t = vp.marginals(t)
        alpha_t = ops.exp(la_t)
        h = lam_t - lam_s
        if step_order == 1:
            x = col(sigma_t / sigma_s) * x - col(alpha_t * ops.expm1(-h)) * m_s
        else:
            s_prev, m_prev, _ = hist[-2]
            lam_prev = vp.marginals(s_prev)[3]
            r0 = (lam_s - lam_prev) / h
            d1 = col(1.0 / r0) * (m_s - m_prev)
            phi = alpha_t * (ops.exp(-h) - 1.0)
            x = col(sigma_t / sigma_s) * x - col(phi) * m_s - 0.5 * col(phi) * d1
        if step_hook is not None:
            a_t, s_t = float(alpha_t.asnumpy()[0]), float(sigma_t.asnumpy()[0])
            x = ops.cast(Tensor(apply_hook(step_hook, i, x.asnumpy().astype(np.float64), a_t, s_t)
                                .astype(np.float32)), f16)
        emit(callback, i, tm_s, x.asnumpy().astype(np.float64), m_s.asnumpy())
        if step < steps:
            m_new, tm_new = data_pred(x, t)
            hist = (hist + [(t, m_new, tm_new)])[-2:]
    return x.asnumpy().astype(np.float32)
