"""Tests of ace_uq_calc.model.coupling (CG, generalized CG, lint validation).

References: pyace component values (fixture), an independent construction of the coupled states
with the lowering operator, orthogonality relations, closed forms, equivalence of the full and the
half sums, and rotation invariance of the B-functions.
"""
from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import yaml
from conftest import FIXTURES, require_shared

from ace_uq_calc.model.coupling import (
    clebsch_gordan,
    clebsch_gordan_squared,
    complete_lint,
    coupling_tree,
    generalized_cg,
)

# (ls, lint) cases of ranks 2..6 (and 7) used by the equivalence and rotation tests
CASES = [
    ((1, 1), ()),
    ((3, 3), ()),
    ((1, 1, 2), (2,)),
    ((2, 2, 2), (2,)),
    ((1, 2, 3), (3,)),
    ((1, 1, 1, 1), (2, 2)),
    ((1, 1, 2, 2), (0, 0)),
    ((1, 2, 2, 3), (3, 3)),
    ((1, 1, 1, 1, 2), (2, 0, 2)),
    ((1, 2, 1, 2, 2), (1, 3, 2)),
    ((1, 1, 1, 1, 1, 1), (2, 2, 2, 2)),
    ((1, 1, 1, 1, 2, 2), (0, 2, 2, 2)),
    ((1, 2, 1, 1, 2, 1), (1, 2, 3, 3)),
]


def _unit_values():
    return json.loads(require_shared(FIXTURES / "pyace_unit_values.json").read_text())


# --------------------------------------------------------------------------------------------------
# Clebsch-Gordan
# --------------------------------------------------------------------------------------------------

def test_cg_fixture_values():
    records = _unit_values()["clebsch_gordan"]
    assert records
    for rec in records:
        args = rec["j1,m1,j2,m2,J,M"]
        assert clebsch_gordan(*args) == pytest.approx(rec["value"], abs=1e-14), args


def test_cg_closed_forms():
    for j in range(0, 8):
        for m in range(-j, j + 1):
            # <j m j -m | 0 0> = (-1)^(j-m) / sqrt(2j+1)
            assert clebsch_gordan(j, m, j, -m, 0, 0) == pytest.approx((-1) ** (j - m) / math.sqrt(2 * j + 1), abs=1e-15)
            # coupling with j = 0 is the identity
            assert clebsch_gordan(j, m, 0, 0, j, m) == pytest.approx(1.0, abs=1e-15)
    for j1 in range(0, 6):
        for j2 in range(0, 6):
            assert clebsch_gordan(j1, j1, j2, j2, j1 + j2, j1 + j2) == pytest.approx(1.0, abs=1e-15)
    # <1 0 1 0 | 1 0> vanishes exactly (parity), and is reported as an exact zero
    assert clebsch_gordan(1, 0, 1, 0, 1, 0) == 0.0
    assert clebsch_gordan_squared(1, 0, 1, 0, 1, 0)[0] == 0
    assert clebsch_gordan(2, 0, 2, 0, 3, 0) == 0.0


def test_cg_selection_rules():
    assert clebsch_gordan(1, 1, 1, 0, 2, 0) == 0.0     # M != m1 + m2
    assert clebsch_gordan(1, 2, 1, -2, 2, 0) == 0.0    # |m1| > j1
    assert clebsch_gordan(1, 1, 1, -1, 3, 0) == 0.0    # triangle
    assert clebsch_gordan(3, 1, 1, -1, 1, 0) == 0.0    # triangle
    assert clebsch_gordan(2, 2, 2, 1, 2, 3) == 0.0     # |M| > J
    with pytest.raises(ValueError):
        clebsch_gordan(0.5, 0.5, 0.5, -0.5, 0, 0)


def test_cg_orthogonality_j_le_6():
    """sum_{m1,m2} <j1 m1 j2 m2|J M><j1 m1 j2 m2|J' M'> = delta_JJ' delta_MM' and the converse relation."""
    jmax = 6
    worst = 0.0
    for j1 in range(jmax + 1):
        for j2 in range(jmax + 1):
            Js = list(range(abs(j1 - j2), j1 + j2 + 1))
            for M in range(-(j1 + j2), j1 + j2 + 1):
                m1s = [m1 for m1 in range(-j1, j1 + 1) if abs(M - m1) <= j2]
                U = np.array([[clebsch_gordan(j1, m1, j2, M - m1, J, M) for J in Js] for m1 in m1s])
                # columns with |M| > J are zero by the selection rule
                active = [k for k, J in enumerate(Js) if abs(M) <= J]
                assert np.all(U[:, [k for k in range(len(Js)) if k not in active]] == 0.0)
                V = U[:, active]
                assert V.shape[0] == V.shape[1]
                worst = max(worst, np.abs(V.T @ V - np.eye(V.shape[1])).max(), np.abs(V @ V.T - np.eye(V.shape[0])).max())
    assert worst < 1e-14


