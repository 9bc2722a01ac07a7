"""Noise schedules (betas), timestep respacing and the :class:`DiffusionSchedule` holder.

Everything here is plain numpy in float64. The conventions follow the DDPM paper (Ho et al.)
and OpenAI's improved/guided diffusion code bases:

* ``make_betas`` builds the classic ``linear``, LDM ``scaled_linear`` and Nichol & Dhariwal
  ``squaredcos_cap_v2`` (``cosine``) schedules.
* ``space_timesteps`` picks the subset of timesteps kept when sampling with fewer steps,
  reproducing guided-diffusion's section rule, its ``"ddimN"`` stride rule and GLIDE's
  ``"fast27"`` preset.
* ``DiffusionSchedule`` precomputes every per-timestep coefficient used by the samplers and
  losses, and ``DiffusionSchedule.respace`` derives the shortened Markov chain whose
  cumulative products ``alphas_cumprod`` equal those of the kept timesteps.
* ``coeff_dtype`` chooses the precision of those tables: ``"float64"`` (guided-diffusion /
  glide-text2im, the default) or the Taichu-GLIDE release's tables (``PMeanVariance`` in
  ``model/glide_text2im/model/gaussian_diffusion.py``): every table derived in numpy float32
  from the float32 betas and handed to MindSpore in the compute dtype (``"float32"``, or
  ``"float16"`` under its fp16 policy), ``log(beta)`` taken at run time by MindSpore's ``Log``
  in that dtype. The tables always hold float64 arrays; only their values are rounded.
"""
from __future__ import annotations

import math
import numbers
from typing import Iterable, List, Optional, Sequence, Union

import numpy as np

__all__ = [
    "BETA_SCHEDULES",
    "make_betas",
    "space_timesteps",
    "DiffusionSchedule",
    "RespacingSpec",
    "COEFF_DTYPES",
    "interp_linear",
    "schedule_from_config",
]

#: Precisions of the coefficient tables (see :class:`DiffusionSchedule`).
COEFF_DTYPES = ("float64", "float32", "float16")

#: Accepted ``kind`` names for :func:`make_betas` (``"cosine"`` is an alias).
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "cosine")

#: A respacing specification: a step count, a spec string or an explicit list of timesteps.
RespacingSpec = Union[int, str, Sequence[int], np.ndarray]

# GLIDE's hand-tuned 27-step preset: sections "10,10,3,2,2", then t=T-1 replaced by T-3.
_FAST_PRESETS = {"fast27": "10,10,3,2,2"}


def check_count(value, what: str, at_most: Optional[int] = None,
                of: str = "num_timesteps") -> int:
    """``value`` as an int in ``[1, at_most]`` (no upper bound when ``at_most`` is None); else a
    ValueError naming ``what`` (and ``of``, the bound's name)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{what} must be a positive integer, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{what} must be >= 1, got {value}")
    if at_most is not None and value > at_most:
        raise ValueError(f"{what} ({value}) cannot exceed {of} ({at_most})")
    return int(value)


def _cosine_alpha_bar(t: float, s: float = 0.008) -> float:
    """Nichol & Dhariwal's continuous ``alpha_bar(t)`` for ``t`` in [0, 1]."""
    return math.cos((t + s) / (1.0 + s) * math.pi / 2.0) ** 2


