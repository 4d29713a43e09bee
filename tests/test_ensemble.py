"""Ensemble statistics and posterior sampling."""
import numpy as np
import pytest

from ace_uq_calc.engine.statistics import ensemble_statistics
from ace_uq_calc.fitting.posterior import posterior_samples


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


class _Equations:
    """Normal equations of explicit rows (the attributes posterior_scale_from_validation reads)."""

    def __init__(self, rows, targets):
        self.ata, self.atb, self.btb, self.rows = rows.T @ rows, rows.T @ targets, float(targets @ targets), len(rows)


def test_posterior_scale_equals_the_dense_computation_and_calibrates_the_validation_error():
    """scale^2 = SSE_val / tr(Cov A_val^T A_val), checked against explicit matrices, and the widened
    samples' spread on the validation rows equals their actual error (Monte Carlo)."""
    from ace_uq_calc.fitting.posterior import posterior_scale_from_validation

    rng = np.random.default_rng(3)
    n_col = 6
    a_train = rng.normal(size=(300, n_col)) * np.array([1, 2, 5, 0.5, 3, 1])
    a_val = rng.normal(size=(60, n_col)) * np.array([1, 2, 5, 0.5, 3, 1])
    truth = rng.normal(size=n_col)
    # data with a model error: a term outside the columns, so the posterior alone is too narrow
    hidden = lambda a: 0.3 * np.sin(a[:, 0] * a[:, 1])            # noqa: E731
    b_train = a_train @ truth + hidden(a_train) + 0.05 * rng.normal(size=300)
    b_val = a_val @ truth + hidden(a_val) + 0.05 * rng.normal(size=60)
    lam = 1e-3
    train, val = _Equations(a_train, b_train), _Equations(a_val, b_val)
    scale = posterior_scale_from_validation(train, val, lam, n_col)
    # dense reference
    d = np.sqrt(np.diag(train.ata))
    hessian = train.ata / np.outer(d, d) + lam * np.eye(n_col)
    c_hat = np.linalg.solve(hessian, train.atb / d) / d
    s2 = np.sum((a_train @ c_hat - b_train) ** 2) / (300 - n_col)
    cov = s2 * np.linalg.inv(hessian) / np.outer(d, d)
    sse_val = np.sum((a_val @ c_hat - b_val) ** 2)
    expected = np.sqrt(sse_val / np.trace(cov @ (a_val.T @ a_val)))
    assert scale == pytest.approx(expected, rel=1e-10)
    assert scale > 3                                               # the model error dominates
    # widened samples: their mean squared deviation on the validation rows matches the actual error
    samples = posterior_samples(train.ata, train.atb, train.btb, train.rows, lam, n_col, count=20000, seed=4,
                                scale=scale)
    spread = np.mean(np.sum(((samples - c_hat) @ a_val.T) ** 2, axis=1))
    assert spread == pytest.approx(sse_val, rel=0.05)


@pytest.mark.parametrize("count", [6, 7])
def test_antithetic_posterior_samples_average_to_the_fit(count):
    rng = np.random.default_rng(5)
    a = rng.normal(size=(200, 4))
    b = a @ rng.normal(size=4) + 0.1 * rng.normal(size=200)
    samples = posterior_samples(a.T @ a, a.T @ b, float(b @ b), 200, 0.0, 4, count=count, seed=1, scale=7.0,
                                antithetic=True)
    fit = np.linalg.lstsq(a, b, rcond=None)[0]
    np.testing.assert_allclose(samples.mean(axis=0), fit, rtol=0, atol=1e-12 * np.abs(fit).max())
    assert np.all(samples.std(axis=0) > 0)
    if count % 2:
        assert np.any(np.all(np.abs(samples - fit) < 1e-12, axis=1))     # the fit itself is a member
