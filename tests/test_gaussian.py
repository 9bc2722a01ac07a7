"""Gaussian diffusion math: forward process, posterior, conversions, losses, MindSpore VLB."""
import numpy as np
import pytest
from scipy.stats import norm

from mind_diffusion.diffusion import gaussian as G
from mind_diffusion.diffusion.schedule import DiffusionSchedule


@pytest.fixture(scope="module")
def sch():
    return DiffusionSchedule.create("linear", 1000)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, (5, 3, 4, 4))
    noise = rng.standard_normal(x0.shape)
    t = np.array([0, 1, 10, 500, 999])
    return x0, noise, t


def test_extract_broadcasts_per_sample():
    arr = np.arange(10.0)
    out = G.extract(arr, np.array([1, 7]), 4)
    assert out.shape == (2, 1, 1, 1) and out.ravel().tolist() == [1.0, 7.0]
    assert G.extract(arr, np.array([3]), 1).shape == (1,)
    with pytest.raises(ValueError, match="1-D"):
        G.extract(arr, np.array([[1]]), 2)


def test_q_sample_closed_form(sch, batch):
    x0, noise, t = batch
    xt = G.q_sample(sch, x0, t, noise)
    ab = sch.alphas_cumprod[t][:, None, None, None]
    np.testing.assert_allclose(xt, np.sqrt(ab) * x0 + np.sqrt(1 - ab) * noise, rtol=1e-12)


def test_posterior_matches_bayes_rule(sch, batch):
    x0, noise, t = batch
    t = np.array([1, 2, 10, 500, 999])
    xt = G.q_sample(sch, x0, t, noise)
    mean, var, log_var = G.q_posterior_mean_variance(sch, x0, xt, t)
    # q(x_{t-1}|x0) = N(sqrt(abar_prev) x0, 1-abar_prev); q(x_t|x_{t-1}) = N(sqrt(a_t) x, b_t).
    ab_prev = sch.alphas_cumprod_prev[t][:, None, None, None]
    a_t = sch.alphas[t][:, None, None, None]
    b_t = sch.betas[t][:, None, None, None]
    precision = 1.0 / (1 - ab_prev) + a_t / b_t
    expected_mean = (np.sqrt(ab_prev) * x0 / (1 - ab_prev) + np.sqrt(a_t) * xt / b_t) / precision
    np.testing.assert_allclose(var, 1.0 / precision, rtol=1e-9)
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(log_var, np.log(var), rtol=1e-12)


def test_conversions_roundtrip(sch, batch):
    x0, eps, t = batch
    xt = G.q_sample(sch, x0, t, eps)
    v = G.x0_eps_to_v(sch, x0, t, eps)
    ab = sch.alphas_cumprod[t]
    np.testing.assert_allclose(v, np.sqrt(ab)[:, None, None, None] * eps
                               - np.sqrt(1 - ab)[:, None, None, None] * x0)
    np.testing.assert_allclose(G.eps_to_x0(sch, xt, t, eps), x0, atol=1e-9)
    np.testing.assert_allclose(G.x0_to_eps(sch, xt, t, x0), eps, atol=1e-9)
    np.testing.assert_allclose(G.v_to_eps(sch, xt, t, v), eps, atol=1e-9)
    np.testing.assert_allclose(G.v_to_x0(sch, xt, t, v), x0, atol=1e-9)
    # Scalar-alpha_bar variants agree with the schedule-indexed ones.
    np.testing.assert_allclose(G.eps_to_x0_ab(ab, xt, eps), G.eps_to_x0(sch, xt, t, eps))
    np.testing.assert_allclose(G.v_to_x0_ab(ab, xt, v), x0, atol=1e-9)
    np.testing.assert_allclose(G.v_to_eps_ab(ab, xt, v), eps, atol=1e-9)
    np.testing.assert_allclose(G.x0_eps_to_v_ab(ab, x0, eps), v)
    np.testing.assert_allclose(G.x0_to_eps_ab(0.5, np.sqrt(0.5) * (x0 + eps), x0), eps)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v", "sample"])
