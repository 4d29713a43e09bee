"""Exact radial functions of a bond and their cubic-Hermite lookup tables (spec section 3).

Everything here is vectorised numpy, run once when a potential is loaded:

* :func:`radial_basis`   - g_k(r), dg_k/dr (3.1), times the inner-cutoff factor (3.2);
* :func:`radial_functions` - R_nl(r) = sum_k crad[n, l, k] g_k(r) (3.3);
* :func:`core_repulsion` - phi_core(r) (3.4: exponential core term or screened ZBL), eV;
* :func:`build_radial_table` - the lookup table of 3.5 that the Numba kernel
  :func:`ace_uq_calc.kernels.radial.evaluate_radial_table` interpolates.

Distances in Angstrom, energies in eV, derivatives per Angstrom.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..kernels.radial import evaluate_radial_table, quintic_switch_array

#: e^2 / (4 pi eps_0) in eV Angstrom with ASE's default (CODATA 2014) constants; spec 3.4.
COULOMB_CONSTANT = 14.399645351950543

#: ZBL universal screening function: phi(x) = sum_i ZBL_C[i] exp(-ZBL_D[i] x).
ZBL_C = (0.18175, 0.50986, 0.28022, 0.02817)
ZBL_D = (3.19980, 0.94229, 0.40290, 0.20162)
ZBL_SCREENING = 0.46850   # Angstrom

INNER_CUTOFF_TYPES = ("distance", "density", "zbl")


@dataclass(frozen=True, eq=False)
class BondParameters:
    """Radial description of the ordered bond (central, neighbour), as read from the ``.yaml``.

    radbase: 'SBessel' | 'ChebExpCos' | 'ChebPow' ('TEST_*' gives zero functions).
    radparameters: only [0] (lambda, dimensionless) is used.
    rcut, dcut, r_in, delta_in: Angstrom. inner_cutoff_type: 'distance' | 'density' | 'zbl'.
    core_repulsion: (P, Lambda) as written in the file (P in eV Angstrom, Lambda in 1/Angstrom^2).
    radcoefficients: (nradmax, lmax + 1, nradbase), zero-padded to the global sizes.
    z_central, z_neighbour: atomic numbers (only used by 'zbl').
    """

    radbase: str
    radparameters: tuple
    rcut: float
    dcut: float
    r_in: float
    delta_in: float
    inner_cutoff_type: str
    core_repulsion: tuple
    radcoefficients: np.ndarray
    z_central: int = 0
    z_neighbour: int = 0


@dataclass(frozen=True, eq=False)
class RadialTable:
    """Cubic Hermite lookup table of one bond (spec 3.5).

    coefficients: (nlut + 1, ncol, 4) float64, C-contiguous; row j (1 <= j <= nlut - 1) holds c0..c3
    of every column on [j hh, (j + 1) hh), with f = c0 + c1 w + c2 w^2 + c3 w^3, w = r s - j;
    rows 0 and nlut are zero. Columns: g_0..g_{K-1}, then R_nl at K + n (lmax + 1) + l, then phi_core.
    scale: s = nlut / rcut (1/Angstrom); hh = 1 / s.
    """

    coefficients: np.ndarray
    scale: float
    nlut: int
    rcut: float

    @property
    def spacing(self) -> float:
        """Knot spacing hh = 1 / scale in Angstrom."""
        return 1.0 / self.scale


# --------------------------------------------------------------------------------------------------
# quintic switch (3.2)

def quintic_switch(t, a: float, delta: float):
    """S(t; a, delta) and dS/dt of spec 3.2 for an array (or scalar) t, as arrays of t's shape; the
    formula is the kernels' :func:`~ace_uq_calc.kernels.radial.quintic_switch_scalar`."""
    t = np.asarray(t, dtype=np.float64)
    flat = np.ascontiguousarray(t.ravel())
    s = np.empty_like(flat)
    ds = np.empty_like(flat)
    quintic_switch_array(flat, float(a), float(delta), s, ds)
    return s.reshape(t.shape), ds.reshape(t.shape)


# --------------------------------------------------------------------------------------------------
# radial bases (3.1)

