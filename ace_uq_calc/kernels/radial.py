"""Numba evaluation of the radial lookup tables (spec 3.5) and the scalar quintic switch (spec 3.2).

A table of one ordered bond is a C-contiguous float64 array ``coefficients[j, c, 0:4]``: the cubic
Hermite coefficients c0..c3 of column c on the interval j, which covers [j hh, (j + 1) hh) with the
knot spacing hh = 1 / scale (Angstrom). Rows 0 and nlut hold zeros. The tables are built by
:func:`ace_uq_calc.model.radial.build_radial_table`.
"""
import math

from numba import njit


@njit(cache=True)
def evaluate_radial_table(coefficients, scale, nlut, r, values, derivatives):
    """Interpolate every column of a bond's table at the distance ``r`` (Angstrom).

    coefficients: (rows >= nlut + 1, ncol, 4) float64; scale: knots per Angstrom (nlut / rcut);
    values, derivatives: (>= ncol,) float64 outputs, filled with f_c(r) and df_c/dr (per Angstrom).

    x = r * scale, j = floor(x), w = x - j; for j >= nlut (r >= rcut) everything is zero.
    pyace refuses j <= 0 (r below one knot spacing); here the polynomial of interval 1 is
    extrapolated (w < 0), which stays finite. Callers are expected to reject such distances earlier.
    """
    ncol = coefficients.shape[1]
    x = r * scale
    if not (x < nlut):          # also catches NaN
        for c in range(ncol):
            values[c] = 0.0
            derivatives[c] = 0.0
        return
    j = int(math.floor(x))
    if j < 1:
        j = 1
    w = x - j
    for c in range(ncol):
        c0 = coefficients[j, c, 0]
        c1 = coefficients[j, c, 1]
        c2 = coefficients[j, c, 2]
        c3 = coefficients[j, c, 3]
        values[c] = c0 + w * (c1 + w * (c2 + w * c3))
        derivatives[c] = (c1 + w * (2.0 * c2 + 3.0 * w * c3)) * scale


@njit(cache=True)
def quintic_switch_scalar(t, a, delta):
    """Quintic switch S(t; a, delta) of spec 3.2 and dS/dt.

    S = 1 for t <= a - delta (tested first, so delta = 0 gives a step with S(a) = 1),
    S = 0 for t >= a, and in between 1/2 + 15/16 u - 5/8 u^3 + 3/16 u^5 with u = -1 - 2 (t - a) / delta;
    dS/dt = -(15 / (8 delta)) (1 - u^2)^2 there and 0 outside. Units of dS/dt: 1 / (units of t).
    """
    if t <= a - delta:
        return 1.0, 0.0
    if t >= a:
        return 0.0, 0.0
    u = -1.0 - 2.0 * (t - a) / delta
    u2 = u * u
    s = 0.5 + u * (15.0 / 16.0 + u2 * (-5.0 / 8.0 + u2 * (3.0 / 16.0)))
    v = 1.0 - u2
    ds = -(15.0 / (8.0 * delta)) * v * v
    return s, ds


@njit(cache=True)
def quintic_switch_array(t, a, delta, values, derivatives):
    """:func:`quintic_switch_scalar` of every entry of the 1-d array ``t`` into ``values``, ``derivatives``."""
    for k in range(t.shape[0]):
        values[k], derivatives[k] = quintic_switch_scalar(t[k], a, delta)