def test_p_mean_variance_prediction_types_agree(sch, batch, prediction_type):
    x0, eps, t = batch
    xt = G.q_sample(sch, x0, t, eps)
    out = {"epsilon": eps, "v": G.x0_eps_to_v(sch, x0, t, eps), "sample": x0}[prediction_type]
    res = G.p_mean_variance(sch, out, xt, t, prediction_type=prediction_type)
    true_mean, true_var, _ = G.q_posterior_mean_variance(sch, x0, xt, t)
    np.testing.assert_allclose(res["pred_x0"], x0, atol=1e-8)
    np.testing.assert_allclose(res["eps"], eps, atol=1e-8)
    np.testing.assert_allclose(res["mean"], true_mean, atol=1e-9)
    np.testing.assert_allclose(res["variance"], true_var)


def test_fixed_large_is_ho_update(sch, batch):
    x0, eps, t = batch
    xt = G.q_sample(sch, x0, t, eps)
    res = G.p_mean_variance(sch, eps, xt, t, variance_type="fixed_large")
    b = sch.betas[t][:, None, None, None]
    ab = sch.alphas_cumprod[t][:, None, None, None]
    ho_mean = (xt - b / np.sqrt(1 - ab) * eps) / np.sqrt(1 - b)
    np.testing.assert_allclose(res["mean"], ho_mean, rtol=1e-9, atol=1e-12)
    expected_var = np.append(sch.posterior_variance[1], sch.betas[1:])[t]
    np.testing.assert_allclose(res["variance"].ravel(), expected_var)
    np.testing.assert_allclose(res["log_variance"].ravel(), np.log(expected_var))


def test_learned_range_interpolates_between_fixed_variances(sch, batch):
    x0, eps, t = batch
    xt = G.q_sample(sch, x0, t, eps)
    for v_value, ref in [(-1.0, sch.posterior_log_variance_clipped), (1.0, np.log(sch.betas))]:
        out = np.concatenate([eps, np.full_like(eps, v_value)], axis=1)
        res = G.p_mean_variance(sch, out, xt, t, variance_type="learned_range")
        np.testing.assert_allclose(res["log_variance"], np.broadcast_to(
            ref[t][:, None, None, None], eps.shape), rtol=1e-12)
    lv = G.learned_range_log_variance(sch, np.zeros((5, 1)), t)
    np.testing.assert_allclose(lv.ravel(), 0.5 * (sch.posterior_log_variance_clipped[t]
                                                  + np.log(sch.betas[t])))


def test_clip_denoised_clips_pred_x0(sch):
    xt = np.full((2, 1, 2, 2), 3.0)
    t = np.array([5, 5])
    res = G.p_mean_variance(sch, np.zeros_like(xt), xt, t, clip_denoised=True)
    np.testing.assert_array_equal(res["pred_x0"], 1.0)
    np.testing.assert_allclose(G.eps_to_x0(sch, xt, t, res["eps"]), 1.0)


def test_p_mean_variance_bad_arguments(sch, batch):
    x0, eps, t = batch
    with pytest.raises(ValueError, match="unknown prediction_type"):
        G.p_mean_variance(sch, eps, x0, t, prediction_type="score")
    with pytest.raises(ValueError, match="unknown variance_type"):
        G.p_mean_variance(sch, eps, x0, t, variance_type="learned")
    with pytest.raises(ValueError, match="2\\*C channels"):
        G.p_mean_variance(sch, eps, x0, t, variance_type="learned_range")
    with pytest.raises(ValueError, match="does not match"):
        G.p_mean_variance(sch, eps[:, :2], x0, t)


