"""Gaussian diffusion math: forward process, posteriors, parameterisation conversions, losses.

The first part is framework-free numpy (float64-safe, vectorised over a batch). Functions that
take ``(schedule, ..., t)`` gather per-sample coefficients of ``schedule`` at the integer
indices ``t`` of shape ``(B,)``; their ``*_ab`` twins take ``alpha_bar`` values directly (a
scalar or a ``(B,)`` array) for samplers that work at arbitrary noise levels (DDIM, PLMS,
DPM-Solver).

Conventions (``abar`` = ``alphas_cumprod[t]``)::

    x_t = sqrt(abar) * x0 + sqrt(1 - abar) * eps
    v   = sqrt(abar) * eps - sqrt(1 - abar) * x0

The second part holds MindSpore cells used inside compiled training graphs; they receive
already-gathered ``(B,)`` coefficient tensors so that no Python indexing happens in the graph.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from .schedule import DiffusionSchedule

__all__ = [
    "PREDICTION_TYPES",
    "VARIANCE_TYPES",
    "extract",
    "broadcast_coeff",
    "q_sample",
    "q_posterior_mean_variance",
    "eps_to_x0",
    "x0_to_eps",
    "v_to_eps",
    "v_to_x0",
    "x0_eps_to_v",
    "eps_to_x0_ab",
    "x0_to_eps_ab",
    "v_to_eps_ab",
    "v_to_x0_ab",
    "x0_eps_to_v_ab",
    "model_output_to_x0_eps_ab",
    "split_learned_variance",
    "learned_range_log_variance",
    "p_mean_variance",
    "mean_flat",
    "normal_kl",
    "approx_standard_normal_cdf",
    "discretized_gaussian_log_likelihood",
    "vlb_terms",
    "simple_mse",
    "VLB_COEFF_NAMES",
    "vlb_coefficients",
    "MSLearnedRangeVLB",
]

PREDICTION_TYPES = ("epsilon", "v", "sample")
VARIANCE_TYPES = ("fixed_small", "fixed_large", "learned_range")


def check_prediction_type(prediction_type: str) -> str:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES} "
            "('epsilon': the model predicts the noise, 'v': v-prediction, 'sample': x0)"
        )
    return prediction_type


def check_variance_type(variance_type: str) -> str:
    if variance_type not in VARIANCE_TYPES:
        raise ValueError(
            f"unknown variance_type {variance_type!r}; expected one of {VARIANCE_TYPES}"
        )
    return variance_type


# ----------------------------------------------------------------------------- gathering
def extract(arr, t, ndim: int) -> np.ndarray:
    """Gather ``arr[t]`` for a batch of indices ``t`` (shape ``(B,)``) and reshape to
    ``(B, 1, ..., 1)`` with ``ndim`` dimensions so it broadcasts against ``(B, ...)`` data."""
    t = np.asarray(t)
    if t.ndim != 1:
        raise ValueError(f"t must be a 1-D array of per-sample timesteps, got shape {t.shape}")
    values = np.asarray(arr)[t.astype(np.int64)]
    return values.reshape((t.shape[0],) + (1,) * (ndim - 1))


def broadcast_coeff(coeff, ndim: int) -> np.ndarray:
    """Reshape a scalar or a per-sample ``(B,)`` coefficient to broadcast against ``ndim``-D
    data of shape ``(B, ...)``. Scalars are returned as 0-d float64 arrays."""
    coeff = np.asarray(coeff, dtype=np.float64)
    if coeff.ndim == 0:
        return coeff
    if coeff.ndim != 1:
        raise ValueError(f"coefficients must be scalars or (B,) arrays, got shape {coeff.shape}")
    return coeff.reshape((coeff.shape[0],) + (1,) * (ndim - 1))


# ----------------------------------------------------------------------------- forward
def q_sample(schedule: DiffusionSchedule, x0, t, noise) -> np.ndarray:
    """Sample ``x_t ~ q(x_t | x0) = N(sqrt(abar_t) x0, (1 - abar_t) I)`` with given noise."""
    x0 = np.asarray(x0)
    return (extract(schedule.sqrt_alphas_cumprod, t, x0.ndim) * x0
            + extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * np.asarray(noise))


def q_posterior_mean_variance(schedule: DiffusionSchedule, x0, x_t, t
                              ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, variance and clipped log-variance of ``q(x_{t-1} | x_t, x0)``.

    The variance terms are returned with shape ``(B, 1, ..., 1)``.
    """
    x0 = np.asarray(x0)
    nd = x0.ndim
    mean = (extract(schedule.posterior_mean_coef1, t, nd) * x0
            + extract(schedule.posterior_mean_coef2, t, nd) * np.asarray(x_t))
    var = extract(schedule.posterior_variance, t, nd)
    log_var = extract(schedule.posterior_log_variance_clipped, t, nd)
    return mean, var, log_var


