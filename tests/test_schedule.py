"""Beta schedules, timestep respacing and DiffusionSchedule coefficients."""
import numpy as np
import pytest

from mind_diffusion.diffusion.schedule import (DiffusionSchedule, make_betas,
                                               space_timesteps)

COSINE_60 = [0, 17, 34, 51, 68, 85, 102, 119, 135, 152, 169, 186, 203, 220, 237, 254, 271, 288,
             305, 322, 339, 356, 373, 389, 406, 423, 440, 457, 474, 491, 508, 525, 542, 559, 576,
             593, 610, 626, 643, 660, 677, 694, 711, 728, 745, 762, 779, 796, 813, 830, 847, 864,
             880, 897, 914, 931, 948, 965, 982, 999]
FAST27 = [0, 22, 44, 66, 88, 111, 133, 155, 177, 199, 200, 222, 244, 266, 288, 311, 333, 355, 377,
          399, 400, 500, 599, 600, 799, 800, 997]


# ----------------------------------------------------------------------------- betas
def test_linear_defaults_follow_ho():
    betas = make_betas("linear", 1000)
    assert betas.dtype == np.float64 and betas.shape == (1000,)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    short = make_betas("linear", 250)  # guided-diffusion scales the defaults by 1000/T
    assert short[0] == pytest.approx(4e-4) and short[-1] == pytest.approx(0.08)
    custom = make_betas("linear", 10, beta_start=0.1, beta_end=0.2)
    np.testing.assert_allclose(custom, np.linspace(0.1, 0.2, 10))


def test_scaled_linear_known_alphas_cumprod():
    abar = np.cumprod(1.0 - make_betas("scaled_linear", 1000))
    assert abar[0] == pytest.approx(0.99915, abs=1e-5)
    assert abar[500] == pytest.approx(0.27633, abs=1e-5)
    assert abar[999] == pytest.approx(0.0046601, abs=1e-5)


def test_cosine_schedule_matches_closed_form():
    T = 1000
    betas = make_betas("cosine", T)
    np.testing.assert_array_equal(betas, make_betas("squaredcos_cap_v2", T))
    f = lambda t: np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
    abar = np.cumprod(1.0 - betas)
    # Uncapped region: the cumulative product telescopes to f(t)/f(0).
    np.testing.assert_allclose(abar[:900], f(np.arange(1, 901) / T) / f(0.0), rtol=1e-10)
    assert betas.max() == pytest.approx(0.999) and betas[-1] == pytest.approx(0.999)


@pytest.mark.parametrize("kwargs, match", [
    ({"kind": "quadratic"}, "unknown beta schedule"),
    ({"kind": "linear", "num_timesteps": 0}, "num_timesteps must be >= 1"),
    ({"kind": "linear", "num_timesteps": -5}, "num_timesteps must be >= 1"),
    ({"kind": "linear", "num_timesteps": 2.5}, "positive integer"),
    ({"kind": "cosine", "beta_start": 0.1}, "do not apply"),
    ({"kind": "linear", "beta_start": 0.0}, "beta_start"),
    ({"kind": "scaled_linear", "beta_end": 1.5}, "beta_end"),
])
def test_make_betas_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_betas(**kwargs)


# ----------------------------------------------------------------------------- respacing
def test_space_timesteps_reference_vectors():
    assert space_timesteps(1000, "60") == COSINE_60
    assert space_timesteps(1000, 60) == COSINE_60
    assert space_timesteps(1000, "fast27") == FAST27


def test_space_timesteps_sections_and_ddim():
    # 3 sections of 34/33/33 timesteps (the first T % 3 sections get one extra).
    assert space_timesteps(100, "2,3,1") == [0, 33, 34, 50, 66, 67]
    assert space_timesteps(1000, "1") == [0]
    assert space_timesteps(1000, "1000") == list(range(1000))
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(1000, "ddim15") == list(range(0, 1000, 67))
    assert space_timesteps(1000, [5, 1, 999]) == [1, 5, 999]
    assert space_timesteps(10, np.array([3, 0])) == [0, 3]


@pytest.mark.parametrize("spec, match", [
    (0, "must be >= 1"),
    (-3, "must be >= 1"),
    (1001, "cannot exceed"),
    ("1001", "cannot take 1001 steps"),
    ("600,600", "cannot take 600 steps"),
    ("ddim999", "integer stride"),
    ("ddimx", "not an integer"),
    ("fast30", "only 'fastN' preset"),
    ("10,a", "not an integer"),
    ("", "empty"),
    ("0", "zero steps"),
    ("-5,3", ">= 0"),
    ([1, 1, 2], "unique"),
    ([0, 1000], "out-of-range"),
    ([], "non-empty"),
    (3.5, "bad respacing spec"),
    (True, "bad respacing spec"),
])
def test_space_timesteps_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        space_timesteps(1000, spec)


