"""Fréchet distance: closed forms, invariances, the eigvals cross-check, errors, stats files."""
import numpy as np
import pytest

from mind_diffusion.metrics.frechet import (FIDStatsError, fid_from_features, frechet_distance,
                                            frechet_distance_eigvals, frechet_distance_lowrank, load_stats,
                                            save_stats, statistics)


def _random_spd(rng, d, cond=10.0):
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    eig = np.geomspace(1.0, cond, d) * rng.uniform(0.5, 2.0)
    return (q * eig) @ q.T


def _features(rng, n, d, shift=0.0):
    a = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ a + shift


def test_identical_sets_give_zero():
    rng = np.random.default_rng(0)
    x = _features(rng, 200, 16)
    mu, s = statistics(x)
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-9
    assert abs(fid_from_features(x, x.copy())) < 1e-9


def test_one_dimensional_closed_form():
    for m1, s1, m2, s2 in [(0.0, 1.0, 1.0, 1.0), (0.3, 2.0, -1.2, 0.5), (5.0, 0.1, 5.0, 3.0)]:
        want = (m1 - m2) ** 2 + (s1 - s2) ** 2
        got = frechet_distance(np.array([m1]), np.array([[s1 ** 2]]), np.array([m2]), np.array([[s2 ** 2]]))
        assert got == pytest.approx(want, rel=1e-10, abs=1e-12)
        got2 = frechet_distance(m1, s1 ** 2, m2, s2 ** 2)  # scalars are promoted
        assert got2 == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_diagonal_covariances():
    rng = np.random.default_rng(1)
    d = 12
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a, b = rng.uniform(0.1, 4.0, d), rng.uniform(0.1, 4.0, d)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, rel=1e-10)


def test_equal_covariances_leave_mean_term():
    rng = np.random.default_rng(2)
    d = 20
    s = _random_spd(rng, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    want = float(np.sum((mu1 - mu2) ** 2))
    assert frechet_distance(mu1, s, mu2, s) == pytest.approx(want, rel=1e-8, abs=1e-8)


def test_symmetry_and_eigvals_agree():
    rng = np.random.default_rng(3)
    d = 32
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d, cond=100.0)
    f12 = frechet_distance(mu1, s1, mu2, s2)
    f21 = frechet_distance(mu2, s2, mu1, s1)
    e12 = frechet_distance_eigvals(mu1, s1, mu2, s2)
    assert f12 > 0
    assert f12 == pytest.approx(f21, rel=1e-10)
    assert abs(f12 - e12) <= 1e-8 * abs(f12)


def test_invariant_to_shared_orthogonal_map_and_translation():
    rng = np.random.default_rng(4)
    d = 10
    x, y = _features(rng, 300, d), _features(rng, 250, d, shift=0.7)
    base = fid_from_features(x, y)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    perm = np.eye(d)[rng.permutation(d)]
    t = rng.normal(size=d) * 5
    assert fid_from_features(x @ q, y @ q) == pytest.approx(base, rel=1e-8)
    assert fid_from_features(x @ perm, y @ perm) == pytest.approx(base, rel=1e-10)
    assert fid_from_features(x + t, y + t) == pytest.approx(base, rel=1e-8)


def test_statistics_match_numpy_and_are_float64():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(50, 6)).astype(np.float32)
    mu, s = statistics(x)
    assert mu.dtype == np.float64 and s.dtype == np.float64 and s.shape == (6, 6)
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(s, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-12)


def test_rank_deficient_covariances(monkeypatch):
    # N < D: rank-deficient covariances, as with few images and 2048-d features
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(8, 40)), rng.normal(size=(8, 40)) + 0.5
    mu1, s1 = statistics(x)
    mu2, s2 = statistics(y)
    f = frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(f) and f > 0
    assert f == pytest.approx(frechet_distance_eigvals(mu1, s1, mu2, s2), rel=1e-6)


def test_lowrank_nuclear_norm_form():
    rng = np.random.default_rng(9)
    # N > D: all three routes agree tightly
    x, y = _features(rng, 120, 10), _features(rng, 90, 10, shift=0.3)
    ref = fid_from_features(x, y)
    assert frechet_distance_lowrank(x, y) == pytest.approx(ref, rel=1e-9)
    # N < D: sqrtm needs no eps here but is less accurate; still close
    x, y = _features(rng, 12, 60), _features(rng, 15, 60, shift=0.2)
    mu1, s1 = statistics(x)
    mu2, s2 = statistics(y)
    low = frechet_distance_lowrank(x, y)
    assert low == pytest.approx(frechet_distance_eigvals(mu1, s1, mu2, s2), rel=1e-6)
    assert low == pytest.approx(frechet_distance(mu1, s1, mu2, s2), rel=1e-5)
    assert abs(frechet_distance_lowrank(x, x)) < 1e-9
    with pytest.raises(ValueError, match="need at least 2 images"):
        frechet_distance_lowrank(x[:1], y)
    with pytest.raises(ValueError, match="different dimensions"):
        frechet_distance_lowrank(x, y[:, :5])