def _coupled_states(j1: int, j2: int) -> dict:
    """Independent CG: build |J M> in the product basis with the lowering operator and Gram-Schmidt.

    Phase convention (Condon-Shortley): <j1 j1, j2 J-j1 | J J> > 0. Returns {(J, M): vector over (m1, m2)}.
    """
    dim1, dim2 = 2 * j1 + 1, 2 * j2 + 1

    def index(m1, m2):
        return (m1 + j1) * dim2 + (m2 + j2)

    def lower(vec):
        out = np.zeros_like(vec)
        for m1 in range(-j1, j1 + 1):
            for m2 in range(-j2, j2 + 1):
                c = vec[index(m1, m2)]
                if c == 0.0:
                    continue
                if m1 > -j1:
                    out[index(m1 - 1, m2)] += c * math.sqrt(j1 * (j1 + 1) - m1 * (m1 - 1))
                if m2 > -j2:
                    out[index(m1, m2 - 1)] += c * math.sqrt(j2 * (j2 + 1) - m2 * (m2 - 1))
        return out

    states = {}
    for J in range(j1 + j2, abs(j1 - j2) - 1, -1):
        # highest-weight state of J: in the M = J subspace, orthogonal to all higher-J states
        top = np.zeros(dim1 * dim2)
        for m1 in range(-j1, j1 + 1):
            if abs(J - m1) <= j2:
                top[index(m1, J - m1)] = 1.0 + 0.1 * m1  # generic start vector
        for _ in range(2):  # Gram-Schmidt twice for numerical orthogonality
            for Jp in range(J + 1, j1 + j2 + 1):
                other = states[(Jp, J)]
                top -= (other @ top) * other
        top /= np.linalg.norm(top)
        if top[index(j1, J - j1)] < 0:
            top = -top
        states[(J, J)] = top
        vec = top
        for M in range(J, -J, -1):
            vec = lower(vec) / math.sqrt(J * (J + 1) - M * (M - 1))
            states[(J, M - 1)] = vec
    return states


def test_cg_against_lowering_operator_construction():
    worst = 0.0
    for j1 in range(0, 5):
        for j2 in range(0, 5):
            states = _coupled_states(j1, j2)
            for (J, M), vec in states.items():
                for m1 in range(-j1, j1 + 1):
                    for m2 in range(-j2, j2 + 1):
                        ref = vec[(m1 + j1) * (2 * j2 + 1) + (m2 + j2)]
                        worst = max(worst, abs(clebsch_gordan(j1, m1, j2, m2, J, M) - ref))
    assert worst < 1e-13


# --------------------------------------------------------------------------------------------------
# Coupling tree and lint
# --------------------------------------------------------------------------------------------------

def test_coupling_tree_matches_spec():
    assert coupling_tree(2) == ((0, 1, -1),)
    assert coupling_tree(3) == ((0, 1, 3), (3, 2, -1))
    assert coupling_tree(4) == ((0, 1, 4), (2, 3, 5), (4, 5, -1))
    assert coupling_tree(5) == ((0, 1, 5), (2, 3, 6), (5, 6, 7), (7, 4, -1))
    assert coupling_tree(6) == ((0, 1, 6), (2, 3, 7), (4, 5, 8), (6, 7, 9), (8, 9, -1))
    for rank in range(2, 12):
        tree = coupling_tree(rank)
        assert len(tree) == rank - 1 and tree[-1][2] == -1
        used = [node for a, b, _ in tree for node in (a, b)]
        assert sorted(used) == list(range(2 * rank - 2))  # every leaf and intermediate used once


def test_complete_lint_full_and_short():
    assert complete_lint((0,), ()) == ()
    assert complete_lint((2, 2), ()) == ()
    assert complete_lint((1, 1, 2), (2,)) == (2,)
    assert complete_lint((1, 1, 2), ()) == (2,)                       # rank 3: [l3]
    assert complete_lint((1, 1, 2, 2), (2,)) == (2, 2)                # rank 4: [L] -> [L, L]
    assert complete_lint((1, 1, 2, 2), (0, 0)) == (0, 0)
    assert complete_lint((1, 1, 1, 1, 2), (2, 0)) == (2, 0, 2)        # rank 5: append l5
    assert complete_lint((1, 1, 1, 1, 2, 2), (2, 0, 2)) == (2, 0, 2, 2)  # rank 6: repeat the last
    assert complete_lint([1, 1, 1, 1], [2, 2]) == (2, 2)               # lists accepted