def _check_bond(bond: BondParameters) -> None:
    if bond.inner_cutoff_type not in INNER_CUTOFF_TYPES:
        raise ValueError(
            f"unknown inner_cutoff_type {bond.inner_cutoff_type!r}; expected one of {INNER_CUTOFF_TYPES}"
        )
    if not bond.rcut > 0.0:
        raise ValueError(f"rcut must be positive, got {bond.rcut}")
    name = bond.radbase
    if name == "ChebLinear":
        raise ValueError(
            "radbase 'ChebLinear' is not supported: its functions do not vanish at the cutoff "
            "(x(rc) = 0), so energies jump there; refit with SBessel, ChebExpCos or ChebPow"
        )
    if name not in ("SBessel", "ChebExpCos", "ChebPow") and not name.startswith("TEST_"):
        raise ValueError(f"unknown radbase {name!r}; expected SBessel, ChebExpCos or ChebPow")


def _chebyshev(x: np.ndarray, kmax: int):
    """T_k(x) for k = 0..kmax and dT_k/dx = k U_{k-1}(x); arrays (kmax + 1, len(x))."""
    t = np.empty((kmax + 1,) + x.shape)
    u = np.empty((kmax + 1,) + x.shape)    # U_k
    t[0] = 1.0
    u[0] = 1.0
    if kmax >= 1:
        t[1] = x
        u[1] = 2.0 * x
    for k in range(2, kmax + 1):
        t[k] = 2.0 * x * t[k - 1] - t[k - 2]
        u[k] = 2.0 * x * u[k - 1] - u[k - 2]
    dt = np.zeros_like(t)
    for k in range(1, kmax + 1):
        dt[k] = k * u[k - 1]
    return t, dt


def _sbessel(r: np.ndarray, rc: float, nradbase: int):
    """Simplified spherical Bessel basis (orthogonalised by the e_n / d_n recursion)."""
    def s_and_ds(x):
        xs = np.where(x == 0.0, 1.0, x)
        s = np.where(x == 0.0, 1.0, np.sin(xs) / xs)
        ds = np.where(x == 0.0, 0.0, (xs * np.cos(xs) - np.sin(xs)) / (xs * xs))
        return s, ds

    g = np.empty((nradbase,) + r.shape)
    dg = np.empty((nradbase,) + r.shape)
    d_prev = 1.0
    for n in range(nradbase):
        k1 = (n + 1) * math.pi / rc
        k2 = (n + 2) * math.pi / rc
        pref = ((-1) ** n) * math.sqrt(2.0) * math.pi / rc ** 1.5 \
            * (n + 1) * (n + 2) / math.sqrt((n + 1) ** 2 + (n + 2) ** 2)
        s1, ds1 = s_and_ds(k1 * r)
        s2, ds2 = s_and_ds(k2 * r)
        f = pref * (s1 + s2)
        df = pref * (ds1 * k1 + ds2 * k2)
        if n == 0:
            g[0] = f
            dg[0] = df
        else:
            e_n = n * n * (n + 2) ** 2 / (4.0 * (n + 1) ** 4 + 1.0)
            d_n = 1.0 - e_n / d_prev
            c = math.sqrt(e_n / d_prev)
            sd = math.sqrt(d_n)
            g[n] = (f + c * g[n - 1]) / sd
            dg[n] = (df + c * dg[n - 1]) / sd
            d_prev = d_n
    return g, dg


def _cheb_exp_cos(r: np.ndarray, lam: float, rc: float, dc: float, nradbase: int):
    """h_k(x(r)) E(r) D(r) with h_0 = 1, h_k = (1 - T_k(x)) / 2."""
    e_lam = math.exp(-lam)
    e_r = np.exp(-lam * r / rc)
    x = 1.0 - 2.0 * (e_r - e_lam) / (1.0 - e_lam)
    dx = (2.0 * lam / rc) * e_r / (1.0 - e_lam)
    env = 0.5 * (1.0 + np.cos(math.pi * r / rc))
    denv = -0.5 * math.pi / rc * np.sin(math.pi * r / rc)
    taper_on = r > rc - dc
    arg = math.pi * (r - rc + dc) / dc if dc != 0.0 else np.zeros_like(r)
    d = np.where(taper_on, 0.5 * (1.0 + np.cos(arg)), 1.0)
    dd = np.where(taper_on, -0.5 * math.pi / (dc if dc != 0.0 else 1.0) * np.sin(arg), 0.0)
    ed = env * d
    ded = denv * d + env * dd
    t, dt = _chebyshev(x, max(nradbase - 1, 1))
    g = np.empty((nradbase,) + r.shape)
    dg = np.empty((nradbase,) + r.shape)
    for k in range(nradbase):
        if k == 0:
            h, dh = np.ones_like(r), np.zeros_like(r)
        else:
            h = 0.5 * (1.0 - t[k])
            dh = -0.5 * dt[k] * dx
        g[k] = h * ed
        dg[k] = dh * ed + h * ded
    return g, dg


