"""Posterior of a linear ridge fit: coefficient samples for ensembles, and the factor that widens the
posterior spread to match held-out errors.
"""
from __future__ import annotations

import numpy as np


def _scaled_posterior(ata: np.ndarray, atb: np.ndarray, btb: float, rows: int, lam: float, m: int,
                      e0_ridge: float):
    """(d, Hessian, mean in scaled coordinates, noise variance s^2) of a scale-free ridge fit."""
    d = np.sqrt(np.maximum(np.diag(ata), 1e-300))
    scaled = ata / np.outer(d, d)
    reg = np.full(len(d), float(e0_ridge))
    reg[:m] = lam
    reg[np.diag(ata) == 0] = 1.0
    hessian = scaled + np.diag(reg)
    mean_scaled = np.linalg.solve(hessian, atb / d)
    mean = mean_scaled / d
    sse = float(mean @ ata @ mean - 2 * mean @ atb + btb)
    dof = max(rows - len(d), 1)
    return d, hessian, mean_scaled, max(sse, 0.0) / dof


def posterior_samples(ata: np.ndarray, atb: np.ndarray, btb: float, rows: int, lam: float, m: int,
                      count: int, seed: int = 0, e0_ridge: float = 0.0, scale: float = 1.0,
                      antithetic: bool = False) -> np.ndarray:
    """Coefficient vectors drawn from the Gaussian posterior of a ridge fit.

    With the scale-free ridge of :func:`ace_uq_calc.fitting.linear_fit.solve_ridge` (prior precision
    lam on the column-normalised ACE coefficients), the posterior is N(c_hat, s^2 H^-1) where
    H = A^T A + lam D^2 and s^2 = SSE / (rows - m) is the noise variance estimated from the residuals.
    ``scale`` multiplies the deviations from c_hat (1: the posterior itself; see
    :func:`posterior_scale_from_validation`). ``antithetic``: draw count // 2 deviations and use each
    with both signs (plus c_hat itself when count is odd), so that the samples' mean is exactly c_hat.
    Returns (count, m + n_extra) samples (E0 columns included).
    ``e0_ridge``: the ridge on the columns after the first m (the E0 columns), as in ``solve_ridge``.
    """
    d, hessian, mean_scaled, noise = _scaled_posterior(ata, atb, btb, rows, lam, m, e0_ridge)
    # sample via the eigen-decomposition of the (symmetric, positive definite) Hessian
    w, v = np.linalg.eigh(hessian)
    w = np.maximum(w, w.max() * 1e-15)
    rng = np.random.default_rng(seed)
    if antithetic:
        half = rng.standard_normal((count // 2, len(d)))
        z = np.concatenate([half, -half, np.zeros((count % 2, len(d)))])
    else:
        z = rng.standard_normal((count, len(d)))
    samples_scaled = mean_scaled[None, :] + float(scale) * np.sqrt(noise) * (z / np.sqrt(w)[None, :]) @ v.T
    return samples_scaled / d[None, :]


def posterior_scale_from_validation(train, validation, lam: float, m: int, e0_ridge: float = 0.0) -> float:
    """Factor by which the posterior spread of a fit on ``train`` must be widened so that its predicted
    variance of the ``validation`` rows equals their actual squared error (from normal equations only).

    ``train`` and ``validation`` have ``ata``, ``atb``, ``btb`` and ``rows`` (weighted rows of energies,
    forces and stresses, as assembled by the fit). With c_hat and Cov(c) = s^2 D^-1 H^-1 D^-1 the
    posterior of the training-only fit: scale^2 = SSE_val(c_hat) / tr(Cov(c) A_val^T A_val). The
    posterior covers only the statistical uncertainty of the coefficients, not the model's own error (a
    finite basis) nor the noise of the labels, so on real data scale is much larger than 1; the scaled
    ensemble's spread then matches the held-out error, in the fit's weighted rows (mostly forces)."""
    d, hessian, mean_scaled, noise = _scaled_posterior(train.ata, train.atb, train.btb, train.rows, lam, m,
                                                       e0_ridge)
    mean = mean_scaled / d
    sse_val = float(mean @ validation.ata @ mean - 2 * mean @ validation.atb + validation.btb)
    predicted = noise * float(np.trace(np.linalg.solve(hessian, validation.ata / np.outer(d, d))))
    if not (predicted > 0 and sse_val > 0):
        return 1.0
    return float(np.sqrt(sse_val / predicted))
