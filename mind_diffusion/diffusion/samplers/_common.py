"""Shared argument checking and model-calling helpers for the samplers.

Every sampler keeps its state in float64 numpy arrays, hands the model ``x`` as float32 and
returns float32; all randomness comes from the caller's ``np.random.Generator``, so a run is
bit-reproducible for the same inputs and seed.
"""
from __future__ import annotations

import numbers
from typing import Callable, Iterable, Optional, Tuple

import numpy as np

from ..gaussian import (check_prediction_type, check_variance_type, model_output_to_x0_eps_ab,
                        p_mean_variance, split_learned_variance)
from ..schedule import DiffusionSchedule, check_count

Callback = Callable[[int, object, np.ndarray, np.ndarray], None]


def check_schedule(schedule, name: str) -> DiffusionSchedule:
    """The samplers take the base (unrespaced) schedule and respace it themselves."""
    if not isinstance(schedule, DiffusionSchedule):
        raise ValueError(f"{name}: schedule must be a DiffusionSchedule, got {type(schedule)!r}")
    if schedule.is_respaced:
        raise ValueError(
            f"{name}: pass the base (unrespaced) schedule, e.g. schedule.base; the sampler "
            "respaces it for num_steps (give a respacing spec as num_steps if needed)"
        )
    return schedule


def check_step_count(num_steps, num_timesteps: int, name: str) -> int:
    """Validate an integer number of sampling steps in ``[1, num_timesteps]``."""
    return check_count(num_steps, f"{name}: num_steps", num_timesteps, "the schedule's num_timesteps")


def check_spec(num_steps, name: str) -> None:
    """Reject anything that is neither a step count nor a respacing spec."""
    if isinstance(num_steps, bool) or not isinstance(
            num_steps, (numbers.Integral, str, list, tuple, np.ndarray)):
        raise ValueError(
            f"{name}: num_steps must be an int or a respacing spec (a str such as '50', "
            f"'10,10,5', 'fast27' or a list of timesteps), got {num_steps!r}"
        )


def check_x(x_T, name: str) -> np.ndarray:
    x = np.asarray(x_T)
    if x.ndim < 1 or x.shape[0] < 1 or not np.issubdtype(x.dtype, np.floating):
        raise ValueError(
            f"{name}: x_T must be a floating-point array of shape (B, ...), got "
            f"shape {x.shape} dtype {x.dtype}"
        )
    return x.astype(np.float64)


def check_rng(rng, name: str, why: str, batch: Optional[int] = None):
    """A numpy Generator, or (with ``batch``) a list of ``batch`` Generators, one per image, so
    that image ``k`` of a batch can be regenerated alone from its own seed."""
    if rng is None:
        raise ValueError(
            f"{name} is stochastic ({why}) and needs rng=np.random.default_rng(seed) "
            "(or one Generator per image) for its noise"
        )
    if isinstance(rng, (list, tuple)) and batch is not None:
        if len(rng) != batch or not all(isinstance(r, np.random.Generator) for r in rng):
            raise ValueError(f"{name}: rng as a list needs {batch} numpy Generators (one per "
                             f"image), got {len(rng)} item(s)")
        return list(rng)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(
            f"{name}: rng must be a numpy Generator (np.random.default_rng(seed)) or a list "
            f"of one per image, got {type(rng)!r}"
        )
    return rng


def standard_normal(rng, shape) -> np.ndarray:
    """N(0, I) noise of ``shape`` from one Generator, or image by image from a list of them."""
    if isinstance(rng, list):
        return np.stack([r.standard_normal(shape[1:]) for r in rng])
    return rng.standard_normal(shape)


