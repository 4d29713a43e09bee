"""Property-based fuzzing (hypothesis) of the calculator with the AlNi_fs potential and its active set.

Random cells (orthorhombic to strongly triclinic, down to ~1.5 A thick so that atoms see many of their
own periodic images), random positions, species and pbc combinations, with no pair (periodic images
included) closer than 0.5 A. Expected properties come from physics and from numpy, not from the code:

* all outputs finite;
* the forces sum to zero (translation invariance; exact for a free cluster, and for periodic cells too);
* energy unchanged by rotation (of positions and cell), translation and permutation of the atoms, with
  forces rotating and permuting along;
* gamma = max_j |(x @ ASI)_j| with ASI read by np.load and x from
  ``ace_uq_calc.uncertainty.projections.structure_projections`` (tolerance of pacemaker-format.md 10.5).
"""
import itertools

import numpy as np
import pytest
from ase import Atoms
from conftest import fixture_file
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ace_uq_calc import ACECalculator, ActiveSet
from ace_uq_calc.model.basis import load_basis
from ace_uq_calc.uncertainty.projections import structure_projections

MIN_DISTANCE = 0.5          # Angstrom, between any two atoms or images
MIN_HEIGHT = 1.5            # Angstrom, thinnest allowed periodic cell height

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.filter_too_much])

_CACHE = {}


def basis():
    if "basis" not in _CACHE:
        _CACHE["basis"] = load_basis(fixture_file("AlNi_fs.yaml"))
    return _CACHE["basis"]


def asi_path():
    return fixture_file("AlNi_fs.asi")


def calculator():
    """A fresh calculator (no cached results) on the shared basis and active set."""
    if "active_set" not in _CACHE:
        _CACHE["active_set"] = ActiveSet.load(asi_path(), basis().nfunc)
    return ACECalculator(basis(), active_set=_CACHE["active_set"])


def inverse_active_sets():
    if "asi" not in _CACHE:
        with np.load(asi_path(), allow_pickle=False) as archive:
            _CACHE["asi"] = {el: archive[el] for el in archive.files}
    return _CACHE["asi"]


def minimum_distance(positions, cell, pbc):
    """Smallest distance between two atoms or an atom and any periodic image (brute force, numpy).

    With every periodic height >= MIN_HEIGHT > MIN_DISTANCE, a pair closer than MIN_DISTANCE differs by
    less than one cell in every periodic fractional coordinate, so shifts in -2..2 cover it."""
    ranges = [range(-2, 3) if p else range(1) for p in pbc]
    shifts = np.array(list(itertools.product(*ranges)), dtype=float) @ cell
    best = np.inf
    for shift in shifts:
        d = positions[None, :, :] + shift - positions[:, None, :]
        r = np.linalg.norm(d, axis=2)
        if not shift.any():
            r[np.diag_indices(len(positions))] = np.inf
        best = min(best, r.min())
    return best


@st.composite
def structures(draw, max_atoms=6):
    # lower-triangular rows a, b, c: any cell up to rotation, from orthorhombic to strongly sheared
    diagonal = [draw(st.floats(1.8, 7.0)) for _ in range(3)]
    shear = [draw(st.floats(-3.0, 3.0)) for _ in range(3)]
    cell = np.array([[diagonal[0], 0.0, 0.0], [shear[0], diagonal[1], 0.0], [shear[1], shear[2], diagonal[2]]])
    volume = abs(np.linalg.det(cell))
    heights = [volume / np.linalg.norm(np.cross(cell[(d + 1) % 3], cell[(d + 2) % 3])) for d in range(3)]
    pbc = tuple(draw(st.booleans()) for _ in range(3))
    assume(all(h >= MIN_HEIGHT for h, p in zip(heights, pbc) if p))
    n = draw(st.integers(1, max_atoms))
    fractional = np.array([[draw(st.floats(0.0, 1.0, exclude_max=True)) for _ in range(3)] for _ in range(n)])
    positions = fractional @ cell
    assume(minimum_distance(positions, cell, pbc) >= MIN_DISTANCE)
    symbols = [draw(st.sampled_from(["Al", "Ni"])) for _ in range(n)]
    return Atoms(symbols, positions=positions, cell=cell, pbc=pbc)