# ----------------------------------------------------------------------------- schedule
def test_schedule_coefficients_are_consistent():
    sch = DiffusionSchedule.create("linear", 1000)
    b, abar = sch.betas, sch.alphas_cumprod
    np.testing.assert_allclose(abar, np.cumprod(1.0 - b))
    np.testing.assert_allclose(sch.alphas_cumprod_prev[1:], abar[:-1])
    assert sch.alphas_cumprod_prev[0] == 1.0 and sch.alphas_cumprod_next[-1] == 0.0
    np.testing.assert_allclose(sch.sqrt_recip_alphas_cumprod * sch.sqrt_alphas_cumprod, 1.0)
    np.testing.assert_allclose(sch.sqrt_recipm1_alphas_cumprod ** 2, 1.0 / abar - 1.0)
    pv = b * (1 - sch.alphas_cumprod_prev) / (1 - abar)
    np.testing.assert_allclose(sch.posterior_variance, pv)
    assert sch.posterior_variance[0] == 0.0
    np.testing.assert_allclose(sch.posterior_log_variance_clipped,
                               np.log(np.append(pv[1], pv[1:])))
    # Posterior mean of a noise-free x_t = sqrt(abar_t) x0 is sqrt(abar_{t-1}) x0.
    np.testing.assert_allclose(
        sch.posterior_mean_coef1 + sch.posterior_mean_coef2 * np.sqrt(abar),
        np.sqrt(sch.alphas_cumprod_prev), rtol=1e-12)
    np.testing.assert_array_equal(sch.timestep_map, np.arange(1000))
    assert sch.base is sch and not sch.is_respaced and sch.num_timesteps == len(sch) == 1000
    with pytest.raises(ValueError):
        sch.betas[0] = 0.5  # read-only


def test_respace_keeps_alphas_cumprod_and_composes():
    base = DiffusionSchedule.create("cosine", 1000)
    sp = base.respace("60")
    assert sp.num_timesteps == 60 and sp.base is base and sp.is_respaced
    assert sp.timestep_map.dtype == np.int64
    np.testing.assert_array_equal(sp.timestep_map, COSINE_60)
    np.testing.assert_allclose(sp.alphas_cumprod, base.alphas_cumprod[COSINE_60], rtol=1e-10)
    assert sp.betas[-1] == pytest.approx(0.999997, abs=5e-7)
    assert sp.betas[0] == pytest.approx(base.betas[0])
    # Respacing the respaced schedule composes the maps.
    sp2 = sp.respace([0, 10, 59])
    np.testing.assert_array_equal(sp2.timestep_map, [0, COSINE_60[10], 999])
    np.testing.assert_allclose(sp2.alphas_cumprod, base.alphas_cumprod[[0, COSINE_60[10], 999]],
                               rtol=1e-6)  # 1 - beta loses digits when beta ~ 1
    assert sp2.base is base


def test_to_dict_roundtrip_and_repr():
    sp = DiffusionSchedule.create("scaled_linear", 1000).respace("fast27")
    again = DiffusionSchedule.from_dict(sp.to_dict())
    np.testing.assert_array_equal(again.timestep_map, sp.timestep_map)
    np.testing.assert_allclose(again.betas, sp.betas)
    assert "scaled_linear" in repr(sp) and "27" in repr(sp)
    custom = DiffusionSchedule(np.full(10, 0.1))
    assert DiffusionSchedule.from_dict(custom.to_dict()).num_timesteps == 10
    assert "custom" in repr(custom)


def test_alpha_bar_at_interpolates_log_alpha():
    sch = DiffusionSchedule.create("linear", 1000)
    np.testing.assert_allclose(sch.alpha_bar_at(np.array([0.0, 17.0, 999.0])),
                               sch.alphas_cumprod[[0, 17, 999]], rtol=1e-12)
    mid = sch.alpha_bar_at(np.array([10.5]))[0]
    assert mid == pytest.approx(np.sqrt(sch.alphas_cumprod[10] * sch.alphas_cumprod[11]),
                                rel=1e-12)
    assert sch.respace(10).alpha_bar_at(5.0) == pytest.approx(sch.alphas_cumprod[5])


def test_schedule_rejects_bad_betas():
    with pytest.raises(ValueError, match="non-empty 1-D"):
        DiffusionSchedule(np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        DiffusionSchedule(np.array([0.1, -0.1]))
    with pytest.raises(ValueError, match="unknown beta schedule"):
        DiffusionSchedule.create("nope")


# ----------------------------------------------------------------------------- SNR scale
@pytest.mark.parametrize("kind", ["cosine", "linear"])
@pytest.mark.parametrize("scale", [0.0625, 0.25, 4.0])
def test_snr_scale_multiplies_every_steps_snr(kind, scale):
    """``scale_snr``: SNR'_t = s * SNR_t at every step whose beta the 0.999 cap leaves alone (closed
    form: abar' = s abar / (1 - abar + s abar)); s = 1 is the schedule itself; respacing keeps it."""
    from mind_diffusion.diffusion.schedule import scale_snr

    betas = make_betas(kind, 1000)
    np.testing.assert_array_equal(scale_snr(betas, 1.0), betas)
    sched = DiffusionSchedule.create(kind, 1000, snr_scale=scale)
    plain = DiffusionSchedule.create(kind, 1000)
    a, p = np.asarray(sched.alphas_cumprod, np.float64), np.asarray(plain.alphas_cumprod, np.float64)
    uncapped = np.asarray(sched.betas) < 0.999
    assert uncapped[:990].all()
    np.testing.assert_allclose((a / (1 - a))[uncapped], scale * (p / (1 - p))[uncapped], rtol=1e-9)
    assert np.all(np.diff(a) < 0) and 0 < a[-1] < a[0] <= 1
    short, short_plain = sched.respace("60"), plain.respace("60")
    np.testing.assert_array_equal(short.timestep_map, short_plain.timestep_map)
    sa, sp = np.asarray(short.alphas_cumprod, np.float64), np.asarray(short_plain.alphas_cumprod, np.float64)
    np.testing.assert_allclose((sa / (1 - sa))[:-1], scale * (sp / (1 - sp))[:-1], rtol=1e-9)


@pytest.mark.parametrize("bad", [0.0, -0.5, float("inf"), float("nan")])
def test_snr_scale_must_be_positive(bad):
    from mind_diffusion.diffusion.schedule import scale_snr

    with pytest.raises(ValueError, match="snr_scale must be a finite number > 0"):
        scale_snr(make_betas("cosine", 100), bad)