def test_non_finite_sqrtm_retries_with_eps(monkeypatch):
    from mind_diffusion.metrics import frechet as fr

    calls = []
    real = fr._sqrtm

    def fake(mat):
        calls.append(mat.copy())
        if len(calls) == 1:
            return np.full_like(mat, np.inf)
        return real(mat)

    monkeypatch.setattr(fr, "_sqrtm", fake)
    s1, s2 = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
    with pytest.warns(RuntimeWarning, match="singular"):
        f = fr.frechet_distance(np.zeros(2), s1, np.zeros(2), s2, eps=1e-6)
    assert len(calls) == 2
    np.testing.assert_allclose(calls[1], (s1 + 1e-6 * np.eye(2)) @ (s2 + 1e-6 * np.eye(2)))
    assert f == pytest.approx((1 - 3) ** 2 + (2 - 1) ** 2, rel=1e-5)
    # a nilpotent product has no square root at all: sqrtm gives inf -> eps retry
    monkeypatch.setattr(fr, "_sqrtm", real)
    assert not np.isfinite(real(np.array([[0.0, 1.0], [0.0, 0.0]]))).all()


def test_errors_are_clear():
    rng = np.random.default_rng(7)
    with pytest.raises(FIDStatsError, match="need at least 2 images"):
        statistics(rng.normal(size=(1, 8)))
    with pytest.raises(ValueError, match="need at least 2 images"):
        statistics(np.zeros((0, 8)))
    with pytest.raises(ValueError, match="2-D"):
        statistics(np.zeros(8))
    bad = rng.normal(size=(5, 3))
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        statistics(bad)
    mu, s = statistics(rng.normal(size=(10, 4)))
    mu3, s3 = statistics(rng.normal(size=(10, 3)))
    with pytest.raises(ValueError, match="different dimensions"):
        frechet_distance(mu, s, mu3, s3)
    with pytest.raises(ValueError, match="expected"):
        frechet_distance(mu, s3, mu, s)
    s_inf = s.copy()
    s_inf[0, 0] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        frechet_distance(mu, s_inf, mu, s)


def test_large_imaginary_component_raises():
    # a non-PSD "covariance" makes (S1 S2)^(1/2) genuinely complex
    mu = np.zeros(2)
    s1 = np.diag([1.0, 1.0])
    s2 = np.diag([-4.0, 1.0])
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(mu, s1, mu, s2)


def test_stats_file_round_trip(tmp_path):
    rng = np.random.default_rng(8)
    mu, s = statistics(rng.normal(size=(30, 5)))
    p = save_stats(tmp_path / "ref.npz", mu, s, n=30, mode="pt", extractor="X sha256 0123")
    mu2, s2 = load_stats(p)
    np.testing.assert_array_equal(mu, mu2)
    np.testing.assert_array_equal(s, s2)
    _, _, meta = load_stats(p, with_meta=True)
    assert meta == {"n": 30, "mode": "pt", "extractor": "X sha256 0123"}
    # pytorch-fid's own layout (np.savez(mu=..., sigma=...)) reads back the same
    np.savez(tmp_path / "ptfid.npz", mu=mu, sigma=s)
    mu3, s3 = load_stats(tmp_path / "ptfid.npz")
    np.testing.assert_array_equal(s, s3)
    with np.load(p) as f:  # what pytorch-fid reads
        np.testing.assert_array_equal(f["mu"], mu)
        np.testing.assert_array_equal(f["sigma"], s)
    # suffix added like np.savez does
    assert save_stats(tmp_path / "noext", mu, s).name == "noext.npz"


def test_stats_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_stats(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="'mu' and 'sigma'"):
        load_stats(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read"):
        load_stats(tmp_path / "junk.npz")
    np.savez(tmp_path / "shape.npz", mu=np.zeros(3), sigma=np.eye(4))
    with pytest.raises(ValueError, match="expected"):
        load_stats(tmp_path / "shape.npz")


def test_eigh_route_agrees_with_sqrtm_and_lowrank():
    from mind_diffusion.metrics.frechet import fid_function, frechet_distance_eigh

    rng = np.random.default_rng(10)
    d = 48
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d, cond=1e3)
    ref = frechet_distance(mu1, s1, mu2, s2)
    assert frechet_distance_eigh(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-9)
    assert frechet_distance_eigh(mu2, s2, mu1, s1) == pytest.approx(ref, rel=1e-9)  # symmetric
    # one-dimensional closed form and diagonal covariances
    assert frechet_distance_eigh(np.array([0.3]), np.array([[4.0]]), np.array([-1.2]), np.array([[0.25]])) \
        == pytest.approx((0.3 + 1.2) ** 2 + (2.0 - 0.5) ** 2, rel=1e-12)
    # N < D (singular covariances, as with few images): equals the exact nuclear-norm form up to
    # the square roots of round-off eigenvalues in the null space (~1e-8 each; sqrtm has the same)
    x, y = _features(rng, 12, 80), _features(rng, 15, 80, shift=0.2)
    mu_x, s_x = statistics(x)
    mu_y, s_y = statistics(y)
    assert frechet_distance_eigh(mu_x, s_x, mu_y, s_y) == pytest.approx(frechet_distance_lowrank(x, y), rel=1e-7)
    assert abs(frechet_distance_eigh(mu_x, s_x, mu_x, s_x)) < 1e-9
    assert fid_function("eigh") is frechet_distance_eigh and fid_function("sqrtm") is frechet_distance
    with pytest.raises(ValueError, match="unknown Fréchet distance method 'svd'"):
        fid_function("svd")
    with pytest.raises(ValueError, match="different dimensions"):
        frechet_distance_eigh(mu_x, s_x, mu1, s1)