def _cheb_pow(r: np.ndarray, lam: float, rc: float, nradbase: int):
    """(1 - T_{k+1}(x)) / 2 with x = 1 - 2 (1 - r / rc)^lambda."""
    base = 1.0 - r / rc
    y = base ** lam
    x = 1.0 - 2.0 * y
    dx = 2.0 * lam / rc * base ** (lam - 1.0)
    t, dt = _chebyshev(x, nradbase)
    g = np.empty((nradbase,) + r.shape)
    dg = np.empty((nradbase,) + r.shape)
    for k in range(nradbase):
        g[k] = 0.5 * (1.0 - t[k + 1])
        dg[k] = -0.5 * dt[k + 1] * dx
    return g, dg


def basis_inner_cutoff(bond: BondParameters):
    """(r_in, delta_in) the radial basis uses for its inner cut-off (3.2), or None for none.

    'distance': the bond's values. 'zbl': r_in' = 1.0 if delta_in == 0 else 0.0, with delta_in.
    'density': None (no factor; only the zero region r <= r_in - delta_in of section 3 applies).
    """
    if bond.inner_cutoff_type == "distance":
        return float(bond.r_in), float(bond.delta_in)
    if bond.inner_cutoff_type == "zbl":
        return (1.0 if bond.delta_in == 0.0 else 0.0), float(bond.delta_in)
    return None


def radial_basis(r, bond: BondParameters, nradbase: int):
    """Exact g_k(r) and dg_k/dr (per Angstrom), arrays of shape (len(r), nradbase).

    Includes the inner cut-off factor 1 - S(r; r_in, delta_in) of 3.2 ('distance'; 'zbl' with
    r_in' = (1.0 if delta_in == 0 else 0.0)); zero for r >= rcut and for r <= r_in - delta_in.
    """
    _check_bond(bond)
    r = np.atleast_1d(np.asarray(r, dtype=np.float64))
    if r.ndim != 1:
        raise ValueError("r must be a scalar or a 1-D array of distances")
    rc = float(bond.rcut)
    cut = bond.inner_cutoff_type
    if cut == "zbl":
        r_in, delta_in = basis_inner_cutoff(bond)
    else:
        r_in, delta_in = float(bond.r_in), float(bond.delta_in)
    active = (r < rc) & (r > r_in - delta_in)
    # evaluate the formulas at safe points where inactive, then zero there
    ra = np.where(active, r, 0.5 * rc)
    lam = float(bond.radparameters[0]) if len(bond.radparameters) else 0.0
    name = bond.radbase
    if name == "SBessel":
        g, dg = _sbessel(ra, rc, nradbase)
    elif name == "ChebExpCos":
        g, dg = _cheb_exp_cos(ra, lam, rc, float(bond.dcut), nradbase)
    elif name == "ChebPow":
        g, dg = _cheb_pow(ra, lam, rc, nradbase)
    else:                                      # TEST_*: zero functions
        g = np.zeros((nradbase,) + r.shape)
        dg = np.zeros((nradbase,) + r.shape)
    if cut in ("distance", "zbl"):
        s, ds = quintic_switch(ra, r_in, delta_in)
        fac = 1.0 - s
        dg = dg * fac - g * ds
        g = g * fac
    g = np.where(active, g, 0.0)
    dg = np.where(active, dg, 0.0)
    return np.ascontiguousarray(g.T), np.ascontiguousarray(dg.T)


def radial_functions(r, bond: BondParameters, nradbase: int):
    """Exact R_nl(r) and dR_nl/dr, shape (len(r), nradmax, lmax + 1) (spec 3.3)."""
    g, dg = radial_basis(r, bond, nradbase)
    crad = np.asarray(bond.radcoefficients, dtype=np.float64)
    if crad.ndim != 3 or crad.shape[2] > nradbase:
        raise ValueError(f"radcoefficients of shape {crad.shape} do not fit nradbase = {nradbase}")
    nmax, lmax1, kmax = crad.shape
    rnl = np.zeros((g.shape[0], nmax, lmax1))
    drnl = np.zeros((g.shape[0], nmax, lmax1))
    for k in range(kmax):                     # sequential sum over k, as written in 3.3
        rnl += crad[None, :, :, k] * g[:, k, None, None]
        drnl += crad[None, :, :, k] * dg[:, k, None, None]
    return rnl, drnl


# --------------------------------------------------------------------------------------------------
# core repulsion (3.4)