def make_betas(
    kind: str = "linear",
    num_timesteps: int = 1000,
    beta_start: Optional[float] = None,
    beta_end: Optional[float] = None,
) -> np.ndarray:
    """Return the float64 array of ``num_timesteps`` betas of a named schedule.

    Args:
        kind: ``"linear"`` (Ho et al.; defaults scale with ``1000 / num_timesteps`` like
            guided-diffusion: ``beta_start = 1e-4 * 1000 / T``, ``beta_end = 0.02 * 1000 / T``),
            ``"scaled_linear"`` (Stable Diffusion / LDM "linear": betas linear in sqrt-space,
            defaults ``0.00085`` and ``0.012``) or ``"squaredcos_cap_v2"`` (alias ``"cosine"``,
            Nichol & Dhariwal, betas capped at 0.999; takes no ``beta_start``/``beta_end``).
        num_timesteps: number of diffusion steps ``T``.
        beta_start, beta_end: first and last beta for the linear kinds.

    Raises:
        ValueError: unknown ``kind``, non-positive ``num_timesteps``, betas outside (0, 1), or
            ``beta_start``/``beta_end`` given for the cosine schedule.
    """
    T = check_count(num_timesteps, "num_timesteps")
    if not isinstance(kind, str):
        raise ValueError(f"schedule kind must be a string, one of {BETA_SCHEDULES}; got {kind!r}")
    name = kind.strip().lower()
    if name == "linear":
        scale = 1000.0 / T
        start = 1e-4 * scale if beta_start is None else float(beta_start)
        end = 0.02 * scale if beta_end is None else float(beta_end)
        _check_beta_range(name, start, end)
        return np.linspace(start, end, T, dtype=np.float64)
    if name == "scaled_linear":
        start = 0.00085 if beta_start is None else float(beta_start)
        end = 0.012 if beta_end is None else float(beta_end)
        _check_beta_range(name, start, end)
        return np.linspace(start ** 0.5, end ** 0.5, T, dtype=np.float64) ** 2
    if name in ("squaredcos_cap_v2", "cosine"):
        if beta_start is not None or beta_end is not None:
            raise ValueError(
                "beta_start/beta_end do not apply to the cosine (squaredcos_cap_v2) schedule; "
                "leave them as None"
            )
        betas = [
            min(1.0 - _cosine_alpha_bar((i + 1) / T) / _cosine_alpha_bar(i / T), 0.999)
            for i in range(T)
        ]
        return np.asarray(betas, dtype=np.float64)
    raise ValueError(f"unknown beta schedule {kind!r}; expected one of {BETA_SCHEDULES}")


def scale_snr(betas, snr_scale: float, max_beta: float = 0.999) -> np.ndarray:
    """The betas of the chain whose signal-to-noise ratio at every step is ``snr_scale`` times that
    of ``betas``' chain: ``SNR_t = abar_t / (1 - abar_t)`` becomes ``snr_scale * SNR_t``, so
    ``abar'_t = s * abar_t / (1 - abar_t + s * abar_t)``, and ``beta'_t = 1 - abar'_t / abar'_{t-1}``
    (``abar'_{-1} = 1``), capped at ``max_beta`` as the cosine schedule's betas are.

    ``snr_scale < 1`` is the "shifted" schedule of Hoogeboom et al. (simple diffusion, 2023) for images
    whose objects span many pixels: at the cosine schedule's noise levels a 64 px image still shows
    where its objects are until very late in the chain, so a model can read the layout from ``x_t``
    and never learns it from the text. ``1`` returns ``betas`` unchanged."""
    s = float(snr_scale)
    if not (math.isfinite(s) and s > 0.0):
        raise ValueError(f"snr_scale must be a finite number > 0, got {snr_scale!r}")
    betas = np.asarray(betas, dtype=np.float64)
    if s == 1.0:
        return betas.copy()
    abar = np.cumprod(1.0 - betas)
    shifted = s * abar / (1.0 - abar + s * abar)
    prev = np.concatenate([[1.0], shifted[:-1]])
    return np.minimum(1.0 - shifted / prev, max_beta)


def _check_beta_range(kind: str, start: float, end: float) -> None:
    for label, value in (("beta_start", start), ("beta_end", end)):
        if not (0.0 < value < 1.0):
            raise ValueError(
                f"{label} for the {kind!r} schedule must lie in (0, 1), got {value} "
                "(with the default values this happens when num_timesteps is very small)"
            )


def _parse_positive_int(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"bad respacing spec: {what} {text!r} is not an integer") from None
    return value


def _section_steps(num_timesteps: int, section_counts: List[int]) -> List[int]:
    """guided-diffusion's section rule: split ``T`` into near-equal sections and space
    ``count`` steps evenly inside each, both section ends included."""
    if not section_counts:
        raise ValueError("bad respacing spec: no section counts given")
    for count in section_counts:
        if count < 0:
            raise ValueError(f"bad respacing spec: section counts must be >= 0, got {count}")
    if sum(section_counts) == 0:
        raise ValueError("bad respacing spec: the section counts add up to zero steps")
    n_sections = len(section_counts)
    if n_sections > num_timesteps:
        raise ValueError(
            f"bad respacing spec: {n_sections} sections cannot split {num_timesteps} timesteps"
        )
    size_per = num_timesteps // n_sections
    extra = num_timesteps % n_sections
    start_idx = 0
    steps: List[int] = []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if count > size:
            raise ValueError(
                f"cannot take {count} steps from section {i} of size {size} "
                f"(num_timesteps={num_timesteps}, {n_sections} sections); use fewer steps"
            )
        frac_stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        # Accumulate the fractional index exactly as guided-diffusion does (float sum, then
        # Python's round-half-to-even) so respaced timesteps match it bit for bit.
        cur_idx = 0.0
        for _ in range(count):
            steps.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        start_idx += size
    return steps