def test_normal_kl_closed_form():
    m = np.array([0.3, -1.0])
    lv = np.array([0.2, -3.0])
    np.testing.assert_allclose(G.normal_kl(m, lv, m, lv), 0.0, atol=1e-15)
    # KL(N(0,1) || N(1,4)) = log 2 + (1 + 1) / 8 - 1/2
    assert G.normal_kl(0.0, 0.0, 1.0, np.log(4.0)) == pytest.approx(np.log(2) + 0.25 - 0.5)


def test_approx_cdf_close_to_exact():
    x = np.linspace(-6, 6, 241)
    np.testing.assert_allclose(G.approx_standard_normal_cdf(x), norm.cdf(x), atol=2e-3)


@pytest.mark.parametrize("mean, log_scale", [(0.0, np.log(0.1)), (0.7, np.log(0.01)),
                                             (-0.95, np.log(0.5)), (0.2, np.log(3.0))])
def test_discretized_likelihood_sums_to_one(mean, log_scale):
    bins = -1.0 + 2.0 * np.arange(256) / 255.0
    logp = G.discretized_gaussian_log_likelihood(bins, np.full(256, mean), np.full(256, log_scale))
    assert np.all(logp <= 0)
    assert np.exp(logp).sum() == pytest.approx(1.0, abs=1e-6)


def test_vlb_terms_zero_for_perfect_model_and_nll_at_t0(sch, batch):
    x0, eps, t = batch
    xt = G.q_sample(sch, x0, t, eps)
    perfect = np.concatenate([eps, -np.ones_like(eps)], axis=1)  # true eps, posterior variance
    vlb = G.vlb_terms(sch, x0, xt, t, perfect)
    np.testing.assert_allclose(vlb[1:], 0.0, atol=1e-8)
    res = G.p_mean_variance(sch, perfect, xt, t, variance_type="learned_range")
    nll0 = -G.discretized_gaussian_log_likelihood(
        x0[0], res["mean"][0], 0.5 * res["log_variance"][0]).mean() / np.log(2)
    assert vlb[0] == pytest.approx(nll0) and vlb[0] > 0
    wrong = np.concatenate([eps + 0.1, np.zeros_like(eps)], axis=1)
    assert np.all(G.vlb_terms(sch, x0, xt, t, wrong)[1:] > 1e-6)


def test_simple_mse():
    a = np.zeros((2, 3, 2))
    b = np.ones((2, 3, 2)) * np.array([1.0, 2.0])[:, None, None]
    np.testing.assert_allclose(G.simple_mse(a, b), [1.0, 4.0])


def test_mindspore_vlb_matches_numpy(ms_mode):
    import mindspore as ms

    sch = DiffusionSchedule.create("cosine", 1000)
    rng = np.random.default_rng(1)
    x0 = rng.integers(0, 256, (6, 3, 4, 4)) / 127.5 - 1.0
    t = np.array([0, 1, 5, 100, 500, 999])
    noise = rng.standard_normal(x0.shape)
    xt = G.q_sample(sch, x0, t, noise)
    eps = noise + 0.1 * rng.standard_normal(x0.shape)
    v = np.tanh(rng.standard_normal(x0.shape))
    x0, xt, eps, v = (a.astype(np.float32) for a in (x0, xt, eps, v))
    ref = G.vlb_terms(sch, x0.astype(np.float64), xt.astype(np.float64), t,
                      np.concatenate([eps, v], axis=1).astype(np.float64))
    cell = G.MSLearnedRangeVLB()
    coeffs = G.vlb_coefficients(sch, t)
    assert len(coeffs) == len(G.VLB_COEFF_NAMES) and coeffs[-1].tolist() == [1, 0, 0, 0, 0, 0]
    out = cell(*(ms.Tensor(a) for a in (x0, xt, eps, v)), *(ms.Tensor(c) for c in coeffs))
    assert out.shape == (6,)
    np.testing.assert_allclose(out.asnumpy(), ref, atol=1e-5, rtol=1e-5)
