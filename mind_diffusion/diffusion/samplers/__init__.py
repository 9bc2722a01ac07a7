"""Samplers: plain numpy loops around a ``model_fn(x, t)``.

All share the signature::

    sample_<name>(model_fn, x_T, schedule, num_steps, *, rng=None, progress=True,
                  callback=None, prediction_type="epsilon", **options) -> np.ndarray

where ``schedule`` is the base (unrespaced) :class:`~mind_diffusion.diffusion.schedule.
DiffusionSchedule`` and ``model_fn`` receives float32 ``x`` and timesteps in the original
``0..T-1`` scale. Look samplers up by name with :func:`get_sampler`.
"""
from typing import Callable, Dict

from .ddim import ddim_timesteps, sample_ddim
from .ddpm import ddpm_schedule, sample_ddpm
from .dpm_solver import DiscreteVPSchedule, sample_dpm_solver
from .plms import plms_timesteps, sample_plms

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
