"""Mean and spread of the members of an ensemble (energies, forces, stress).

Per-atom force uncertainty as in the UQ study (uq-methods.md section 2):
forces_dev_i = max_k ||F_k,i - mean_k F_k,i|| (eV/A). Standard deviations use ddof = 0 (the spread
of the K members themselves).
"""
from __future__ import annotations

import numpy as np

#: results that only an ensemble (K > 1 members) has
ENSEMBLE_PROPERTIES = ["energy_std", "energies_std", "forces_std", "stress_std", "forces_dev"]


def ensemble_statistics(energies, forces, stresses=None) -> dict:
    """energies: (K, N) per-atom energies (eV); forces: (K, N, 3) eV/A; stresses: (K, 6) eV/A^3 or None.

    Returns a dict with energy, energies, forces, stress (means) and energy_std, energies_std (N),
    forces_std (N, 3), stress_std (6), forces_dev (N).
    """
    energies = np.asarray(energies, dtype=float)
    forces = np.asarray(forces, dtype=float)
    total = energies.sum(axis=1)
    mean_forces = member_mean(forces)
    out = {
        "energy": float(member_mean(total)),
        "energy_std": float(member_std(total)),
        "energies": member_mean(energies),
        "energies_std": member_std(energies),
        "forces": mean_forces,
        "forces_std": member_std(forces),
        "forces_dev": (np.linalg.norm(forces - mean_forces[None], axis=2).max(axis=0)
                       if forces.shape[1] else np.zeros(0)),
    }
    if stresses is not None:
        stresses = np.asarray(stresses, dtype=float)
        out["stress"] = member_mean(stresses)
        out["stress_std"] = member_std(stresses)
    return out


def member_mean(values: np.ndarray) -> np.ndarray:
    """Mean over the members (axis 0); exactly the common value where all members agree (a sum of K
    equal numbers divided by K can differ from the number by one rounding when K is not a power of 2)."""
    mean = values.mean(axis=0)
    if values.shape[0]:
        mean = np.where(np.all(values == values[0], axis=0), values[0], mean)
    return mean


def member_std(values: np.ndarray) -> np.ndarray:
    """Standard deviation over the members (ddof = 0) about :func:`member_mean` (exactly 0 where all agree)."""
    return np.sqrt(np.mean((values - member_mean(values)[None]) ** 2, axis=0))
