"""Neighbour list against a brute-force enumeration of lattice images and against ASE's neighbor_list."""
import itertools
import time

import numba
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.neighborlist import neighbor_list

from ace_uq_calc.kernels.neighbours import (
    NeighbourList,
    _bin_layout,
    build_neighbour_list,
    minimum_pair_distance,
)

# ----------------------------------------------------------------------------------------------
# independent references
# ----------------------------------------------------------------------------------------------


def brute_force_neighbours(positions, cell, pbc, species, cutoff_matrix):
    """{(i, j, n0, n1, n2): r_ij} by explicit enumeration of every lattice shift that could matter.

    A shift n with |r_j - r_i + n @ P| < r_c needs |n @ P| < r_c + max|Q (r_j - r_i)| (Q: orthogonal
    projector onto the span of the periodic vectors P), hence |n_d| < (r_c + max|Q (r_j - r_i)|) / h_d
    with h_d the height of periodic vector d over the span of the other periodic vectors (from the
    inverse Gram matrix)."""
    positions = np.asarray(positions, dtype=float)
    cell = np.asarray(cell, dtype=float)
    species = np.asarray(species)
    periodic = np.flatnonzero(pbc)
    diff = positions[None, :, :] - positions[:, None, :]  # [i, j] = r_j - r_i
    pair_cutoff = cutoff_matrix[species[:, None], species[None, :]]
    ranges = [range(1)] * 3
    if len(periodic) and len(positions):
        lattice = cell[periodic]
        inverse_gram = np.linalg.inv(lattice @ lattice.T)
        heights = 1.0 / np.sqrt(np.diag(inverse_gram))
        projector = lattice.T @ inverse_gram @ lattice
        reach_length = cutoff_matrix.max() + np.linalg.norm(diff @ projector, axis=-1).max()
        for d, h in zip(periodic, heights):
            k = int(reach_length / h) + 1
            ranges[d] = range(-k, k + 1)
    found = {}
    for n in itertools.product(*ranges):
        v = diff + np.asarray(n, dtype=float) @ cell
        r = np.linalg.norm(v, axis=-1)
        inside = r < pair_cutoff
        if n == (0, 0, 0):
            np.fill_diagonal(inside, False)
        for i, j in zip(*np.nonzero(inside)):
            found[(int(i), int(j), *n)] = v[i, j]
    return found


def as_dict(nl: NeighbourList):
    centres = np.repeat(np.arange(len(nl.first) - 1), np.diff(nl.first))
    return {
        (int(i), int(j), *map(int, s)): v
        for i, j, s, v in zip(centres, nl.index, nl.shift, nl.vector)
    }


def check_structure(nl: NeighbourList, positions, cell, n_atoms):
    """dtypes, shapes, CSR consistency, vector = r_j + n @ cell - r_i, sorted (j, shift) per atom."""
    assert nl.first.dtype == np.int64 and nl.index.dtype == np.int64 and nl.shift.dtype == np.int64
    assert nl.vector.dtype == np.float64 and nl.distance.dtype == np.float64
    n_pairs = len(nl.index)
    assert nl.first.shape == (n_atoms + 1,) and nl.first[0] == 0 and nl.first[-1] == n_pairs
    assert np.all(np.diff(nl.first) >= 0)
    assert nl.shift.shape == (n_pairs, 3) and nl.vector.shape == (n_pairs, 3)
    assert nl.distance.shape == (n_pairs,)
    if n_pairs == 0:
        return
    centres = np.repeat(np.arange(n_atoms), np.diff(nl.first))
    expected = positions[nl.index] + nl.shift @ np.asarray(cell, dtype=float) - positions[centres]
    np.testing.assert_allclose(nl.vector, expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(nl.distance, np.linalg.norm(nl.vector, axis=1), rtol=1e-14, atol=0)
    for i in range(n_atoms):
        rows = [(int(j), *map(int, s)) for j, s in zip(nl.index[nl.first[i]:nl.first[i + 1]],
                                                          nl.shift[nl.first[i]:nl.first[i + 1]])]
        assert rows == sorted(rows) and len(set(rows)) == len(rows)


def assert_same_as_brute_force(positions, cell, pbc, species, cutoff_matrix):
    positions = np.asarray(positions, dtype=float)
    cutoff_matrix = np.asarray(cutoff_matrix, dtype=float)
    nl = build_neighbour_list(positions, cell, pbc, species, cutoff_matrix)
    check_structure(nl, positions, cell, len(positions))
    ours = as_dict(nl)
    reference = brute_force_neighbours(positions, cell, pbc, species, cutoff_matrix)
    assert ours.keys() == reference.keys()
    for key, v in reference.items():
        np.testing.assert_allclose(ours[key], v, rtol=0, atol=1e-9)
    pair_cutoff = cutoff_matrix[np.repeat(species, np.diff(nl.first)), species[nl.index]]
    assert np.all(nl.distance < pair_cutoff)
    return nl


def assert_same_as_ase(atoms, cutoff):
    nl = build_neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc,
                              np.zeros(len(atoms), dtype=np.int64), np.array([[cutoff]]))
    i, j, S, D = neighbor_list("ijSD", atoms, cutoff)
    reference = {(int(a), int(b), *map(int, s)): d for a, b, s, d in zip(i, j, S, D)}
    ours = as_dict(nl)
    assert ours.keys() == reference.keys()
    for key, v in reference.items():
        np.testing.assert_allclose(ours[key], v, rtol=0, atol=1e-9)
    return nl