# ----------------------------------------------------------------------------- conversions
def eps_to_x0_ab(alpha_bar, x_t, eps) -> np.ndarray:
    """``x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)``."""
    x_t = np.asarray(x_t)
    ab = broadcast_coeff(alpha_bar, x_t.ndim)
    return (x_t - np.sqrt(1.0 - ab) * np.asarray(eps)) / np.sqrt(ab)


def x0_to_eps_ab(alpha_bar, x_t, x0) -> np.ndarray:
    """``eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)``."""
    x_t = np.asarray(x_t)
    ab = broadcast_coeff(alpha_bar, x_t.ndim)
    return (x_t - np.sqrt(ab) * np.asarray(x0)) / np.sqrt(1.0 - ab)


def v_to_eps_ab(alpha_bar, x_t, v) -> np.ndarray:
    """``eps = sqrt(abar) v + sqrt(1 - abar) x_t``."""
    x_t = np.asarray(x_t)
    ab = broadcast_coeff(alpha_bar, x_t.ndim)
    return np.sqrt(ab) * np.asarray(v) + np.sqrt(1.0 - ab) * x_t


def v_to_x0_ab(alpha_bar, x_t, v) -> np.ndarray:
    """``x0 = sqrt(abar) x_t - sqrt(1 - abar) v``."""
    x_t = np.asarray(x_t)
    ab = broadcast_coeff(alpha_bar, x_t.ndim)
    return np.sqrt(ab) * x_t - np.sqrt(1.0 - ab) * np.asarray(v)


def x0_eps_to_v_ab(alpha_bar, x0, eps) -> np.ndarray:
    """``v = sqrt(abar) eps - sqrt(1 - abar) x0`` (the v-prediction training target)."""
    x0 = np.asarray(x0)
    ab = broadcast_coeff(alpha_bar, x0.ndim)
    return np.sqrt(ab) * np.asarray(eps) - np.sqrt(1.0 - ab) * x0


def _abar(schedule: DiffusionSchedule, t) -> np.ndarray:
    return np.asarray(schedule.alphas_cumprod)[np.asarray(t).astype(np.int64)]