def _zbl_screened(r: np.ndarray, a: float):
    """E(r) = phi(r / a) / r and its first two derivatives (E in 1/Angstrom)."""
    x = r / a
    phi = np.zeros_like(r)
    dphi = np.zeros_like(r)
    d2phi = np.zeros_like(r)
    for c, d in zip(ZBL_C, ZBL_D):
        e = c * np.exp(-d * x)
        phi += e
        dphi -= d * e
        d2phi += d * d * e
    e0 = phi / r
    e1 = dphi / (a * r) - phi / r ** 2
    e2 = d2phi / (a * a * r) - 2.0 * dphi / (a * r ** 2) + 2.0 * phi / r ** 3
    return e0, e1, e2


def zbl_parameters(z_i: int, z_j: int) -> float:
    """Universal ZBL screening length a = 0.46850 / (Z_i^0.23 + Z_j^0.23) in Angstrom."""
    if z_i < 1 or z_j < 1:
        raise ValueError(f"ZBL needs positive atomic numbers, got {z_i}, {z_j}")
    return ZBL_SCREENING / (z_i ** 0.23 + z_j ** 0.23)


def _core_zbl(r: np.ndarray, bond: BondParameters):
    rc, dc = float(bond.rcut), float(bond.dcut)
    if not dc > 0.0:
        raise ValueError(f"zbl core repulsion needs dcutij > 0, got {dc}")
    zi, zj = int(bond.z_central), int(bond.z_neighbour)
    a = zbl_parameters(zi, zj)
    p = float(bond.core_repulsion[0]) if len(bond.core_repulsion) else 0.0
    ec0, ec1, ec2 = (float(v[0]) for v in _zbl_screened(np.array([rc]), a))
    r1 = rc - dc
    big_a = (-3.0 * ec1 + dc * ec2) / dc ** 2
    big_b = (2.0 * ec1 - dc * ec2) / dc ** 3
    big_c = -ec0 + dc * ec1 / 2.0 - dc * dc * ec2 / 12.0
    inside = r < rc
    ra = np.where(inside, r, 0.5 * rc)
    e0, e1, _ = _zbl_screened(ra, a)
    mid = ra > r1
    q = np.where(mid, ra - r1, 0.0)
    sh = np.where(mid, big_a * q ** 3 / 3.0 + big_b * q ** 4 / 4.0 + big_c, big_c)
    dsh = np.where(mid, big_a * q ** 2 + big_b * q ** 3, 0.0)
    s, ds = quintic_switch(ra, rc, dc)
    pref = p * (COULOMB_CONSTANT / 2.0) * zi * zj
    phi = pref * (e0 + sh) * s
    dphi = pref * ((e1 + dsh) * s + (e0 + sh) * ds)
    return np.where(inside, phi, 0.0), np.where(inside, dphi, 0.0)


def core_repulsion(r, bond: BondParameters):
    """Exact phi_core(r) (eV) and dphi_core/dr (eV/Angstrom) of spec 3.4, arrays of len(r).

    'distance': P exp(-Lambda r^2) / r (1 + cos(pi r / rc)) / 2 * S(r; r_in, delta_in);
    'density' : the same without S; 'zbl': screened ZBL term with K_e = 14.399645351950543.
    P, Lambda in absolute value except for 'zbl' (signed P, Lambda unused). Zero for r >= rcut.
    """
    _check_bond(bond)
    r = np.atleast_1d(np.asarray(r, dtype=np.float64))
    if bond.inner_cutoff_type == "zbl":
        return _core_zbl(r, bond)
    rc = float(bond.rcut)
    cr = tuple(bond.core_repulsion) + (0.0, 0.0)
    p, lam = abs(float(cr[0])), abs(float(cr[1]))
    inside = (r < rc) & (lam * r * r < 50.0)
    ra = np.where(inside, r, 0.5 * rc)
    ex = np.exp(-lam * ra * ra)
    phi0 = p * ex / ra
    dphi0 = -p * ex * (2.0 * lam * ra * ra + 1.0) / (ra * ra)
    cosine = 0.5 * (1.0 + np.cos(math.pi * ra / rc))
    dcosine = -0.5 * math.pi / rc * np.sin(math.pi * ra / rc)
    phi = phi0 * cosine
    dphi = dphi0 * cosine + phi0 * dcosine
    if bond.inner_cutoff_type == "distance":
        s, ds = quintic_switch(ra, float(bond.r_in), float(bond.delta_in))
        dphi = dphi * s + phi * ds
        phi = phi * s
    return np.where(inside, phi, 0.0), np.where(inside, dphi, 0.0)


