"""Samplers: plain numpy loops around a ``model_fn(x, t)``.

All share the signature::

    sample_<name>(model_fn, x_T, schedule, num_steps, *, rng=None, progress=True,
                  callback=None, prediction_type="epsilon", **options) -> np.ndarray

where ``schedule`` is the base (unrespaced) :class:`~mind_diffusion.diffusion.schedule.
DiffusionSchedule`` and ``model_fn`` receives float32 ``x`` and timesteps in the original
``0..T-1`` scale. Look samplers up by name with :func:`get_sampler`.

Editing uses two more options every sampler takes: ``start_step`` (img2img / SDEdit: skip the
grid's noisiest steps; :func:`strength_start_step` picks it from a strength the way diffusers'
img2img pipeline does, :func:`sampler_levels` gives the noise level to start from) and
``step_hook(step_index, x, alpha, sigma) -> x`` (blended inpainting: called after every step
with the new noise level).
"""
import numbers
from typing import Callable, Dict

import numpy as np

from .ddim import ddim_levels, ddim_timesteps, sample_ddim
from .ddpm import ddpm_levels, ddpm_schedule, sample_ddpm
from .dpm_solver import DiscreteVPSchedule, dpm_solver_levels, sample_dpm_solver
from .plms import plms_levels, plms_timesteps, sample_plms

__all__ = [
    "SAMPLERS",
    "get_sampler",
    "sample_ddpm",
    "sample_ddim",
    "sample_plms",
    "sample_dpm_solver",
    "ddpm_schedule",
    "ddim_timesteps",
    "plms_timesteps",
    "DiscreteVPSchedule",
    "sampler_levels",
    "strength_start_step",
    "check_strength",
]

#: Sampler name -> function. ``"dpm_solver_pp"`` and ``"dpmsolver++"`` alias DPM-Solver++.
SAMPLERS: Dict[str, Callable] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "plms": sample_plms,
    "dpm_solver": sample_dpm_solver,
    "dpm_solver_pp": sample_dpm_solver,
    "dpmsolver++": sample_dpm_solver,
}


def get_sampler(name: str) -> Callable:
    """Return the sampler function registered under ``name`` (case-insensitive)."""
    key = name.strip().lower() if isinstance(name, str) else None
    if key not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid names: {sorted(SAMPLERS)}")
    return SAMPLERS[key]


_LEVELS: Dict[Callable, Callable] = {
    sample_ddpm: ddpm_levels,
    sample_ddim: ddim_levels,
    sample_plms: plms_levels,
    sample_dpm_solver: dpm_solver_levels,
}


def sampler_levels(name: str, schedule, num_steps, **options):
    """``(timesteps, alpha, sigma)`` of the steps sampler ``name`` takes for ``num_steps``,
    noisiest first: the model timestep of step ``i`` and the noise level
    ``x ~ alpha x0 + sigma eps`` that step starts from. ``options``: the sampler's grid option
    (DPM-Solver's ``skip_type``); others are ignored."""
    fn = _LEVELS[get_sampler(name)]
    if fn is dpm_solver_levels:
        return fn(schedule, num_steps, options.get("skip_type", "time_uniform"))
    return fn(schedule, num_steps)


def check_strength(strength, what: str = "strength") -> float:
    """``strength`` as a float in (0, 1]; a ValueError naming ``what`` otherwise."""
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) \
            or not np.isfinite(strength) or not 0.0 < strength <= 1.0:
        raise ValueError(f"{what} must be a number in (0, 1] (1 repaints from pure noise, 0.6-0.8 "
                         f"keeps the layout), got {strength!r}")
    return float(strength)


def strength_start_step(name: str, num_steps: int, strength: float) -> int:
    """The step an img2img run of ``num_steps`` steps starts at for ``strength``, as diffusers'
    ``StableDiffusionImg2ImgPipeline.get_timesteps`` picks it: ``init = min(int(num_steps *
    strength), num_steps)``, ``t_start = num_steps - init``, the run starting at
    ``scheduler.timesteps[t_start]``.

    For DDIM, DPM-Solver and DDPM that is step ``t_start`` of the sampler's grid. For PLMS
    diffusers' list (``PNDMScheduler`` with ``skip_prk_steps``) holds its second timestep twice
    (``981, 961, 961, 941, ...``: the pseudo improved Euler step evaluates the model there
    twice), so ``t_start >= 2`` lands one grid step earlier: PLMS starts at grid step
    ``t_start - 1`` then, at the same timestep as diffusers. A strength that leaves no step
    (``int(num_steps * strength) == 0``) is a ValueError."""
    strength = check_strength(strength)
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    init = min(int(num_steps * strength), num_steps)
    if init < 1:
        raise ValueError(f"strength {strength} of {num_steps} steps leaves no step to run "
                         f"(int(steps x strength) = 0): raise the strength to at least "
                         f"{1.0 / num_steps:.3g} or use more steps")
    t_start = num_steps - init
    if get_sampler(name) is sample_plms and t_start >= 2:
        return t_start - 1
    return t_start