def one_species(n):
    return np.zeros(n, dtype=np.int64)


# ----------------------------------------------------------------------------------------------
# periodic crystals
# ----------------------------------------------------------------------------------------------


def test_fcc_supercell_matches_ase_and_brute_force():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((3, 3, 3))
    nl = assert_same_as_ase(atoms, 7.0)
    # fcc shells below 7 A at a = 3.61: 12 + 6 + 24 + 12 + 24 + 8 + 48 = 134 neighbours
    assert np.all(np.diff(nl.first) == 134)
    assert_same_as_brute_force(atoms.positions, atoms.cell.array, atoms.pbc, one_species(len(atoms)),
                               [[7.0]])


def test_rattled_triclinic_cell():
    rng = np.random.default_rng(1)
    cell = np.array([[6.1, 0.0, 0.0], [2.3, 5.7, 0.0], [-1.4, 1.9, 6.6]]) + rng.normal(0, 0.2, (3, 3))
    fractional = rng.random((24, 3))
    positions = fractional @ cell + rng.normal(0, 0.1, (24, 3))
    nl = assert_same_as_brute_force(positions, cell, [True] * 3, one_species(24), [[5.3]])
    atoms = Atoms("Cu24", positions=positions, cell=cell, pbc=True)
    assert_same_as_ase(atoms, 5.3)
    assert len(nl.index) > 24 * 20


@pytest.mark.parametrize("cutoff", [5.0, 7.0])
def test_one_atom_small_triclinic_cell_has_self_images(cutoff):
    cell = 2.6 * np.array([[1.0, 0.0, 0.0], [0.45, 0.9, 0.0], [0.3, 0.35, 0.92]])
    positions = np.array([[0.3, -0.2, 0.1]])
    nl = assert_same_as_brute_force(positions, cell, [True] * 3, one_species(1), [[cutoff]])
    assert np.all(nl.index == 0) and not np.any(np.all(nl.shift == 0, axis=1))
    # every image n comes with -n
    shifts = {tuple(s) for s in nl.shift}
    assert shifts == {tuple(-np.array(s)) for s in shifts}
    images_expected = 4.0 / 3.0 * np.pi * cutoff**3 / abs(np.linalg.det(cell))
    assert 0.7 * images_expected < len(shifts) < 1.3 * images_expected
    assert_same_as_ase(Atoms("Cu", positions=positions, cell=cell, pbc=True), cutoff)


def test_two_atom_cell_much_shorter_than_cutoff_in_one_direction():
    cell = np.array([[1.3, 0.0, 0.0], [0.0, 9.0, 0.0], [0.4, 0.0, 8.0]])
    positions = np.array([[0.1, 1.0, 2.0], [0.7, 5.0, 6.0]])
    assert_same_as_brute_force(positions, cell, [True] * 3, one_species(2), [[6.0]])