def space_timesteps(num_timesteps: int, spec: RespacingSpec) -> List[int]:
    """Return the sorted list of original timesteps kept when respacing a schedule.

    Args:
        num_timesteps: length ``T`` of the original schedule.
        spec: one of

            * an ``int`` ``N`` or a string ``"N"``: ``N`` steps evenly spaced over ``[0, T-1]``
              (both ends included);
            * a comma list ``"10,10,5"``: ``T`` is split into as many near-equal sections (the
              first ``T % n`` sections get one extra step) and each section gets its count of
              evenly spaced steps (section ends included, Python rounding, as guided-diffusion);
            * ``"ddimN"``: the uniform stride ``s`` (smallest in ``1..T-1``) for which
              ``range(0, T, s)`` has exactly ``N`` elements;
            * ``"fast27"``: GLIDE's preset (sections ``"10,10,3,2,2"`` with ``T-1`` replaced by
              ``T-3``);
            * an explicit list/tuple/array of unique integer timesteps in ``[0, T)``.

    Raises:
        ValueError: with a description of what is wrong in ``spec``.
    """
    T = check_count(num_timesteps, "num_timesteps")
    if isinstance(spec, bool):
        raise ValueError(f"bad respacing spec {spec!r}: expected an int, a str or a list of ints")
    if isinstance(spec, numbers.Integral):
        n = check_count(spec, "number of sampling steps", T)
        return sorted(set(_section_steps(T, [n])))
    if isinstance(spec, str):
        text = spec.strip().lower()
        if not text:
            raise ValueError("bad respacing spec: empty string")
        if text.startswith("ddim"):
            n = _parse_positive_int(text[4:], "'ddimN' count N")
            if n < 1:
                raise ValueError(f"bad respacing spec {spec!r}: N must be >= 1")
            for stride in range(1, T):
                if len(range(0, T, stride)) == n:
                    return list(range(0, T, stride))
            raise ValueError(
                f"cannot create exactly {n} steps with an integer stride over {T} timesteps "
                f"(spec {spec!r}); use a plain step count such as '{n}' instead"
            )
        if text.startswith("fast"):
            if text not in _FAST_PRESETS:
                raise ValueError(
                    f"unknown preset {spec!r}; the only 'fastN' preset is {list(_FAST_PRESETS)}"
                )
            steps = set(space_timesteps(T, _FAST_PRESETS[text]))
            steps.discard(T - 1)
            if T >= 3:
                steps.add(T - 3)
            return sorted(steps)
        counts = [_parse_positive_int(part.strip(), "section count") for part in text.split(",")]
        return sorted(set(_section_steps(T, counts)))
    if isinstance(spec, (list, tuple, np.ndarray)):
        arr = np.asarray(spec)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError("an explicit list of timesteps must be a non-empty 1-D sequence")
        if not np.issubdtype(arr.dtype, np.integer):
            if not np.all(np.equal(np.mod(arr, 1), 0)):
                raise ValueError(f"explicit timesteps must be integers, got {list(spec)!r}")
            arr = arr.astype(np.int64)
        values = [int(v) for v in arr]
        if len(set(values)) != len(values):
            raise ValueError(f"explicit timesteps must be unique, got duplicates in {values!r}")
        bad = [v for v in values if not 0 <= v < T]
        if bad:
            raise ValueError(f"explicit timesteps must lie in [0, {T}); got out-of-range {bad!r}")
        return sorted(values)
    raise ValueError(
        f"bad respacing spec {spec!r} ({type(spec).__name__}); expected an int, a str such as "
        "'50', '10,10,5', 'ddim50' or 'fast27', or a list of ints"
    )


def _frozen(values: Iterable[float], dtype=np.float64) -> np.ndarray:
    arr = np.array(values, dtype=dtype)
    arr.setflags(write=False)
    return arr


