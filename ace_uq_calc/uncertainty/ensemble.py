"""Ensembles of potentials: mean and spread of energies, forces and stress.

Per-atom force uncertainty as in the UQ study (uq-methods.md section 2):
forces_dev_i = max_k ||F_k,i - mean_k F_k,i|| (eV/A). Standard deviations use ddof = 0 (the spread
of the K members themselves).
"""
from __future__ import annotations

import numpy as np

ENSEMBLE_PROPERTIES = ["energy_std", "energies_std", "forces_std", "stress_std", "forces_dev"]


def ensemble_statistics(energies, forces, stresses=None) -> dict:
    """energies: (K, N) per-atom energies (eV); forces: (K, N, 3) eV/A; stresses: (K, 6) eV/A^3 or None.

    Returns a dict with energy, energies, forces, stress (means) and energy_std, energies_std (N),
    forces_std (N, 3), stress_std (6), forces_dev (N).
    """
    energies = np.asarray(energies, dtype=float)
    forces = np.asarray(forces, dtype=float)
    total = energies.sum(axis=1)
    mean_forces = forces.mean(axis=0)
    out = {
        "energy": float(total.mean()),
        "energy_std": float(total.std()),
        "energies": energies.mean(axis=0),
        "energies_std": energies.std(axis=0),
        "forces": mean_forces,
        "forces_std": forces.std(axis=0),
        "forces_dev": (np.linalg.norm(forces - mean_forces[None], axis=2).max(axis=0)
                       if forces.shape[1] else np.zeros(0)),
    }
    if stresses is not None:
        stresses = np.asarray(stresses, dtype=float)
        out["stress"] = stresses.mean(axis=0)
        out["stress_std"] = stresses.std(axis=0)
    return out


def posterior_samples(ata: np.ndarray, atb: np.ndarray, btb: float, rows: int, lam: float, m: int,
                      count: int, seed: int = 0) -> np.ndarray:
    """Coefficient vectors drawn from the Gaussian posterior of a ridge fit.

    With the scale-free ridge of :func:`ace_uq_calc.fitting.linear_fit.solve_ridge` (prior precision
    lam on the column-normalised ACE coefficients), the posterior is N(c_hat, s^2 H^-1) where
    H = A^T A + lam D^2 and s^2 = SSE / (rows - m) is the noise variance estimated from the residuals.
    Returns (count, m + n_extra) samples (E0 columns included).
    """
    d = np.sqrt(np.maximum(np.diag(ata), 1e-300))
    scaled = ata / np.outer(d, d)
    reg = np.zeros(len(d))
    reg[:m] = lam
    reg[np.diag(ata) == 0] = 1.0
    hessian = scaled + np.diag(reg)
    mean_scaled = np.linalg.solve(hessian, atb / d)
    mean = mean_scaled / d
    sse = float(mean @ ata @ mean - 2 * mean @ atb + btb)
    dof = max(rows - len(d), 1)
    noise = max(sse, 0.0) / dof
    # sample via the eigen-decomposition of the (symmetric, positive definite) Hessian
    w, v = np.linalg.eigh(hessian)
    w = np.maximum(w, w.max() * 1e-15)
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((count, len(d)))
    samples_scaled = mean_scaled[None, :] + np.sqrt(noise) * (z / np.sqrt(w)[None, :]) @ v.T
    return samples_scaled / d[None, :]
