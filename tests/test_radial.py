"""Radial functions, core repulsion, lookup tables and embeddings (spec 3, 8.2).

References: pyace component values (pyace_unit_values.json), values quoted in the spec (W-W ZBL),
and finite differences of the exact functions.
"""
import dataclasses
import json

import numpy as np
import pytest
import yaml
from conftest import FIXTURES, require_shared

from ace_uq_calc.kernels.embedding import embedding_value
from ace_uq_calc.kernels.radial import evaluate_radial_table, quintic_switch_scalar
from ace_uq_calc.model.embedding import embedding
from ace_uq_calc.model.radial import (
    BondParameters,
    build_radial_table,
    core_repulsion,
    evaluate_table,
    exact_columns,
    quintic_switch,
    radial_basis,
    radial_functions,
)

KINDS = {"FinnisSinclair": 0, "FinnisSinclairShiftedScaled": 1}


@pytest.fixture(scope="module")
def unit_values():
    return json.loads(require_shared(FIXTURES / "pyace_unit_values.json").read_text())


def bond(radbase="SBessel", lam=5.25, rcut=5.0, dcut=0.05, r_in=0.0, delta_in=0.0,
         cut="distance", core=(0.0, 0.0), crad=None, z=(0, 0), nradbase=8):
    if crad is None:
        crad = np.zeros((1, 1, nradbase))
    return BondParameters(radbase=radbase, radparameters=(lam,), rcut=rcut, dcut=dcut, r_in=r_in,
                          delta_in=delta_in, inner_cutoff_type=cut, core_repulsion=core,
                          radcoefficients=crad, z_central=z[0], z_neighbour=z[1])


def yaml_bond(potential, block_name, elements_z):
    """BondParameters of one block of a fixture potential, padded to the global sizes."""
    pot = yaml.safe_load(require_shared(FIXTURES / potential).read_text())
    blocks = [b for b in pot["species"] if "nradbaseij" in b]
    nradbase = max(int(b["nradbaseij"]) for b in blocks)
    nradmax = max(int(b["nradmaxi"]) for b in blocks)
    lmax = max(int(b["lmaxi"]) for b in blocks)
    blk = next(b for b in pot["species"] if b["speciesblock"] == block_name)
    c = np.array(blk["radcoefficients"], dtype=float)
    crad = np.zeros((nradmax, lmax + 1, nradbase))
    crad[: c.shape[0], : c.shape[1], : c.shape[2]] = c
    params = BondParameters(
        radbase=blk["radbase"], radparameters=tuple(blk["radparameters"]),
        rcut=float(blk["rcutij"]), dcut=float(blk["dcutij"]),
        r_in=float(blk.get("r_in", 0.0)), delta_in=float(blk.get("delta_in", 0.0)),
        inner_cutoff_type=blk.get("inner_cutoff_type", "density"),
        core_repulsion=tuple(blk.get("core-repulsion", (0.0, 0.0))), radcoefficients=crad,
        z_central=elements_z[0], z_neighbour=elements_z[1])
    return params, nradbase, nradmax, lmax, float(pot["global"]["DeltaSplineBins"])


def fd4(fun, r, h):
    """4-point central difference of a vectorised function of r."""
    return (-fun(r + 2 * h) + 8 * fun(r + h) - 8 * fun(r - h) + fun(r - 2 * h)) / (12 * h)


# ------------------------------------------------------------------------------- pyace oracle values

def test_radial_basis_matches_pyace(unit_values):
    records = unit_values["radial_base_analytic"]
    assert len(records) >= 13
    for rec in records:
        k = int(rec["nradbase"])
        b = bond(rec["radbase"], rec["lambda"], rec["rcut"], rec["dcut"], rec["r_in"], rec["delta_in"],
                 rec["inner_cutoff_type"], nradbase=k)
        g, dg = radial_basis([rec["r"]], b, k)
        # values near r_c are differences of O(1) terms: absolute floor 1e-14
        np.testing.assert_allclose(g[0], rec["g"], rtol=1e-12, atol=1e-14, err_msg=str(rec["radbase"]))
        np.testing.assert_allclose(dg[0], rec["dg_dr"], rtol=1e-12, atol=1e-14, err_msg=str(rec["radbase"]))


