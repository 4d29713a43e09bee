"""Spherical harmonics: values against scipy (times sqrt(4 pi)), gradients against finite differences."""
import numpy as np
import pytest
from scipy import special

from ace_uq_calc.kernels.harmonics import (
    harmonic_count,
    harmonic_normalisation,
    spherical_harmonics,
)


def _evaluate(lmax, vec):
    r = np.linalg.norm(vec)
    u = vec / r
    nlm = harmonic_count(lmax)
    values = np.empty(nlm, dtype=np.complex128)
    grads = np.empty((nlm, 3), dtype=np.complex128)
    spherical_harmonics(lmax, harmonic_normalisation(lmax), u[0], u[1], u[2], 1.0 / r,
                        np.empty((lmax + 2, lmax + 2)), values, grads)
    return values, grads


def _scipy_ylm(l, m, u):
    theta = np.arccos(np.clip(u[2], -1, 1))
    phi = np.arctan2(u[1], u[0])
    if hasattr(special, "sph_harm_y"):
        y = special.sph_harm_y(l, m, theta, phi)
    else:  # older scipy
        y = special.sph_harm(m, l, phi, theta)
    return np.sqrt(4 * np.pi) * y


@pytest.mark.parametrize("seed", range(5))
def test_values_match_scipy(seed):
    rng = np.random.default_rng(seed)
    vec = rng.normal(size=3) * 2.0
    lmax = 6
    values, _ = _evaluate(lmax, vec)
    u = vec / np.linalg.norm(vec)
    for l in range(lmax + 1):
        for m in range(l + 1):
            assert abs(values[l * (l + 1) // 2 + m] - _scipy_ylm(l, m, u)) < 1e-12


def test_y00_is_one_and_poles():
    values, grads = _evaluate(4, np.array([0.0, 0.0, 2.5]))
    assert values[0] == 1.0
    assert np.all(np.isfinite(grads))
    values, _ = _evaluate(4, np.array([0.0, 0.0, -1.0]))
    for l in range(5):
        assert abs(values[l * (l + 1) // 2] - np.sqrt(2 * l + 1) * (-1) ** l) < 1e-13


@pytest.mark.parametrize("seed", range(5))
def test_gradients_match_finite_differences(seed):
    rng = np.random.default_rng(100 + seed)
    vec = rng.normal(size=3) * 1.7
    lmax = 5
    _, grads = _evaluate(lmax, vec)
    h = 1e-6
    for a in range(3):
        dv = np.zeros(3)
        dv[a] = h
        plus, _ = _evaluate(lmax, vec + dv)
        minus, _ = _evaluate(lmax, vec - dv)
        np.testing.assert_allclose(grads[:, a], (plus - minus) / (2 * h), atol=1e-8)