class DiffusionSchedule:
    """All per-timestep coefficients of a discrete Gaussian diffusion, in float64.

    Attributes (each a read-only ``(num_timesteps,)`` array): ``betas``, ``alphas``,
    ``alphas_cumprod``, ``alphas_cumprod_prev`` (1 prepended), ``alphas_cumprod_next``
    (0 appended), ``sqrt_alphas_cumprod``, ``sqrt_one_minus_alphas_cumprod``,
    ``log_one_minus_alphas_cumprod``, ``sqrt_recip_alphas_cumprod``,
    ``sqrt_recipm1_alphas_cumprod``, ``posterior_variance``,
    ``posterior_log_variance_clipped`` (log of ``[pv[1], pv[1:]]`` so that t=0 is finite;
    for a one-step schedule, ``log(betas)``), ``posterior_mean_coef1``,
    ``posterior_mean_coef2``; plus ``timestep_map`` (int64: index ``k`` of this schedule to
    the timestep of the original schedule; identity when not respaced), ``num_timesteps`` and
    ``base`` (the unrespaced schedule, ``self`` when not respaced); ``log_betas``; and
    ``coeff_dtype``, the precision the tables were rounded to (see the module docstring), which
    :meth:`respace` carries over.

    Build one with ``DiffusionSchedule(betas)`` or ``DiffusionSchedule.create(kind, T)``, and
    derive a shorter chain with :meth:`respace`.
    """

    def __init__(self, betas, *, timestep_map=None, base: "DiffusionSchedule" = None,
                 kind: Optional[str] = None, beta_start=None, beta_end=None,
                 coeff_dtype: str = "float64"):
        if coeff_dtype not in COEFF_DTYPES:
            raise ValueError(f"coeff_dtype must be one of {COEFF_DTYPES}, got {coeff_dtype!r}")
        self.coeff_dtype = coeff_dtype
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size == 0:
            raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
        if not np.all(np.isfinite(betas)) or np.any(betas <= 0.0) or np.any(betas > 1.0):
            raise ValueError("every beta must lie in (0, 1]; got values outside that range")
        T = betas.shape[0]
        self.num_timesteps = int(T)
        self.kind = kind
        self._beta_start = beta_start
        self._beta_end = beta_end
        if timestep_map is None:
            timestep_map = np.arange(T, dtype=np.int64)
        timestep_map = np.asarray(timestep_map, dtype=np.int64)
        if timestep_map.shape != (T,):
            raise ValueError(f"timestep_map must have shape ({T},), got {timestep_map.shape}")
        self.timestep_map = _frozen(timestep_map, np.int64)
        self.base = self if base is None else base

        alphas = 1.0 - betas
        abar = np.cumprod(alphas)
        abar_prev = np.append(1.0, abar[:-1])
        abar_next = np.append(abar[1:], 0.0)
        with np.errstate(divide="ignore"):
            post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
            log_one_minus = np.log(1.0 - abar)
            if T > 1:
                post_log_var = np.log(np.append(post_var[1], post_var[1:]))
            else:
                post_log_var = np.log(betas)
        self.betas = _frozen(betas)
        self.alphas = _frozen(alphas)
        self.alphas_cumprod = _frozen(abar)
        self.alphas_cumprod_prev = _frozen(abar_prev)
        self.alphas_cumprod_next = _frozen(abar_next)
        self.sqrt_alphas_cumprod = _frozen(np.sqrt(abar))
        self.sqrt_one_minus_alphas_cumprod = _frozen(np.sqrt(1.0 - abar))
        self.log_one_minus_alphas_cumprod = _frozen(log_one_minus)
        with np.errstate(divide="ignore"):
            self.sqrt_recip_alphas_cumprod = _frozen(np.sqrt(1.0 / abar))
            self.sqrt_recipm1_alphas_cumprod = _frozen(np.sqrt(1.0 / abar - 1.0))
        self.posterior_variance = _frozen(post_var)
        self.posterior_log_variance_clipped = _frozen(post_log_var)
        self.posterior_mean_coef1 = _frozen(betas * np.sqrt(abar_prev) / (1.0 - abar))
        self.posterior_mean_coef2 = _frozen((1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar))
        self.log_betas = _frozen(np.log(betas))
        self._abar64 = self.alphas_cumprod  # respacing always starts from the float64 products
        if coeff_dtype != "float64":
            for name, values in _original_tables(betas, coeff_dtype).items():
                setattr(self, name, _frozen(values))
        self._log_alpha_base = None

    # ------------------------------------------------------------------ constructors
    @classmethod
    def create(cls, kind: str = "linear", num_timesteps: int = 1000,
               beta_start: Optional[float] = None, beta_end: Optional[float] = None,
               coeff_dtype: str = "float64", snr_scale: float = 1.0) -> "DiffusionSchedule":
        """Build an unrespaced schedule from a named beta schedule (see :func:`make_betas`), its
        signal-to-noise ratios scaled by ``snr_scale`` (:func:`scale_snr`; 1: the named schedule)."""
        betas = scale_snr(make_betas(kind, num_timesteps, beta_start, beta_end), snr_scale)
        canonical = kind.strip().lower()
        if canonical == "cosine":
            canonical = "squaredcos_cap_v2"
        return cls(betas, kind=canonical, beta_start=beta_start, beta_end=beta_end,
                   coeff_dtype=coeff_dtype)

    @property
    def is_respaced(self) -> bool:
        """True when this schedule is a respaced (shortened) version of ``base``."""
        return self.base is not self

    def respace(self, spec: RespacingSpec) -> "DiffusionSchedule":
        """Return the shortened chain keeping the timesteps selected by ``spec``.

        ``spec`` is interpreted against this schedule's ``num_timesteps`` (see
        :func:`space_timesteps`). For kept indices ``i`` in ascending order the new betas are
        ``1 - abar[i] / abar[previous kept]`` (starting from ``abar = 1``), so the respaced
        ``alphas_cumprod`` equal the original ones at the kept timesteps. Respacing a respaced
        schedule composes the timestep maps.
        """
        kept = space_timesteps(self.num_timesteps, spec)
        abar = self._abar64
        new_betas = []
        last = 1.0
        for i in kept:
            new_betas.append(1.0 - abar[i] / last)
            last = abar[i]
        return DiffusionSchedule(
            np.asarray(new_betas), timestep_map=self.timestep_map[np.asarray(kept)],
            base=self.base, kind=self.kind,
            beta_start=self._beta_start, beta_end=self._beta_end, coeff_dtype=self.coeff_dtype,
        )

    # ------------------------------------------------------------------ helpers
    def alpha_bar_at(self, t) -> np.ndarray:
        """``alpha_bar`` of the *base* schedule at (possibly fractional) original timesteps.

        ``log(sqrt(alpha_bar))`` is interpolated piecewise-linearly between integer timesteps
        (linear extrapolation outside ``[0, T-1]``), which is exactly the discrete-time
        ``NoiseScheduleVP`` of DPM-Solver expressed in the original timestep scale. Integer
        ``t`` returns ``base.alphas_cumprod[t]``.
        """
        base = self.base
        if base._log_alpha_base is None:
            base._log_alpha_base = 0.5 * np.log(base.alphas_cumprod)
        log_alpha = interp_linear(np.asarray(t, dtype=np.float64),
                                  np.arange(base.num_timesteps, dtype=np.float64),
                                  base._log_alpha_base)
        return np.exp(2.0 * log_alpha)

    def to_dict(self) -> dict:
        """JSON-serialisable description; :meth:`from_dict` rebuilds the same schedule."""
        return {
            "kind": self.kind,
            "beta_start": self._beta_start,
            "beta_end": self._beta_end,
            "num_timesteps": self.num_timesteps,
            "base_num_timesteps": self.base.num_timesteps,
            "timestep_map": [int(v) for v in self.timestep_map],
            "base_betas": None if self.kind is not None else [float(b) for b in self.base.betas],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "DiffusionSchedule":
        """Inverse of :meth:`to_dict`."""
        if data.get("kind") is not None:
            base = cls.create(data["kind"], data["base_num_timesteps"],
                              data.get("beta_start"), data.get("beta_end"))
        else:
            base = cls(np.asarray(data["base_betas"], dtype=np.float64))
        tmap = list(data.get("timestep_map", range(base.num_timesteps)))
        if tmap == list(range(base.num_timesteps)):
            return base
        return base.respace(tmap)

    def __len__(self) -> int:
        return self.num_timesteps

    def __repr__(self) -> str:
        kind = self.kind if self.kind is not None else "custom"
        if self.is_respaced:
            return (f"DiffusionSchedule(kind={kind!r}, num_timesteps={self.num_timesteps}, "
                    f"respaced_from={self.base.num_timesteps})")
        return f"DiffusionSchedule(kind={kind!r}, num_timesteps={self.num_timesteps})"


def _original_tables(betas64: np.ndarray, coeff_dtype: str) -> dict:
    """The Taichu-GLIDE release's coefficient tables: numpy float32 from the float32 betas, then
    cast to the compute dtype; ``log(beta)`` by MindSpore's ``Log`` on the betas in that dtype
    (its float32 ``log`` is not numpy's to the last bit)."""
    f = np.float32
    betas = betas64.astype(f)
    alphas = f(1) - betas
    abar = np.cumprod(alphas, dtype=f)
    abar_prev = np.append(f(1), abar[:-1]).astype(f)
    abar_next = np.append(abar[1:], f(0)).astype(f)
    with np.errstate(divide="ignore"):
        post_var = (betas * (f(1) - abar_prev) / (f(1) - abar)).astype(f)
        post_log = (np.log(np.append(post_var[1], post_var[1:]).astype(f)) if betas.shape[0] > 1
                    else np.log(betas))
        tables = {
            "alphas": alphas, "alphas_cumprod": abar, "alphas_cumprod_prev": abar_prev,
            "alphas_cumprod_next": abar_next, "sqrt_alphas_cumprod": np.sqrt(abar),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(f(1) - abar),
            "log_one_minus_alphas_cumprod": np.log(f(1) - abar),
            "sqrt_recip_alphas_cumprod": np.sqrt(f(1) / abar),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(f(1) / abar - f(1)),
            "posterior_variance": post_var, "posterior_log_variance_clipped": post_log,
            "posterior_mean_coef1": betas * np.sqrt(abar_prev) / (f(1) - abar),
            "posterior_mean_coef2": (f(1) - abar_prev) * np.sqrt(alphas) / (f(1) - abar),
        }
    out = {k: np.asarray(v, f).astype(coeff_dtype).astype(np.float64) for k, v in tables.items()}
    out["log_betas"] = _mindspore_log(betas, coeff_dtype)
    return out


def _mindspore_log(values32: np.ndarray, dtype: str) -> np.ndarray:
    """``ops.log`` of a float32 array cast to ``dtype`` (``"float32"`` or ``"float16"``), in
    that dtype, as float64 values."""
    import mindspore as ms  # the one MindSpore call of this module: the original's Log kernel
    from mindspore import ops

    ms_dtype = ms.float16 if dtype == "float16" else ms.float32
    out = ops.log(ms.Tensor(values32.astype(np.float32), ms_dtype)).asnumpy()
    return out.astype(np.float64)


def interp_linear(x: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Piecewise-linear interpolation of ``fp(xp)`` at ``x`` with linear *extrapolation*
    beyond both ends (``np.interp`` clamps instead). ``xp`` must be strictly monotonic."""
    x = np.asarray(x, dtype=np.float64)
    xp = np.asarray(xp, dtype=np.float64)
    fp = np.asarray(fp, dtype=np.float64)
    if xp[0] > xp[-1]:
        xp, fp = xp[::-1], fp[::-1]
    if xp.size == 1:
        return np.full_like(x, fp[0])
    idx = np.clip(np.searchsorted(xp, x, side="right") - 1, 0, xp.size - 2)
    x0, x1 = xp[idx], xp[idx + 1]
    y0, y1 = fp[idx], fp[idx + 1]
    return y0 + (x - x0) * (y1 - y0) / (x1 - x0)


def schedule_from_config(section) -> "DiffusionSchedule":
    """The unrespaced schedule a config section describes (a dict or DictConfig): its
    ``num_timesteps``, ``beta_start`` and ``beta_end`` (None: the schedule's own defaults), and
    the beta schedule's name as ``kind`` (LDM's ``model.schedule``) or ``schedule`` (DDPM's
    ``diffusion`` section), and the tables' precision ``coeff_dtype`` (default "float64"; e.g.
    "float32" for an original that keeps its schedule in fp32 tensors)."""
    kind = section.get("kind", section.get("schedule"))
    if kind is None:
        raise ValueError("the schedule config needs 'kind' (or DDPM's 'schedule'), e.g. 'linear'")
    beta_start, beta_end = section.get("beta_start"), section.get("beta_end")
    return DiffusionSchedule.create(str(kind), int(section["num_timesteps"]),
                                    None if beta_start is None else float(beta_start),
                                    None if beta_end is None else float(beta_end),
                                    coeff_dtype=str(section.get("coeff_dtype") or "float64"))