def test_atoms_outside_the_cell_keep_their_own_shifts():
    rng = np.random.default_rng(2)
    cell = np.array([[5.0, 0.0, 0.0], [1.5, 4.8, 0.0], [0.5, -0.7, 5.5]])
    positions = rng.random((12, 3)) @ cell
    positions[:4] += np.array([3, -2, 7]) @ cell  # whole cells away
    positions[4:8] += np.array([-1.3, 0.4, 2.6]) @ cell  # fractions of cells away
    positions[8] = np.array([-1e-17, 0.3, 0.6]) @ cell  # wraps to fractional 1.0 in floating point
    nl = assert_same_as_brute_force(positions, cell, [True] * 3, one_species(12), [[4.5]])
    wrapped = Atoms("Cu12", positions=positions, cell=cell, pbc=True)
    wrapped.wrap()
    nl_wrapped = build_neighbour_list(wrapped.positions, cell, [True] * 3, one_species(12), [[4.5]])
    # same physics: the same distances per atom
    np.testing.assert_array_equal(nl.first, nl_wrapped.first)
    for i in range(12):
        ours = np.sort(nl.distance[nl.first[i]:nl.first[i + 1]])
        theirs = np.sort(nl_wrapped.distance[nl_wrapped.first[i]:nl_wrapped.first[i + 1]])
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)


# ----------------------------------------------------------------------------------------------
# mixed and no periodicity
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("third_vector", [[0.0, 0.0, 0.0], [3.0, -2.0, 0.5]])
def test_slab(third_vector):
    rng = np.random.default_rng(3)
    cell = np.array([[4.2, 0.0, 0.0], [1.1, 3.9, 0.0], third_vector])
    positions = rng.random((16, 3)) * [4.0, 4.0, 9.0] + [0.0, 0.0, -3.0]
    nl = assert_same_as_brute_force(positions, cell, [True, True, False], one_species(16), [[5.0]])
    assert np.all(nl.shift[:, 2] == 0)
    if np.any(cell[2]):
        atoms = Atoms("Cu16", positions=positions, cell=cell, pbc=[True, True, False])
        assert_same_as_ase(atoms, 5.0)


@pytest.mark.parametrize("pbc", [[True, False, False], [False, True, False], [False, False, True]])
def test_wire(pbc):
    rng = np.random.default_rng(4)
    direction = int(np.argmax(pbc))
    cell = np.zeros((3, 3))
    cell[direction] = [2.9, 0.4, -0.3]
    positions = rng.normal(0.0, 2.0, (10, 3))
    nl = assert_same_as_brute_force(positions, cell, pbc, one_species(10), [[6.0]])
    other = [d for d in range(3) if d != direction]
    assert np.all(nl.shift[:, other] == 0)


def test_free_cluster_with_zero_cell():
    rng = np.random.default_rng(5)
    positions = rng.normal(0.0, 3.0, (30, 3))
    nl = assert_same_as_brute_force(positions, np.zeros((3, 3)), [False] * 3, one_species(30), [[4.0]])
    assert np.all(nl.shift == 0)
    # the cell is ignored without periodicity
    other = build_neighbour_list(positions, np.eye(3) * 1.0, [False] * 3, one_species(30), [[4.0]])
    assert as_dict(other).keys() == as_dict(nl).keys()