@pytest.mark.parametrize(
    "ls, lint, fragment",
    [
        ((1,), (), "rank-1"),
        ((0,), (0,), "rank-1"),
        ((1, 3), (), "l_1 = l_2"),
        ((2, 2), (0,), "no lint"),
        ((1, 1, 1), (0,), "odd"),
        ((1, 1, 2), (0,), "L_1 = l_3"),
        ((1, 1, 2, 2), (2, 0), "L_1 = L_2"),
        ((1, 1, 1, 1, 2), (2, 0, 0), "L_3 = l_5"),
        ((1, 1, 1, 1, 2, 2), (2, 0, 2, 0), "L_3 = L_4"),
        ((1, 1, 2, 2), (3, 3), "triangle"),
        ((1, 2, 1, 2, 2), (4, 2, 2), "triangle"),
        ((1, 1, 1, 1), (), "length"),
        ((1, 1, 1, 1), (2, 2, 2), "length"),
        ((1, -1), (), "negative"),
        ((), (), "empty"),
    ],
)
def test_invalid_ls_lint_raise(ls, lint, fragment):
    with pytest.raises(ValueError, match=fragment):
        complete_lint(ls, lint)
    if ls and len(ls) >= 2:
        with pytest.raises(ValueError):
            generalized_cg(ls, lint)


# --------------------------------------------------------------------------------------------------
# Generalized CG
# --------------------------------------------------------------------------------------------------

def test_generalized_cg_half_basis_fixture():
    records = _unit_values()["generalized_cg_half_basis"]
    assert records
    for rec in records:
        ms, c = generalized_cg(tuple(rec["ls"]), tuple(rec["LS"]), half=True)
        ref_ms = [entry[0] for entry in rec["ms_and_cg"]]
        ref_c = np.array([entry[1] for entry in rec["ms_and_cg"]])
        assert ms.dtype == np.int64 and c.dtype == np.float64
        assert ms.tolist() == ref_ms, rec["ls"]
        np.testing.assert_allclose(c, ref_c, rtol=0, atol=1e-14)


def test_generalized_cg_rank2_closed_form():
    for l in range(0, 7):
        ms, c = generalized_cg((l, l), (), half=False)
        assert ms.tolist() == [[-m, m] for m in range(-l, l + 1)]
        np.testing.assert_allclose(c, [(-1) ** (l + m) / math.sqrt(2 * l + 1) for m in range(-l, l + 1)], atol=1e-15)


def test_generalized_cg_rank1_and_properties():
    ms, c = generalized_cg((0,), ())
    assert ms.tolist() == [[0]] and c.tolist() == [1.0]
    for ls, lint in CASES:
        full_ms, full_c = generalized_cg(ls, lint, half=False)
        half_ms, half_c = generalized_cg(ls, lint, half=True)
        N = len(ls)
        assert full_ms.shape == (len(full_c), N) and half_ms.shape == (len(half_c), N)
        assert np.all(full_ms.sum(axis=1) == 0) and np.all(np.abs(full_ms) <= np.array(ls))
        assert np.all(full_c != 0.0) and np.all(half_c != 0.0)
        # enumeration order: m_1 fastest, m_N slowest (strictly increasing in reversed-lex order)
        for ms in (full_ms, half_ms):
            keys = [tuple(row[::-1]) for row in ms.tolist()]
            assert keys == sorted(keys) and len(set(keys)) == len(keys)
        # C(-m) = C(m), the half basis is the full one folded
        full = {tuple(row): value for row, value in zip(full_ms.tolist(), full_c)}
        for row, value in full.items():
            assert full[tuple(-m for m in row)] == pytest.approx(value, abs=1e-15)
        expected_half = [(row, value * (2.0 if any(row) else 1.0)) for row, value in full.items()
                         if not any(row) or next(m for m in row if m) > 0]
        assert half_ms.tolist() == [list(row) for row, _ in expected_half]
        np.testing.assert_allclose(half_c, [v for _, v in expected_half], atol=1e-15)
        # normalisation of the coupled state: sum of squares of the full generalized CG = 1
        assert float(np.sum(full_c ** 2)) == pytest.approx(1.0, abs=1e-13)