def check_nonneg(value, label: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not np.isfinite(value) or value < 0:
        raise ValueError(f"{name}: {label} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_callback(callback, name: str) -> Optional[Callback]:
    if callback is not None and not callable(callback):
        raise ValueError(f"{name}: callback must be callable(step_index, t, x, pred_x0)")
    return callback


def check_model_options(prediction_type: str, variance_type: str) -> None:
    check_prediction_type(prediction_type)
    check_variance_type(variance_type)


def step_iter(n: int, name: str, progress: bool) -> Iterable[int]:
    """``range(n)`` wrapped in a tqdm bar when ``progress`` is true."""
    if not progress:
        return range(n)
    from tqdm.auto import tqdm

    return tqdm(range(n), desc=name, total=n)


def call_model(model_fn: Callable, x: np.ndarray, t_model: np.ndarray, name: str,
               variance_type: str = "fixed_small") -> np.ndarray:
    """Call ``model_fn(x_float32, t)`` and return its output as float64.

    With ``variance_type='learned_range'`` the ``2C``-channel output is returned whole (the
    caller splits it); otherwise its shape must equal ``x``'s.
    """
    out = np.asarray(model_fn(x.astype(np.float32), t_model), dtype=np.float64)
    if not np.all(np.isfinite(out)):
        raise FloatingPointError(
            f"{name}: the model output holds NaN/Inf at timestep {np.asarray(t_model).ravel()[0]}; "
            "on fp16 devices try --precision fp32")
    if variance_type == "learned_range":
        split_learned_variance(out, x.shape)  # validates the channel count
    elif out.shape != x.shape:
        raise ValueError(
            f"{name}: model_fn returned shape {out.shape} for x of shape {x.shape}; for a "
            "learned-variance model with 2C channels pass variance_type='learned_range'"
        )
    return out


def chain_step(model_fn: Callable, chain, x: np.ndarray, k: int, name: str, *,
               prediction_type: str, variance_type: str, clip_denoised: bool):
    """One model call at step ``k`` of a respaced chain: ``(t_orig, p_mean_variance dict)``,
    the model evaluated at the chain's original timestep and its output read through the
    chain's tables (the step DDPM and DDIM share)."""
    batch = x.shape[0]
    t_orig = int(chain.timestep_map[k])
    out = call_model(model_fn, x, np.full((batch,), t_orig, dtype=np.int64), name, variance_type)
    pmv = p_mean_variance(chain, out, x, np.full((batch,), k, dtype=np.int64),
                          prediction_type=prediction_type, variance_type=variance_type,
                          clip_denoised=clip_denoised)
    return t_orig, pmv


def predict_x0_eps(model_fn: Callable, x: np.ndarray, t_model: np.ndarray, alpha_bar,
                   prediction_type: str, variance_type: str, name: str
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """Call the model and convert its prediction into ``(x0, eps)`` at noise ``alpha_bar``.
    Learned-variance channels, if any, are dropped (these samplers do not use them)."""
    out = call_model(model_fn, x, t_model, name, variance_type)
    if variance_type == "learned_range":
        out, _ = split_learned_variance(out, x.shape)
    return model_output_to_x0_eps_ab(prediction_type, alpha_bar, x, out)


def emit(callback: Optional[Callback], step_index: int, t, x: np.ndarray,
         pred_x0: np.ndarray) -> None:
    if callback is not None:
        callback(step_index, t, x.astype(np.float32), np.asarray(pred_x0).astype(np.float32))


#: ``step_hook(step_index, x, alpha, sigma) -> x``: called after every step with the new ``x``
#: and its noise level (``x ~ alpha * x0 + sigma * eps``); returns the ``x`` the sampler goes on
#: with (blended inpainting replaces the known region there).
StepHook = Callable[[int, np.ndarray, float, float], np.ndarray]


def check_start(start_step, n_steps: int, name: str) -> int:
    """``start_step`` in ``[0, n_steps)``: the number of the grid's noisiest steps to skip
    (img2img / SDEdit start ``x_T`` at the noise level of the grid's step ``start_step``)."""
    if isinstance(start_step, bool) or not isinstance(start_step, numbers.Integral) \
            or not 0 <= start_step < n_steps:
        raise ValueError(f"{name}: start_step must be an integer in [0, {n_steps}) for this "
                         f"grid of {n_steps} steps, got {start_step!r}")
    return int(start_step)


def check_hook(step_hook, name: str) -> Optional[StepHook]:
    if step_hook is not None and not callable(step_hook):
        raise ValueError(f"{name}: step_hook must be callable(step_index, x, alpha, sigma) -> x")
    return step_hook


def apply_hook(step_hook: Optional[StepHook], step_index: int, x: np.ndarray, alpha: float,
               sigma: float) -> np.ndarray:
    """``x`` after the hook (unchanged without one), as float64 of the same shape."""
    if step_hook is None:
        return x
    out = np.asarray(step_hook(step_index, x, float(alpha), float(sigma)), dtype=np.float64)
    if out.shape != x.shape:
        raise ValueError(f"step_hook returned shape {out.shape} for x of shape {x.shape}")
    return out