def test_two_species_with_pair_specific_and_asymmetric_cutoffs():
    rng = np.random.default_rng(6)
    cell = np.array([[7.0, 0.0, 0.0], [0.5, 6.5, 0.0], [0.2, 0.3, 7.5]])
    positions = rng.random((20, 3)) @ cell
    species = rng.integers(0, 2, 20)
    cutoffs = np.array([[5.0, 3.5], [4.5, 2.5]])  # asymmetric: A->B 3.5, B->A 4.5
    nl = assert_same_as_brute_force(positions, cell, [True] * 3, species, cutoffs)
    centre_species = np.repeat(species, np.diff(nl.first))
    neighbour_species = species[nl.index]
    a_to_b = nl.distance[(centre_species == 0) & (neighbour_species == 1)]
    b_to_a = nl.distance[(centre_species == 1) & (neighbour_species == 0)]
    assert a_to_b.max() < 3.5 < b_to_a.max()
    # a species absent from the structure does not change anything
    cutoffs3 = np.array([[5.0, 3.5, 9.0], [4.5, 2.5, 9.0], [9.0, 9.0, 9.0]])
    nl3 = build_neighbour_list(positions, cell, [True] * 3, species, cutoffs3)
    assert as_dict(nl3).keys() == as_dict(nl).keys()


@pytest.mark.parametrize("seed", range(6))
def test_random_geometries(seed):
    rng = np.random.default_rng(100 + seed)
    n_atoms = int(rng.integers(1, 14))
    pbc = rng.random(3) < 0.6
    cell = np.diag(rng.uniform(2.0, 7.0, 3)) + rng.normal(0.0, 0.8, (3, 3))
    cell[~pbc] = rng.choice([0.0, 1.0]) * rng.normal(0.0, 3.0, (int((~pbc).sum()), 3))
    positions = rng.uniform(-1.0, 2.0, (n_atoms, 3)) @ np.where(pbc[:, None], cell, 5.0 * np.eye(3))
    species = rng.integers(0, 2, n_atoms)
    cutoffs = rng.uniform(2.0, 6.0, (2, 2))
    assert_same_as_brute_force(positions, cell, pbc, species, cutoffs)


# ----------------------------------------------------------------------------------------------
# edge cases
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pbc", [[True] * 3, [False] * 3])
def test_no_atoms(pbc):
    nl = build_neighbour_list(np.zeros((0, 3)), np.eye(3) * 3.0, pbc, np.zeros(0, dtype=np.int64),
                              [[5.0]])
    check_structure(nl, np.zeros((0, 3)), np.eye(3), 0)
    assert list(nl.first) == [0]
    assert minimum_pair_distance(nl) == (np.inf, -1, -1)


def test_one_atom():
    free = build_neighbour_list([[1.0, 2.0, 3.0]], np.zeros((3, 3)), [False] * 3, [0], [[5.0]])
    assert list(free.first) == [0, 0]
    periodic = build_neighbour_list([[1.0, 2.0, 3.0]], np.eye(3) * 4.0, [True] * 3, [0], [[4.5]])
    assert list(periodic.first) == [0, 6]  # the six face neighbours of a simple cubic lattice
    np.testing.assert_allclose(np.sort(periodic.distance), 4.0)


def test_zero_cutoff_gives_empty_list():
    nl = build_neighbour_list(np.random.default_rng(7).random((5, 3)), np.eye(3) * 2.0, [True] * 3,
                              one_species(5), [[0.0]])
    assert list(nl.first) == [0] * 6 and len(nl.index) == 0


def test_coincident_atoms_reported_at_distance_zero():
    positions = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.5, 0.0, 0.0]])
    nl = build_neighbour_list(positions, np.zeros((3, 3)), [False] * 3, one_species(3), [[3.0]])
    assert minimum_pair_distance(nl)[0] == 0.0
    assert minimum_pair_distance(nl)[1:] in [(0, 1), (1, 0)]


def test_minimum_pair_distance():
    positions = np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [2.0005, 0.0, 0.0]])
    nl = build_neighbour_list(positions, np.zeros((3, 3)), [False] * 3, one_species(4), [[5.0]])
    distance, i, j = minimum_pair_distance(nl)
    assert distance == pytest.approx(0.0005, abs=1e-12)
    assert {i, j} == {1, 3}
    # a self-image can be the closest pair
    nl = build_neighbour_list([[0.0, 0.0, 0.0], [0.45, 0.45, 20.0]], np.diag([0.9, 0.9, 0.0]),
                              [True, True, False], one_species(2), [[1.0]])
    distance, i, j = minimum_pair_distance(nl)
    assert distance == pytest.approx(0.9) and i == j