def test_radial_tables_match_pyace(unit_values):
    records = unit_values["radial_spline_vs_analytic"]
    assert records
    for rec in records:
        assert rec["potential"] == "AlNi_fs.yaml" and rec["bond"].startswith("Al-Ni")
        params, k, nmax, lmax, h = yaml_bond("AlNi_fs.yaml", "Al Ni", (13, 28))
        table = build_radial_table(params, k, nmax, lmax, h)
        val, der = evaluate_table(table, [rec["r"]])
        val, der = val[0], der[0]
        rnl = np.array(rec["R_nl_spline[n][l]"], dtype=float)
        assert rnl.shape == (nmax, lmax + 1)
        kw = dict(rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(val[:k], rec["g_spline"], **kw)
        np.testing.assert_allclose(der[:k], rec["dg_spline"], **kw)
        np.testing.assert_allclose(val[k:k + nmax * (lmax + 1)], rnl.ravel(), **kw)
        np.testing.assert_allclose(val[-1], rec["core_repulsion_spline"], **kw)
        np.testing.assert_allclose(der[-1], rec["dcore_dr_spline"], **kw)
        g, dg = radial_basis([rec["r"]], params, k)
        np.testing.assert_allclose(g[0], rec["g_analytic"], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(dg[0], rec["dg_analytic"], rtol=1e-12, atol=1e-14)


def test_embedding_matches_pyace(unit_values):
    records = unit_values["embedding"]
    assert {r["npoti"] for r in records} == set(KINDS)
    for rec in records:
        f, df = embedding(rec["rho"], rec["m"], rec["npoti"])
        fk, dfk = embedding_value(float(rec["rho"]), float(rec["m"]), KINDS[rec["npoti"]])
        for a, b in ((f, fk), (df, dfk)):
            assert a == b
        assert f == pytest.approx(rec["F"], rel=1e-13, abs=1e-300)
        assert df == pytest.approx(rec["dF"], rel=1e-13)
    # array input
    rho = np.array([r["rho"] for r in records if r["npoti"] == "FinnisSinclair" and r["m"] == 0.5])
    f, _ = embedding(rho, 0.5, "FinnisSinclair")
    assert f.shape == rho.shape
    with pytest.raises(ValueError):
        embedding(1.0, 0.5, "Morse")


@pytest.mark.parametrize("npoti", sorted(KINDS))
@pytest.mark.parametrize("m", [0.5, 0.75, 1.0, 2.0])
def test_embedding_derivative_finite_difference(npoti, m):
    rho = np.array([-3.0, -0.4, 0.2, 1.3, 5.0])
    h = 1e-4
    _, df = embedding(rho, m, npoti)
    num = fd4(lambda x: embedding(x, m, npoti)[0], rho, h)
    np.testing.assert_allclose(df, num, rtol=1e-9, atol=1e-10)
    if npoti != "FinnisSinclair":
        return
    # around the FinnisSinclair regularisation scale 1/W = 1e-6 (G = exp(-(W rho)^3) not negligible)
    rho = np.array([-8e-7, -3e-7, 2e-7, 5e-7, 1.2e-6])
    _, df = embedding(rho, m, npoti)
    num = fd4(lambda x: embedding(x, m, npoti)[0], rho, 1e-10)
    np.testing.assert_allclose(df, num, rtol=1e-6)


# ------------------------------------------------------------------------------- physics checks

def test_zbl_tungsten_values_from_spec():
    b = bond("SBessel", rcut=5.0, dcut=0.01, r_in=2.0531, delta_in=0.1, cut="zbl", core=(1.0, 1.0),
             z=(74, 74))
    phi, _ = core_repulsion([1.0, 2.0], b)
    assert phi[0] == pytest.approx(217.8907, abs=5e-5)
    assert phi[1] == pytest.approx(5.92905, abs=5e-6)
    # signed P, Lambda unused
    b2 = bond("SBessel", rcut=5.0, dcut=0.01, r_in=2.0531, delta_in=0.1, cut="zbl", core=(-1.0, 5.0),
              z=(74, 74))
    np.testing.assert_allclose(core_repulsion([1.0, 2.0], b2)[0], -phi, rtol=1e-15)


def zbl_bond(delta_in=0.1):
    return bond("SBessel", rcut=5.0, dcut=0.2, r_in=2.05, delta_in=delta_in, cut="zbl",
                core=(1.0, 1.0), z=(13, 28))


CORE_BONDS = {
    "distance": bond("ChebExpCos", 2.0, rcut=5.0, r_in=2.0, delta_in=0.5, core=(40.0, -1.0)),
    "density": bond("ChebExpCos", 2.0, rcut=5.0, r_in=2.0, delta_in=0.5, cut="density", core=(-40.0, 1.0)),
    "zbl": zbl_bond(),
}


@pytest.mark.parametrize("kind", sorted(CORE_BONDS))
def test_core_repulsion_derivative_finite_difference(kind):
    b = CORE_BONDS[kind]
    r = np.array([0.3, 0.9, 1.6, 1.75, 1.99, 2.6, 4.0, 4.85, 4.93])
    phi, dphi = core_repulsion(r, b)
    num = fd4(lambda x: core_repulsion(x, b)[0], r, 1e-5)
    np.testing.assert_allclose(dphi, num, rtol=1e-7, atol=1e-9)
    assert np.all(phi[r < 1.5] != 0.0)


def test_core_repulsion_variants():
    r = np.array([1.0, 1.4, 1.75, 2.0, 3.0])
    dist, _ = core_repulsion(r, CORE_BONDS["distance"])
    dens, _ = core_repulsion(r, CORE_BONDS["density"])
    # absolute values of P and Lambda: both bonds have |P| = 40, |Lambda| = 1
    expected = 40.0 * np.exp(-r * r) / r * 0.5 * (1 + np.cos(np.pi * r / 5.0))
    np.testing.assert_allclose(dens, expected, rtol=1e-14)
    s, _ = quintic_switch(r, 2.0, 0.5)
    np.testing.assert_allclose(dist, expected * s, rtol=1e-14)
    assert dist[0] == dens[0] and dist[3] == 0.0 and dist[4] == 0.0
    # Lambda r^2 >= 50 gives zero
    b = bond(rcut=9.0, cut="density", core=(1.0, 1.0))
    assert core_repulsion([7.2], b)[0][0] == 0.0


BASES = {
    "SBessel": dict(radbase="SBessel", rcut=5.0),
    "ChebExpCos": dict(radbase="ChebExpCos", lam=1.5, rcut=5.5, dcut=0.1),
    "ChebPow": dict(radbase="ChebPow", lam=2.0, rcut=5.2),
}


@pytest.mark.parametrize("name", sorted(BASES))
@pytest.mark.parametrize("cut", ["distance", "density"])
def test_radial_basis_derivative_finite_difference(name, cut):
    b = bond(r_in=1.9, delta_in=0.4, cut=cut, nradbase=10, **BASES[name])
    rc = BASES[name]["rcut"]
    r = np.array([1.55, 1.7, 1.88, 2.5, 3.3, 4.2, rc - 0.07, rc - 0.03])   # incl. ChebExpCos taper
    g, dg = radial_basis(r, b, 10)
    num = fd4(lambda x: radial_basis(x, b, 10)[0], r, 1e-5)
    scale = np.max(np.abs(dg), axis=0)
    assert np.all(np.abs(dg - num) <= 1e-8 * scale + 1e-10)
    # R_nl derivatives are the same linear combination
    rng = np.random.default_rng(1)
    crad = rng.normal(size=(3, 2, 10))
    bc = bond(r_in=1.9, delta_in=0.4, cut=cut, nradbase=10, crad=crad, **BASES[name])
    rnl, drnl = radial_functions(r, bc, 10)
    np.testing.assert_allclose(rnl, np.einsum("nlk,rk->rnl", crad, g), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(drnl, np.einsum("nlk,rk->rnl", crad, dg), rtol=1e-12, atol=1e-12)


def test_inner_cutoff_rules():
    r = np.array([0.5, 0.99, 1.0, 1.001, 1.3, 1.6, 2.0, 3.0])
    k = 6
    plain, _ = radial_basis(r, bond(cut="density"), k)
    dist, _ = radial_basis(r, bond(r_in=1.6, delta_in=0.3, cut="distance"), k)
    s, _ = quintic_switch(r, 1.6, 0.3)
    np.testing.assert_allclose(dist, plain * (1 - s)[:, None], rtol=1e-15)
    assert np.all(dist[r <= 1.3] == 0.0)
    # zbl, delta_in > 0: no inner cut-off of the basis at all
    zbl, _ = radial_basis(r, bond(r_in=1.6, delta_in=0.1, cut="zbl"), k)
    np.testing.assert_array_equal(zbl, plain)
    # zbl, delta_in == 0: basis cut at 1 A (zero for r <= 1), unchanged above
    zbl0, _ = radial_basis(r, bond(r_in=1.6, delta_in=0.0, cut="zbl"), k)
    assert np.all(zbl0[r <= 1.0] == 0.0)
    np.testing.assert_array_equal(zbl0[r > 1.0], plain[r > 1.0])


@pytest.mark.parametrize("delta", [0.5, 0.1])
def test_quintic_switch(delta):
    a = 2.0
    t = np.linspace(a - delta - 0.05, a + 0.05, 57)
    s, ds = quintic_switch(t, a, delta)
    num = fd4(lambda x: quintic_switch(x, a, delta)[0], t, 1e-6)
    inside = (t > a - delta + 1e-5) & (t < a - 1e-5)
    np.testing.assert_allclose(ds[inside], num[inside], rtol=1e-7, atol=1e-8)
    assert np.all(s[t <= a - delta] == 1.0) and np.all(s[t >= a] == 0.0)
    assert np.all(np.diff(s) <= 0.0)
    for ti, si, dsi in zip(t, s, ds):
        sk, dsk = quintic_switch_scalar(float(ti), a, delta)
        assert sk == pytest.approx(si, abs=1e-15) and dsk == pytest.approx(dsi, abs=1e-13)
    # value at the mid point and C1 ends
    assert quintic_switch_scalar(a - delta / 2, a, delta)[0] == pytest.approx(0.5, abs=1e-15)
    assert abs(quintic_switch_scalar(a - delta + 1e-9, a, delta)[1]) < 1e-12
    # delta = 0: a step, S(a) = 1
    assert quintic_switch_scalar(a, a, 0.0) == (1.0, 0.0)
    assert quintic_switch_scalar(a + 1e-12, a, 0.0) == (0.0, 0.0)


def test_radbase_names():
    with pytest.raises(ValueError, match="ChebLinear"):
        radial_basis([1.0], bond("ChebLinear", 1.0), 4)
    with pytest.raises(ValueError, match="radbase"):
        radial_basis([1.0], bond("Gaussian", 1.0), 4)
    with pytest.raises(ValueError, match="inner_cutoff_type"):
        radial_basis([1.0], bond(cut="soft"), 4)
    g, dg = radial_basis([1.0, 2.0], bond("TEST_SBessel"), 4)
    assert g.shape == (2, 4) and not g.any() and not dg.any()


# ------------------------------------------------------------------------------- tables

TABLE_CASES = [
    ("AlNi_fs.yaml", "Al Ni", (13, 28)),
    ("AlNi_fs.yaml", "Ni", (28, 28)),
    ("Cu_fs500.yaml", "Cu", (29, 29)),
    ("W_defect.yaml", "W", (74, 74)),
]


@pytest.mark.parametrize("potential, block, z", TABLE_CASES)
def test_table_knots_and_layout(potential, block, z):
    params, k, nmax, lmax, h = yaml_bond(potential, block, z)
    table = build_radial_table(params, k, nmax, lmax, h)
    ncol = k + nmax * (lmax + 1) + 1
    c = table.coefficients
    assert c.shape == (table.nlut + 1, ncol, 4) and c.dtype == np.float64 and c.flags.c_contiguous
    assert table.nlut == int(np.floor(params.rcut / h))
    assert table.scale == table.nlut / params.rcut
    assert not c[0].any() and not c[table.nlut].any()
    hh = 1.0 / table.scale
    # at knots: exact values and slopes (interval start); between: close to the exact functions
    rng = np.random.default_rng(7)
    j = np.unique(np.concatenate([[1, 2, table.nlut - 1], rng.integers(3, table.nlut - 1, 40)]))
    knots = hh * j
    exact_v, exact_d = exact_columns(knots, params, k, nmax, lmax)
    row = c[j]
    np.testing.assert_array_equal(row[:, :, 0], exact_v)
    np.testing.assert_allclose(row[:, :, 1], exact_d * hh, rtol=1e-15, atol=0)
    val, der = evaluate_table(table, knots * (1 + 1e-15))
    colscale = np.maximum(np.abs(exact_v).max(axis=0), 1e-300)
    assert np.all(np.abs(val - exact_v) <= 1e-12 * colscale + 1e-14)
    dscale = np.abs(exact_d).max(axis=0)
    assert np.all(np.abs(der - exact_d) <= 1e-9 * dscale + 1e-12)
    # mid points: cubic Hermite error is O(hh^4 f'''')
    start = 0.3 if params.inner_cutoff_type != "distance" else params.r_in
    mids = np.linspace(start, params.rcut - 0.01, 301) + 0.5 * hh
    val, der = evaluate_table(table, mids)
    exact_v, exact_d = exact_columns(mids, params, k, nmax, lmax)
    assert np.all(np.abs(val - exact_v) <= 1e-7 * np.abs(exact_v).max(axis=0) + 1e-12)
    # beyond the cut-off: exactly zero, and the exact functions too
    far = np.array([params.rcut, params.rcut + 1e-9, params.rcut + 0.3, 50.0])
    val, der = evaluate_table(table, far)
    assert not val.any() and not der.any()
    ev, ed = exact_columns(far, params, k, nmax, lmax)
    assert not ev.any() and not ed.any()
    # R_nl columns are the crad combination of the g columns
    g = c[1:table.nlut, :, :][:, :k, 0]
    rnl = c[1:table.nlut, k:k + nmax * (lmax + 1), 0]
    crad = params.radcoefficients.reshape(nmax * (lmax + 1), k)
    np.testing.assert_allclose(rnl, g @ crad.T, rtol=1e-10, atol=1e-13)


def test_table_derivative_consistent_and_small_r_finite():
    params, k, nmax, lmax, h = yaml_bond("AlNi_fs.yaml", "Al Ni", (13, 28))
    table = build_radial_table(params, k, nmax, lmax, h)
    r = np.array([1.5001234, 1.77777, 2.3456789, 3.14159, 5.4321])
    _, der = evaluate_table(table, r)
    num = fd4(lambda x: evaluate_table(table, x)[0], r, 1e-7)
    scale = np.abs(der).max(axis=0) + 1e-12
    assert np.all(np.abs(der - num) <= 1e-6 * scale)
    ncol = table.coefficients.shape[1]
    vals = np.empty(ncol)
    ders = np.empty(ncol)
    for rr in (0.0, 2e-4, 0.0009):
        evaluate_radial_table(table.coefficients, table.scale, table.nlut, rr, vals, ders)
        assert np.all(np.isfinite(vals)) and np.all(np.isfinite(ders))
    evaluate_radial_table(table.coefficients, table.scale, table.nlut, np.nan, vals, ders)
    assert not vals.any() and not ders.any()


def test_zbl_table_and_cutoff_gap():
    b = zbl_bond(0.0)
    crad = np.zeros((1, 1, 6))
    crad[0, 0, :] = 1.0
    b = dataclasses.replace(b, radcoefficients=crad)
    table = build_radial_table(b, 6, 1, 0, 0.001)
    r = np.array([0.5, 0.999, 1.0005, 1.002, 3.0, 4.9])
    val, _ = evaluate_table(table, r)
    exact_v, _ = exact_columns(r, b, 6, 1, 0)
    assert not val[:2, :6].any()                 # basis cut at 1 A with delta_in = 0
    ok = np.array([True, True, False, True, True, True])   # [1, 1.001): smoothed by the table only
    np.testing.assert_allclose(val[ok], exact_v[ok], rtol=1e-7, atol=1e-10)
    assert np.all(val[:, -1] > 0.0)              # ZBL term everywhere below r_c


def test_table_argument_checks():
    b = bond(nradbase=4, crad=np.zeros((2, 2, 4)))
    with pytest.raises(ValueError):
        build_radial_table(b, 4, 1, 1, 0.001)      # crad larger than the global sizes
    with pytest.raises(ValueError):
        build_radial_table(b, 4, 2, 1, 0.0)
    small = build_radial_table(bond(nradbase=4, crad=np.ones((1, 1, 2))), 4, 2, 1, 0.01)
    assert small.coefficients.shape[1] == 4 + 2 * 2 + 1


def test_element_table_matches_ase():
    """The package's own symbol -> Z table (model/elements.py, used for ZBL and file checks) equals ASE's."""
    from ase.data import atomic_numbers

    from ace_uq_calc.model.elements import ATOMIC_NUMBERS

    assert len(ATOMIC_NUMBERS) == 118
    assert all(atomic_numbers[symbol] == z for symbol, z in ATOMIC_NUMBERS.items())
