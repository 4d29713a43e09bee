"""Ensemble statistics and posterior sampling."""
import numpy as np

from ace_uq_calc.uncertainty.ensemble import ensemble_statistics, posterior_samples


def test_spread_is_zero_when_members_are_equal():
    rng = np.random.default_rng(0)
    e = rng.normal(size=7)
    f = rng.normal(size=(7, 3))
    s = rng.normal(size=6)
    stats = ensemble_statistics([e] * 4, [f] * 4, [s] * 4)
    assert stats["energy_std"] == 0.0
    assert np.all(stats["energies_std"] == 0.0)
    assert np.all(stats["forces_std"] == 0.0)
    assert np.all(stats["forces_dev"] == 0.0)
    assert np.all(stats["stress_std"] == 0.0)
    np.testing.assert_allclose(stats["forces"], f)
    assert stats["energy"] == np.float64(e.sum())


def test_forces_dev_is_largest_member_deviation():
    forces = np.array([[[1.0, 0, 0]], [[-1.0, 0, 0]], [[0.0, 3.0, 0]]])   # K=3, N=1
    stats = ensemble_statistics(np.zeros((3, 1)), forces)
    mean = forces.mean(axis=0)[0]
    expected = max(np.linalg.norm(forces[k, 0] - mean) for k in range(3))
    assert stats["forces_dev"][0] == expected
    np.testing.assert_allclose(stats["forces_std"][0], forces[:, 0].std(axis=0))


def test_posterior_samples_match_least_squares_uncertainty():
    rng = np.random.default_rng(1)
    A = rng.normal(size=(400, 5))
    truth = rng.normal(size=5)
    noise = 0.1
    b = A @ truth + noise * rng.normal(size=400)
    samples = posterior_samples(A.T @ A, A.T @ b, float(b @ b), 400, 0.0, 5, count=4000, seed=2)
    ls = np.linalg.lstsq(A, b, rcond=None)[0]
    cov = noise ** 2 * np.linalg.inv(A.T @ A)
    np.testing.assert_allclose(samples.mean(axis=0), ls, atol=4 * np.sqrt(np.diag(cov)).max())
    np.testing.assert_allclose(np.cov(samples.T), cov, rtol=0.15, atol=0.15 * np.abs(cov).max())