# --------------------------------------------------------------------------------------------------
# lookup tables (3.5)

def table_grid(rcut: float, delta_spline_bins: float):
    """(nlut, scale, hh): nlut = floor(rcut / h) (double division), scale = nlut / rcut, hh = 1 / scale."""
    if not delta_spline_bins > 0.0:
        raise ValueError(f"DeltaSplineBins must be positive, got {delta_spline_bins}")
    nlut = int(math.floor(float(rcut) / float(delta_spline_bins)))
    if nlut < 2:
        raise ValueError(f"rcut = {rcut} gives fewer than two spline knots with h = {delta_spline_bins}")
    scale = nlut / float(rcut)
    return nlut, scale, 1.0 / scale


def exact_columns(r, bond: BondParameters, nradbase: int, nradmax: int, lmax: int):
    """All table columns evaluated exactly: (values, d/dr), each (len(r), ncol), column order of RadialTable."""
    crad = np.asarray(bond.radcoefficients, dtype=np.float64)
    if crad.ndim != 3 or any(s > t for s, t in zip(crad.shape, (nradmax, lmax + 1, nradbase))):
        raise ValueError(
            f"radcoefficients of shape {crad.shape} exceed the global sizes "
            f"(nradmax, lmax + 1, nradbase) = {(nradmax, lmax + 1, nradbase)}"
        )
    padded = np.zeros((nradmax, lmax + 1, nradbase))
    padded[: crad.shape[0], : crad.shape[1], : crad.shape[2]] = crad
    r = np.atleast_1d(np.asarray(r, dtype=np.float64))
    g, dg = radial_basis(r, bond, nradbase)
    rnl = np.zeros((r.size, nradmax * (lmax + 1)))
    drnl = np.zeros_like(rnl)
    flat = padded.reshape(nradmax * (lmax + 1), nradbase)
    for k in range(nradbase):
        rnl += flat[None, :, k] * g[:, k, None]
        drnl += flat[None, :, k] * dg[:, k, None]
    core, dcore = core_repulsion(r, bond)
    values = np.concatenate([g, rnl, core[:, None]], axis=1)
    derivs = np.concatenate([dg, drnl, dcore[:, None]], axis=1)
    return values, derivs


def build_radial_table(bond: BondParameters, nradbase: int, nradmax: int, lmax: int,
                       delta_spline_bins: float) -> RadialTable:
    """Cubic Hermite tables of g_k, R_nl and phi_core of one bond, exactly as in spec 3.5.

    Knots r_j = hh * j (j = 1..nlut); f_j, d_j = f'(r_j) * hh from the exact functions; interval j
    (1..nlut-1): c0 = f_j, c1 = d_j, c2 = 3 (f_{j+1} - f_j) - d_{j+1} - 2 d_j,
    c3 = -2 (f_{j+1} - f_j) + d_{j+1} + d_j.
    """
    nlut, scale, hh = table_grid(bond.rcut, delta_spline_bins)
    knots = hh * np.arange(1, nlut + 1, dtype=np.float64)
    f, d = exact_columns(knots, bond, nradbase, nradmax, lmax)
    d = d * hh
    ncol = f.shape[1]
    coeff = np.zeros((nlut + 1, ncol, 4))
    f0, f1 = f[:-1], f[1:]          # f_j, f_{j+1} for j = 1..nlut-1
    d0, d1 = d[:-1], d[1:]
    df = f1 - f0
    coeff[1:nlut, :, 0] = f0
    coeff[1:nlut, :, 1] = d0
    coeff[1:nlut, :, 2] = 3.0 * df - d1 - 2.0 * d0
    coeff[1:nlut, :, 3] = -2.0 * df + d1 + d0
    return RadialTable(coefficients=np.ascontiguousarray(coeff), scale=float(scale), nlut=int(nlut),
                       rcut=float(bond.rcut))


def evaluate_table(table: RadialTable, r):
    """Interpolate a table at distances r (numpy convenience wrapper around the Numba kernel).

    Returns (values, derivatives), each (len(r), ncol).
    """
    r = np.atleast_1d(np.asarray(r, dtype=np.float64))
    ncol = table.coefficients.shape[1]
    values = np.empty((r.size, ncol))
    derivs = np.empty((r.size, ncol))
    for i in range(r.size):
        evaluate_radial_table(table.coefficients, table.scale, table.nlut, r[i], values[i], derivs[i])
    return values, derivs
