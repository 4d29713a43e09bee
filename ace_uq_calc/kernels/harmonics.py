"""Complex spherical harmonics with pacemaker's normalisation (Y_00 = 1), and their gradients.

Convention (spec section 4): Condon-Shortley phase, Y_lm = sqrt(4 pi) * (orthonormal Y_lm), only m >= 0
stored; Y_{l,-m} = (-1)^m conj(Y_lm). Storage index of (l, m >= 0): ``l * (l + 1) // 2 + m``.

Y_lm(u) = N_lm (-1)^m Q_l^m(z) (x + i y)^m with Q_l^m = d^m P_l / dz^m, a polynomial in u = (x, y, z).
Gradient with respect to the bond vector r (length r, unit vector u):
dY/dr = (1/r) (I - u u^T) grad_u Y(u).
"""
import math

import numpy as np
from numba import njit


def harmonic_count(lmax: int) -> int:
    """Number of stored (l, m >= 0) pairs for l = 0..lmax."""
    return (lmax + 1) * (lmax + 2) // 2


def harmonic_normalisation(lmax: int) -> np.ndarray:
    """(-1)^m sqrt((2l+1) (l-m)! / (l+m)!) for every stored (l, m >= 0), dimensionless."""
    out = np.empty(harmonic_count(lmax))
    for l in range(lmax + 1):
        for m in range(l + 1):
            out[l * (l + 1) // 2 + m] = (-1) ** m * math.sqrt(
                (2 * l + 1) * math.factorial(l - m) / math.factorial(l + m)
            )
    return out


@njit(cache=True, fastmath=False)
def spherical_harmonics(lmax, normalisation, x, y, z, inverse_r, legendre, values, gradients):
    """Fill ``values[lm]`` with Y_lm(u) and ``gradients[lm, :]`` with dY_lm/dr (1/Angstrom).

    x, y, z: components of the unit bond vector u; inverse_r: 1/|r| (1/Angstrom).
    legendre: scratch (lmax + 2, lmax + 2) float64 for Q_l^m = d^m P_l/dz^m.
    values: (nlm,) complex128; gradients: (nlm, 3) complex128.
    """
    # Q_l^m by the differentiated Legendre recursion
    # l Q_l^m = (2l - 1)(z Q_{l-1}^m + m Q_{l-1}^{m-1}) - (l - 1) Q_{l-2}^m
    for l in range(lmax + 2):
        for m in range(lmax + 2):
            legendre[l, m] = 0.0
    legendre[0, 0] = 1.0
    for l in range(1, lmax + 1):
        for m in range(l + 1):
            term = z * legendre[l - 1, m]
            if m > 0:
                term += m * legendre[l - 1, m - 1]
            value = (2 * l - 1) * term
            if l >= 2:
                value -= (l - 1) * legendre[l - 2, m]
            legendre[l, m] = value / l
    xy = complex(x, y)
    power_prev = 0.0 + 0.0j   # (x + iy)^(m-1)
    power = 1.0 + 0.0j        # (x + iy)^m
    for m in range(lmax + 1):
        for l in range(m, lmax + 1):
            lm = l * (l + 1) // 2 + m
            c = normalisation[lm]
            q = legendre[l, m]
            val = c * q * power
            gx = c * q * m * power_prev
            gy = 1j * gx
            gz = c * legendre[l, m + 1] * power
            radial = x * gx + y * gy + z * gz
            values[lm] = val
            gradients[lm, 0] = (gx - x * radial) * inverse_r
            gradients[lm, 1] = (gy - y * radial) * inverse_r
            gradients[lm, 2] = (gz - z * radial) * inverse_r
        power_prev = power
        power = power * xy