def test_far_flung_atom_is_cheap_and_correct():
    rng = np.random.default_rng(8)
    positions = np.vstack([rng.normal(0.0, 3.0, (60, 3)), [[1e4, -2e3, 5e2]], [[1e8, 0.0, 3.0]]])
    species = one_species(len(positions))
    start = time.perf_counter()
    nl = assert_same_as_brute_force(positions, np.zeros((3, 3)), [False] * 3, species, [[4.0]])
    assert time.perf_counter() - start < 2.0
    assert nl.first[-1] - nl.first[-3] == 0  # the two lone atoms have no neighbours
    layout = _bin_layout(positions, np.zeros((3, 3)), np.zeros(3, dtype=bool), 4.0)
    assert layout.n_bins <= 4 * len(positions) + 1000
    # also in a slab: far along the non-periodic direction
    positions = np.vstack([rng.normal(0.0, 3.0, (60, 3)), [[1.0, 2.0, 1e4]], [[3.0, 0.0, -1e7]]])
    cell = np.array([[8.0, 0.0, 0.0], [0.0, 8.0, 0.0], [0.0, 0.0, 0.0]])
    layout = _bin_layout(positions, cell, np.array([True, True, False]), 4.0)
    assert layout.n_bins <= 4 * len(positions) + 1000
    assert_same_as_brute_force(positions, cell, [True, True, False], species, [[4.0]])


def test_independent_of_thread_count():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.05, seed=9)
    args = (atoms.positions, atoms.cell.array, atoms.pbc, one_species(len(atoms)), [[6.0]])
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        single = build_neighbour_list(*args)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        multi = build_neighbour_list(*args)
    finally:
        numba.set_num_threads(threads)
    for a, b in zip(single, multi):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------

GOOD = dict(positions=np.zeros((2, 3)) + [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], cell=np.eye(3) * 4.0,
            pbc=np.array([True, True, True]), species=np.zeros(2, dtype=np.int64),
            cutoff_matrix=np.array([[3.0]]))


def call_with(**changes):
    return build_neighbour_list(**{**GOOD, **changes})


@pytest.mark.parametrize("changes, message", [
    (dict(positions=np.array([[0.0, 0.0, 0.0], [np.nan, 1.0, 1.0]])), "NaN"),
    (dict(positions=np.array([[0.0, 0.0, 0.0], [np.inf, 1.0, 1.0]])), "NaN"),
    (dict(cell=np.diag([4.0, np.nan, 4.0])), "NaN"),
    (dict(cell=np.diag([4.0, 0.0, 4.0])), "zero-length"),
    (dict(cell=np.array([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [4.0, 4.0, 0.0]])), "linearly dependent"),
    (dict(cell=np.array([[4.0, 0.0, 0.0], [8.0, 0.0, 0.0], [0.0, 0.0, 0.0]]),
          pbc=np.array([True, True, False])), "parallel"),
    (dict(cell=np.diag([4.0, 4.0, 0.0])), "zero-length"),
    (dict(positions=np.zeros((2, 2))), "shape"),
    (dict(cell=np.eye(2)), "shape"),
    (dict(pbc=np.array([True, True])), "shape"),
    (dict(species=np.zeros(3, dtype=np.int64)), "shape"),
    (dict(species=np.array([0, 1])), "species"),
    (dict(species=np.array([0, -1])), "species"),
    (dict(cutoff_matrix=np.array([[-1.0]])), "negative"),
    (dict(cutoff_matrix=np.array([[3.0, 2.0]])), "square"),
    (dict(cutoff_matrix=np.array([[np.nan]])), "NaN"),
    (dict(cell=np.diag([4.0, 4.0, 1e-9])), "too long"),
])
def test_invalid_input_raises(changes, message):
    with pytest.raises(ValueError, match=message):
        call_with(**changes)


def test_degenerate_vectors_along_non_periodic_directions_are_fine():
    nl = call_with(cell=np.array([[4.0, 0.0, 0.0], [4.0, 0.0, 0.0], [np.nan, 0.0, 0.0]]),
                   pbc=np.array([True, False, False]))
    assert len(nl.index) > 0