@st.composite
def rotations(draw):
    q = np.array([draw(st.floats(-1.0, 1.0)) for _ in range(4)])
    norm = np.linalg.norm(q)
    assume(norm > 0.1)
    w, x, y, z = q / norm
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def results(atoms):
    atoms = atoms.copy()
    atoms.calc = calculator()
    energy = atoms.get_potential_energy()
    return energy, atoms.get_forces(), atoms.calc.results


def scale_of(forces, energy):
    return 1e-9 * (1.0 + np.abs(forces).max(initial=0.0) + abs(energy))


@FUZZ
@given(structures())
def test_outputs_finite_and_forces_sum_to_zero(atoms):
    energy, forces, res = results(atoms)
    assert np.isfinite(energy)
    for key in ("forces", "energies", "gamma"):
        assert np.all(np.isfinite(res[key])), key
    if atoms.cell.rank == 3 and atoms.pbc.all():
        assert np.all(np.isfinite(res["stress"]))
    assert np.sum(res["energies"]) == pytest.approx(energy, rel=1e-12, abs=1e-12)
    assert np.allclose(forces.sum(axis=0), 0.0, atol=scale_of(forces, energy) * len(atoms))


@FUZZ
@given(structures(max_atoms=5).map(lambda a: (a.set_pbc(False), a)[1]))
def test_free_cluster_forces_and_torque_vanish(atoms):
    energy, forces, _ = results(atoms)
    tolerance = scale_of(forces, energy) * len(atoms)
    assert np.allclose(forces.sum(axis=0), 0.0, atol=tolerance)
    torque = np.cross(atoms.positions - atoms.positions.mean(axis=0), forces).sum(axis=0)
    assert np.allclose(torque, 0.0, atol=tolerance * 10 * (1 + np.abs(atoms.positions).max()))


@FUZZ
@given(structures(), rotations(), st.lists(st.floats(-20.0, 20.0), min_size=3, max_size=3), st.randoms())
def test_energy_invariant_under_rotation_translation_permutation(atoms, rotation, translation, random):
    energy, forces, res = results(atoms)
    tolerance = scale_of(forces, energy)

    rotated = atoms.copy()
    rotated.positions = atoms.positions @ rotation.T
    rotated.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
    e_rot, f_rot, r_rot = results(rotated)
    assert e_rot == pytest.approx(energy, rel=1e-10, abs=tolerance)
    assert np.allclose(f_rot, forces @ rotation.T, rtol=1e-8, atol=tolerance)
    assert np.allclose(r_rot["energies"], res["energies"], rtol=1e-10, atol=tolerance)

    moved = atoms.copy()
    moved.positions = atoms.positions + np.array(translation)
    e_mov, f_mov, _ = results(moved)
    assert e_mov == pytest.approx(energy, rel=1e-10, abs=tolerance)
    assert np.allclose(f_mov, forces, rtol=1e-8, atol=tolerance)

    order = list(range(len(atoms)))
    random.shuffle(order)
    permuted = atoms[order]
    e_per, f_per, r_per = results(permuted)
    assert e_per == pytest.approx(energy, rel=1e-10, abs=tolerance)
    assert np.allclose(f_per, forces[order], rtol=1e-8, atol=tolerance)
    assert np.allclose(r_per["energies"], res["energies"][order], rtol=1e-10, atol=tolerance)


@FUZZ
@given(structures())
def test_gamma_equals_independent_numpy_evaluation(atoms):
    _, _, res = results(atoms)
    species, x = structure_projections(basis(), atoms)
    inverse = inverse_active_sets()
    for i, s in enumerate(species):
        asi = inverse[basis().elements[s]]
        coefficients = x[i, :asi.shape[0]] @ asi
        j = int(np.argmax(np.abs(coefficients)))
        gamma = abs(coefficients[j])
        kappa = np.sum(np.abs(x[i, :asi.shape[0]] * asi[:, j])) / gamma if gamma > 0 else 0.0
        assert abs(res["gamma"][i] - gamma) <= 1e-12 * kappa * gamma + 1e-12, (i, res["gamma"][i], gamma, kappa)
    assert res["max_gamma"] == pytest.approx(max(res["gamma"]), rel=0, abs=0)