def test_exact_zero_terms_dropped():
    # <1 0 1 0 | 1 0> = 0: for ls = (1,1,1,1), lint = (1,1) every term with m1 = m2 = 0 vanishes.
    ms, _ = generalized_cg((1, 1, 1, 1), (1, 1), half=False)
    assert not any(row[0] == 0 and row[1] == 0 for row in ms.tolist())
    assert not any(row[2] == 0 and row[3] == 0 for row in ms.tolist())
    # ls = (2,2,2), lint = (2,): <2 0 2 0|2 0> != 0 but <2 1 2 -1|2 0> ... only true zeros are dropped
    ms, c = generalized_cg((2, 2, 2), (2,), half=False)
    n_candidates = sum(1 for a in range(-2, 3) for b in range(-2, 3) if abs(a + b) <= 2)
    zeros = sum(1 for a in range(-2, 3) for b in range(-2, 3)
                if abs(a + b) <= 2 and (clebsch_gordan(2, a, 2, b, 2, a + b) == 0.0))
    assert len(c) == n_candidates - zeros


def _random_a(rng, l):
    """Random A_{l m} (m = -l..l) with A_{l,-m} = (-1)^m conj(A_{lm})."""
    a = np.zeros(2 * l + 1, dtype=complex)
    a[l] = rng.normal()
    for m in range(1, l + 1):
        a[l + m] = rng.normal() + 1j * rng.normal()
        a[l - m] = (-1) ** m * np.conj(a[l + m])
    return a


def _b_full(ls, lint, factors):
    ms, c = generalized_cg(ls, lint, half=False)
    total = 0j
    for row, value in zip(ms.tolist(), c):
        prod = 1 + 0j
        for t, m in enumerate(row):
            prod *= factors[t][ls[t] + m]
        total += value * prod
    return total


def _b_half(ls, lint, factors):
    ms, c = generalized_cg(ls, lint, half=True)
    total = 0.0
    for row, value in zip(ms.tolist(), c):
        prod = 1 + 0j
        for t, m in enumerate(row):
            prod *= factors[t][ls[t] + m]
        total += value * prod.real
    return total


def test_full_sum_equals_half_sum():
    rng = np.random.default_rng(12345)
    for ls, lint in CASES + [((1, 1, 1, 1, 1, 1, 2), (2, 2, 0, 2, 2)), ((2, 1, 1, 2, 1, 1, 2, 2), (1, 2, 2, 2, 2, 2))]:
        for _ in range(3):
            factors = [_random_a(rng, l) for l in ls]
            full = _b_full(ls, lint, factors)
            half = _b_half(ls, lint, factors)
            scale = max(1.0, abs(full))
            assert abs(full.imag) < 1e-12 * scale, (ls, lint)
            assert half == pytest.approx(full.real, abs=1e-12 * scale), (ls, lint)