def eps_to_x0(schedule: DiffusionSchedule, x_t, t, eps) -> np.ndarray:
    """Predicted ``x0`` from a noise prediction at schedule indices ``t``."""
    x_t = np.asarray(x_t)
    return (extract(schedule.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t
            - extract(schedule.sqrt_recipm1_alphas_cumprod, t, x_t.ndim) * np.asarray(eps))


def x0_to_eps(schedule: DiffusionSchedule, x_t, t, x0) -> np.ndarray:
    """Noise implied by a predicted ``x0`` at schedule indices ``t``."""
    x_t = np.asarray(x_t)
    return ((extract(schedule.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t - np.asarray(x0))
            / extract(schedule.sqrt_recipm1_alphas_cumprod, t, x_t.ndim))


def v_to_eps(schedule: DiffusionSchedule, x_t, t, v) -> np.ndarray:
    """Noise from a v-prediction at schedule indices ``t``."""
    return v_to_eps_ab(_abar(schedule, t), x_t, v)


def v_to_x0(schedule: DiffusionSchedule, x_t, t, v) -> np.ndarray:
    """``x0`` from a v-prediction at schedule indices ``t``."""
    return v_to_x0_ab(_abar(schedule, t), x_t, v)


def x0_eps_to_v(schedule: DiffusionSchedule, x0, t, eps) -> np.ndarray:
    """v-prediction target at schedule indices ``t`` (argument order mirrors ``q_sample``)."""
    return x0_eps_to_v_ab(_abar(schedule, t), x0, eps)


def model_output_to_x0_eps_ab(prediction_type: str, alpha_bar, x_t, output
                              ) -> Tuple[np.ndarray, np.ndarray]:
    """Convert a model prediction of the given type into ``(x0, eps)`` at noise level
    ``alpha_bar``."""
    check_prediction_type(prediction_type)
    output = np.asarray(output)
    if prediction_type == "epsilon":
        return eps_to_x0_ab(alpha_bar, x_t, output), output
    if prediction_type == "v":
        return v_to_x0_ab(alpha_bar, x_t, output), v_to_eps_ab(alpha_bar, x_t, output)
    return output, x0_to_eps_ab(alpha_bar, x_t, output)


def split_learned_variance(model_output, x_shape) -> Tuple[np.ndarray, np.ndarray]:
    """Split a learned-variance output of ``2C`` channels (axis 1) into ``(pred, v)``."""
    out = np.asarray(model_output)
    channels = x_shape[1] if len(x_shape) > 1 else None
    if out.ndim < 2 or channels is None or out.shape[1] != 2 * channels:
        raise ValueError(
            f"variance_type='learned_range' needs a model output with 2*C channels on axis 1 "
            f"(here {2 * channels if channels else '2C'} channels: eps + variance, C={channels} "
            f"for x of shape {tuple(x_shape)}), got shape {out.shape}"
        )
    return out[:, :channels], out[:, channels:]


def learned_range_log_variance(schedule: DiffusionSchedule, v, t) -> np.ndarray:
    """Improved-DDPM learned variance: ``frac = (v + 1) / 2`` interpolates the log variance
    between ``posterior_log_variance_clipped`` (frac=0) and ``log(beta_t)`` (frac=1)."""
    v = np.asarray(v)
    min_log = extract(schedule.posterior_log_variance_clipped, t, v.ndim)
    max_log = extract(schedule.log_betas, t, v.ndim)
    frac = (v + 1.0) / 2.0
    return frac * max_log + (1.0 - frac) * min_log


def p_mean_variance(schedule: DiffusionSchedule, model_output, x_t, t, *,
                    prediction_type: str = "epsilon", variance_type: str = "fixed_small",
                    clip_denoised: bool = False) -> Dict[str, np.ndarray]:
    """Mean and variance of the reverse step ``p(x_{t-1} | x_t)`` from a model output.

    Args:
        schedule: the (possibly respaced) schedule; ``t`` are indices into it.
        model_output: the network output; with ``variance_type='learned_range'`` it has
            ``2C`` channels on axis 1 (prediction first, variance interpolation ``v`` second).
        x_t: current noisy sample ``(B, C, ...)``; ``t``: ``(B,)`` integer indices.
        prediction_type: ``'epsilon'``, ``'v'`` or ``'sample'`` (x0).
        variance_type: ``'fixed_small'`` (posterior variance), ``'fixed_large'`` (``beta_t``,
            with the t=0 entry replaced by ``posterior_variance[1]`` as in Ho et al. /
            guided-diffusion) or ``'learned_range'``.
        clip_denoised: clip the predicted ``x0`` to ``[-1, 1]`` before computing the mean.

    Returns:
        dict with ``mean``, ``variance``, ``log_variance`` (broadcastable to ``x_t``),
        ``pred_x0`` and ``eps`` (the noise consistent with ``pred_x0``). An epsilon
        prediction becomes ``x0`` through ``sqrt(1/abar) x_t - sqrt(1/abar - 1) eps`` and a
        clipped ``x0`` back into ``eps`` through the same tables (guided-diffusion's
        ``_predict_xstart_from_eps`` / ``_predict_eps_from_xstart``), so a schedule with the
        original's reduced-precision tables (``coeff_dtype``) reproduces its arithmetic.
    """
    check_prediction_type(prediction_type)
    check_variance_type(variance_type)
    x_t = np.asarray(x_t)
    nd = x_t.ndim
    out = np.asarray(model_output)
    if variance_type == "learned_range":
        out, v = split_learned_variance(out, x_t.shape)
        log_variance = learned_range_log_variance(schedule, v, t)
        variance = np.exp(log_variance)
    else:
        if variance_type == "fixed_small":
            var_arr = schedule.posterior_variance
            log_arr = schedule.posterior_log_variance_clipped
        else:
            betas = np.asarray(schedule.betas)
            first = schedule.posterior_variance[1] if schedule.num_timesteps > 1 else betas[0]
            var_arr = np.append(first, betas[1:])
            log_arr = np.log(var_arr)
        variance = extract(var_arr, t, nd)
        log_variance = extract(log_arr, t, nd)
    if out.shape != x_t.shape:
        raise ValueError(f"model output shape {out.shape} does not match x_t shape {x_t.shape}")

    if prediction_type == "epsilon":  # through the schedule's tables, as guided-diffusion
        pred_x0, eps = eps_to_x0(schedule, x_t, t, out), out
    else:
        pred_x0, eps = model_output_to_x0_eps_ab(prediction_type, _abar(schedule, t), x_t, out)
    if clip_denoised:
        pred_x0 = np.clip(pred_x0, -1.0, 1.0)
        eps = x0_to_eps(schedule, x_t, t, pred_x0)
    mean, _, _ = q_posterior_mean_variance(schedule, pred_x0, x_t, t)
    return {"mean": mean, "variance": variance, "log_variance": log_variance,
            "pred_x0": pred_x0, "eps": eps}


# ----------------------------------------------------------------------------- losses
def mean_flat(x) -> np.ndarray:
    """Mean over all non-batch dimensions."""
    x = np.asarray(x)
    return x.mean(axis=tuple(range(1, x.ndim))) if x.ndim > 1 else x


def normal_kl(mean1, logvar1, mean2, logvar2) -> np.ndarray:
    """Elementwise ``KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2)))`` in nats."""
    mean1, logvar1, mean2, logvar2 = (np.asarray(a, dtype=np.float64)
                                      for a in (mean1, logvar1, mean2, logvar2))
    return 0.5 * (-1.0 + logvar2 - logvar1 + np.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * np.exp(-logvar2))


def approx_standard_normal_cdf(x) -> np.ndarray:
    """Fast tanh approximation of the standard normal CDF (as used by improved DDPM)."""
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, means, log_scales) -> np.ndarray:
    """Log-likelihood (nats, elementwise) of 8-bit data rescaled to ``[-1, 1]`` under a
    Gaussian discretised into bins of width ``2/255``; the first and last bins extend to
    ``-inf`` / ``+inf`` (detected with ``x < -0.999`` / ``x > 0.999``)."""
    x = np.asarray(x, dtype=np.float64)
    centered = x - np.asarray(means, dtype=np.float64)
    inv_std = np.exp(-np.asarray(log_scales, dtype=np.float64))
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = np.log(np.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = np.log(np.maximum(1.0 - cdf_min, 1e-12))
    log_delta = np.log(np.maximum(cdf_plus - cdf_min, 1e-12))
    return np.where(x < -0.999, log_cdf_plus,
                    np.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def vlb_terms(schedule: DiffusionSchedule, x0, x_t, t, model_output, *,
              prediction_type: str = "epsilon", variance_type: str = "learned_range",
              clip_denoised: bool = False) -> np.ndarray:
    """Per-sample variational bound term in bits/dim.

    ``KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t))`` for ``t > 0`` and the discretised decoder NLL
    ``-log p(x0|x1)`` at ``t == 0``. For the improved-DDPM hybrid loss the caller feeds a
    stop-gradient prediction half so that this term only trains the variance.
    """
    x0 = np.asarray(x0, dtype=np.float64)
    t = np.asarray(t)
    true_mean, _, true_log_var = q_posterior_mean_variance(schedule, x0, x_t, t)
    out = p_mean_variance(schedule, model_output, x_t, t, prediction_type=prediction_type,
                          variance_type=variance_type, clip_denoised=clip_denoised)
    kl = mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"]))
    nll = -mean_flat(discretized_gaussian_log_likelihood(
        x0, out["mean"], 0.5 * np.broadcast_to(out["log_variance"], x0.shape)))
    return np.where(t == 0, nll, kl) / np.log(2.0)


def simple_mse(pred, target) -> np.ndarray:
    """Per-sample mean squared error (the DDPM 'simple' loss), averaged over non-batch dims."""
    diff = np.asarray(pred, dtype=np.float64) - np.asarray(target, dtype=np.float64)
    return mean_flat(diff ** 2)


# ============================================================================ MindSpore
from mindspore import nn, ops  # noqa: E402  (mind_diffusion sets env defaults first)

#: Order of the per-sample coefficient inputs of :class:`MSLearnedRangeVLB`.
VLB_COEFF_NAMES = (
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "posterior_log_variance_clipped",
    "log_betas",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "is_first",
)


def vlb_coefficients(schedule: DiffusionSchedule, t, dtype=np.float32) -> Tuple[np.ndarray, ...]:
    """Gather the ``(B,)`` coefficients that :class:`MSLearnedRangeVLB` takes, in the order of
    :data:`VLB_COEFF_NAMES` (``is_first`` is 1.0 where ``t == 0``)."""
    t = np.asarray(t).astype(np.int64)
    tables = {
        "posterior_mean_coef1": schedule.posterior_mean_coef1,
        "posterior_mean_coef2": schedule.posterior_mean_coef2,
        "posterior_log_variance_clipped": schedule.posterior_log_variance_clipped,
        "log_betas": schedule.log_betas,
        "sqrt_recip_alphas_cumprod": schedule.sqrt_recip_alphas_cumprod,
        "sqrt_recipm1_alphas_cumprod": schedule.sqrt_recipm1_alphas_cumprod,
    }
    coeffs = [np.asarray(tables[name])[t].astype(dtype) for name in VLB_COEFF_NAMES[:-1]]
    coeffs.append((t == 0).astype(dtype))
    return tuple(coeffs)


class MSLearnedRangeVLB(nn.Cell):
    """Per-sample improved-DDPM VLB term (bits/dim) for an epsilon model with a
    ``learned_range`` variance, as a graph-friendly MindSpore cell.

    ``construct(x0, x_t, eps, v, coef1, coef2, post_log_var, log_beta, sqrt_recip_ac,
    sqrt_recipm1_ac, is_first)``: ``eps`` is the model's noise prediction (pass it through
    ``ops.stop_gradient`` for the hybrid loss), ``v`` its variance channels in ``[-1, 1]``, and
    the remaining ``(B,)`` tensors come from :func:`vlb_coefficients`. Returns ``(B,)``: the
    KL term where ``is_first == 0`` and the decoder NLL where ``is_first == 1``. Uses only
    classic ``mindspore.ops`` so it runs on CPU, GPU and Ascend in graph and pynative mode.

    ``clip_denoised=True`` clips the predicted ``x0`` to ``[-1, 1]`` before the model mean (the
    numpy ``vlb_terms(..., clip_denoised=True)``; Taichu-GLIDE's training loss, whose
    ``PMeanVariance`` always clips).
    """

    def __init__(self, clip_denoised: bool = False):
        super().__init__()
        self.clip = bool(clip_denoised)
        self.inv_log2 = 1.0 / float(np.log(2.0))
        self.sqrt_2_over_pi = float(np.sqrt(2.0 / np.pi))

    @staticmethod
    def _bc(coeff, x):
        return ops.reshape(coeff, (x.shape[0],) + (1,) * (len(x.shape) - 1))

    def _cdf(self, x):
        return 0.5 * (1.0 + ops.tanh(self.sqrt_2_over_pi * (x + 0.044715 * x * x * x)))

    def _mean_flat(self, x):
        return ops.mean(x, tuple(range(1, len(x.shape))))

    def construct(self, x0, x_t, eps, v, coef1, coef2, post_log_var, log_beta,
                  sqrt_recip_ac, sqrt_recipm1_ac, is_first):
        c1 = self._bc(coef1, x0)
        c2 = self._bc(coef2, x0)
        min_log = self._bc(post_log_var, x0)
        max_log = self._bc(log_beta, x0)
        pred_x0 = self._bc(sqrt_recip_ac, x0) * x_t - self._bc(sqrt_recipm1_ac, x0) * eps
        if self.clip:
            pred_x0 = ops.clamp(pred_x0, -1.0, 1.0)
        model_mean = c1 * pred_x0 + c2 * x_t
        frac = (v + 1.0) * 0.5
        model_log_var = frac * max_log + (1.0 - frac) * min_log
        true_mean = c1 * x0 + c2 * x_t

        # KL(q || p) with q's log variance min_log, nats -> bits.
        kl = 0.5 * (-1.0 + model_log_var - min_log + ops.exp(min_log - model_log_var)
                    + ops.square(true_mean - model_mean) * ops.exp(-model_log_var))
        kl = self._mean_flat(kl) * self.inv_log2

        # Discretised Gaussian decoder NLL for t == 0.
        centered = x0 - model_mean
        inv_std = ops.exp(-0.5 * model_log_var)
        cdf_plus = self._cdf(inv_std * (centered + 1.0 / 255.0))
        cdf_min = self._cdf(inv_std * (centered - 1.0 / 255.0))
        log_cdf_plus = ops.log(ops.clamp(cdf_plus, 1e-12))
        log_one_minus_cdf_min = ops.log(ops.clamp(1.0 - cdf_min, 1e-12))
        log_delta = ops.log(ops.clamp(cdf_plus - cdf_min, 1e-12))
        log_probs = ops.select(x0 < -0.999, log_cdf_plus,
                               ops.select(x0 > 0.999, log_one_minus_cdf_min, log_delta))
        nll = -self._mean_flat(log_probs) * self.inv_log2
        return ops.select(is_first > 0.5, nll, kl)