def _sph_harm_factory():
    """Y_lm(theta polar, phi azimuth), orthonormal with Condon-Shortley phase."""
    try:
        from scipy import special
    except ImportError:  # pragma: no cover - fallback when scipy is absent
        special = None
    if special is not None and hasattr(special, "sph_harm_y"):
        return lambda l, m, theta, phi: complex(special.sph_harm_y(l, m, theta, phi))
    if special is not None and hasattr(special, "sph_harm"):  # pragma: no cover
        return lambda l, m, theta, phi: complex(special.sph_harm(m, l, phi, theta))

    def ylm(l, m, theta, phi):  # pragma: no cover - own fallback, explicit Legendre sum
        am = abs(m)
        x = math.cos(theta)
        # P_l^{|m|}(x) with Condon-Shortley phase, Rodrigues-type explicit sum
        p = 0.0
        for k in range((l - am) // 2 + 1):
            p += ((-1) ** k * math.factorial(2 * l - 2 * k)
                  / (math.factorial(k) * math.factorial(l - k) * math.factorial(l - 2 * k - am))
                  * x ** (l - 2 * k - am))
        p *= (-1) ** am * (1 - x * x) ** (am / 2) / 2 ** l
        norm = math.sqrt((2 * l + 1) / (4 * math.pi) * math.factorial(l - am) / math.factorial(l + am))
        y = norm * p * complex(math.cos(am * phi), math.sin(am * phi))
        return y if m >= 0 else (-1) ** am * y.conjugate()

    return ylm


def _a_from_vectors(ylm, l, vectors, weights):
    a = np.zeros(2 * l + 1, dtype=complex)
    for (x, y, z), w in zip(vectors, weights):
        r = math.sqrt(x * x + y * y + z * z)
        theta, phi = math.acos(z / r), math.atan2(y, x)
        for m in range(-l, l + 1):
            a[l + m] += w * math.sqrt(4 * math.pi) * ylm(l, m, theta, phi)
    return a


def _random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def test_rotation_invariance():
    ylm = _sph_harm_factory()
    rng = np.random.default_rng(2024)
    cases = [c for c in CASES if 2 <= len(c[0]) <= 5]
    for ls, lint in cases:
        vectors = rng.normal(size=(4, 3))
        # a different radial weight per factor and neighbour, so the factors are distinct A's
        weights = rng.uniform(0.2, 1.0, size=(len(ls), 4))
        rotation = _random_rotation(rng)
        rotated = vectors @ rotation.T
        before = [_a_from_vectors(ylm, l, vectors, weights[t]) for t, l in enumerate(ls)]
        after = [_a_from_vectors(ylm, l, rotated, weights[t]) for t, l in enumerate(ls)]
        b0, b1 = _b_half(ls, lint, before), _b_half(ls, lint, after)
        assert abs(b0) > 1e-3, (ls, lint)  # non-trivial
        assert b1 == pytest.approx(b0, rel=1e-11, abs=1e-12), (ls, lint)
        assert _b_full(ls, lint, after).real == pytest.approx(b0, rel=1e-11, abs=1e-12)
        # the individual A's do change under the rotation (for l > 0), so the test is not vacuous
        assert any(np.abs(a0 - a1).max() > 1e-3 for a0, a1, l in zip(before, after, ls) if l > 0)


# --------------------------------------------------------------------------------------------------
# Cu_fs500: every (ls, lint) of the potential; K_f order of single-element files (spec 7)
# --------------------------------------------------------------------------------------------------

def _cu_entries():
    data = yaml.safe_load(require_shared(FIXTURES / "Cu_fs500.yaml").read_text())
    entries = []
    for block in data["species"]:
        for entry in block.get("nbody", []):
            entries.append(entry)
    return entries


def test_cu_fs500_all_functions_and_timing(capsys):
    entries = _cu_entries()
    assert len(entries) == 500
    start = time.perf_counter()
    results = []
    for entry in entries:
        ls = tuple(entry["nl"])
        lint = tuple(entry.get("lint", []) or [])
        if len(ls) == 1:
            results.append(None)
            continue
        full_lint = complete_lint(ls, lint)
        assert full_lint == lint  # pacemaker writes the full lint
        results.append(generalized_cg(ls, full_lint, half=True))
    elapsed = time.perf_counter() - start
    with capsys.disabled():
        print(f"\n[coupling] Cu_fs500: {len(entries)} functions, "
              f"{len({(tuple(e['nl']), tuple(e.get('lint', []) or [])) for e in entries})} distinct (ls, lint), "
              f"generalized CG in {elapsed:.3f} s (first call, includes cache misses)")
    assert elapsed < 5.0
    # example of spec 7: nl = [1,1,2,2], lint [0,0] has K = 8, lint [2,2] has K = 19
    assert len(generalized_cg((1, 1, 2, 2), (0, 0))[1]) == 8
    assert len(generalized_cg((1, 1, 2, 2), (2, 2))[1]) == 19
    # single-element file is already in pyace's order: among functions with the same
    # (rank, species, nr, nl), the key (K_f, flattened m-vectors) is non-decreasing in file order
    groups = 0
    for prev, cur, r_prev, r_cur in zip(entries, entries[1:], results, results[1:]):
        if r_prev is None or r_cur is None:
            continue
        if (prev["type"], prev["nr"], prev["nl"]) != (cur["type"], cur["nr"], cur["nl"]):
            continue
        groups += 1
        key_prev = (len(r_prev[1]), r_prev[0].ravel().tolist())
        key_cur = (len(r_cur[1]), r_cur[0].ravel().tolist())
        assert key_prev < key_cur, (prev, cur)
    assert groups > 0


def test_returned_arrays_are_independent_copies():
    ms, c = generalized_cg((1, 1, 2), (2,))
    ms[0, 0] = 99
    c[0] = 99.0
    ms2, c2 = generalized_cg((1, 1, 2), (2,))
    assert ms2[0, 0] != 99 and c2[0] != 99.0
