"""Physics checks of the ASE calculator that need no reference numbers.

Every expected value here comes from physics, never from the code's own recorded output:

* forces = -dE/dr and stress = (1/V) dE/d(epsilon) by finite differences of the energy;
* invariance of the energy under rotation, translation and permutation of like atoms (forces rotate
  as vectors, per-atom energies permute with the atoms);
* a small periodic cell and its 3x3x3 supercell describe the same crystal;
* Newton's third law (forces of an isolated cluster sum to zero, no net torque);
* energy conservation of NVE molecular dynamics;
* ASE's change detection (an unchanged structure is not re-evaluated, a changed one is).

Potentials: ../shared/fixtures/pacemaker/{Cu_fs500,AlNi_fs,W_defect}.yaml (Cu_fs500 and AlNi_fs have
random coefficients; AlNi_fs has core repulsion with inner cut-offs; W_defect is a real W potential
whose ZBL repulsion is switched on per atom for nearest neighbours in [r_in - 0.1, r_in]).
"""
import numpy as np
import pytest
from ase import Atoms
from ase.build import bcc100, bulk, fcc100, fcc111
from ase.calculators.calculator import PropertyNotImplementedError
from conftest import FIXTURES, require_shared

POTENTIALS = ["Cu_fs500", "AlNi_fs", "W_defect"]

# W_defect's per-atom ACE/ZBL switch: nearest neighbour in [R_IN - DELTA_IN, R_IN]
W_R_IN = 2.0531
W_DELTA_IN = 0.1
# AlNi_fs inner transition of the Al-Ni bond: [r_in - delta_in, r_in] = [1.5, 1.9]
ALNI_TRANSITION = (1.5, 1.9)

_BASES = {}


def basis(name):
    """The loaded basis of a shared potential (loaded once per session)."""
    path = require_shared(FIXTURES / f"{name}.yaml")
    if name not in _BASES:
        from ace_uq_calc.model.basis import load_basis

        _BASES[name] = load_basis(path)
    return _BASES[name]


def attach(atoms, name):
    from ace_uq_calc import ACECalculator

    atoms.calc = ACECalculator(basis(name))
    return atoms


# --------------------------------------------------------------------------------------- geometry

def pair_distance(atoms, i, j):
    return float(atoms.get_distance(i, j, mic=bool(atoms.pbc.any())))


def all_distances(atoms):
    """(N, N) minimum-image distances (for the small cells used here, larger than half the box is fine:
    these are only used to check which atom is the nearest neighbour)."""
    return atoms.get_all_distances(mic=bool(atoms.pbc.any()))


def move_pair_to(atoms, i, j, d):
    """Move atoms i and j symmetrically along their (minimum-image) bond until they are d apart."""
    v = atoms.get_distance(i, j, mic=bool(atoms.pbc.any()), vector=True)
    r = np.linalg.norm(v)
    shift = 0.5 * (r - d) * v / r
    pos = atoms.positions.copy()
    pos[i] += shift
    pos[j] -= shift
    atoms.positions = pos
    return atoms


def nearest_neighbour(atoms, i):
    d = all_distances(atoms)[i].copy()
    d[i] = np.inf
    order = np.argsort(d)
    return int(order[0]), float(d[order[0]]), float(d[order[1]])


def strain_cell(atoms, deformation):
    """Apply F = I + deformation to cell and positions (row vectors: r -> r (I + e)^T)."""
    f = np.eye(3) + np.asarray(deformation)
    out = atoms.copy()
    out.set_cell(atoms.cell.array @ f.T, scale_atoms=False)
    out.positions = atoms.positions @ f.T
    return out


def random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q @ np.diag(np.sign(np.diag(r)))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


GENERAL_STRAIN = np.array([[0.021, 0.013, -0.017],
                           [0.004, -0.012, 0.019],
                           [-0.008, 0.011, 0.027]])


# ------------------------------------------------------------------------------------- structures

def cu_rattled_fcc():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    atoms.rattle(0.06, seed=11)
    return attach(atoms, "Cu_fs500")


def alni_rattled_fcc():
    """Random Al/Ni fcc 2x2x2 with one Al-Ni pair inside the inner transition [1.5, 1.9] A."""
    rng = np.random.default_rng(7)
    atoms = bulk("Al", "fcc", a=3.80, cubic=True) * (2, 2, 2)
    symbols = np.array(["Al", "Ni"])[rng.permutation(np.arange(32) % 2)]
    atoms.set_chemical_symbols(list(symbols))
    atoms.rattle(0.05, seed=12)
    i = int(np.nonzero(symbols == "Al")[0][0])
    d = all_distances(atoms)[i]
    ni = np.nonzero(symbols == "Ni")[0]
    j = int(ni[np.argmin(d[ni])])
    move_pair_to(atoms, i, j, 1.72)
    atoms.info["close_pair"] = (i, j)
    return attach(atoms, "AlNi_fs")


def w_bcc_zbl_pair():
    """Rattled bcc W 2x2x2 with one pair at ~2.0 A, i.e. inside the per-atom ACE/ZBL switch."""
    atoms = bulk("W", "bcc", a=3.17, cubic=True) * (2, 2, 2)
    atoms.rattle(0.03, seed=13)
    d = all_distances(atoms)[0].copy()
    d[0] = np.inf
    j = int(np.argmin(d))
    move_pair_to(atoms, 0, j, 2.003)
    atoms.info["close_pair"] = (0, j)
    return attach(atoms, "W_defect")


def w_cluster():
    """Free bcc W cluster (centre + 8 first + 6 second neighbours), rattled, one pair in the ZBL switch."""
    a = 3.17
    pos = [[0, 0, 0]]
    pos += [[sx * a / 2, sy * a / 2, sz * a / 2] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]
    pos += [[s * a, 0, 0] for s in (-1, 1)] + [[0, s * a, 0] for s in (-1, 1)] + [[0, 0, s * a] for s in (-1, 1)]
    atoms = Atoms("W15", positions=pos)
    atoms.rattle(0.05, seed=14)
    move_pair_to(atoms, 0, 8, 2.02)   # the centre and its (+a/2, +a/2, +a/2) corner
    atoms.info["close_pair"] = (0, 8)
    return attach(atoms, "W_defect")


def slab(name):
    if name == "Cu_fs500":
        atoms = fcc111("Cu", size=(2, 2, 3), a=3.61, vacuum=5.0, periodic=False)
    elif name == "AlNi_fs":
        atoms = fcc100("Al", size=(2, 2, 4), a=3.70, vacuum=5.0)
        rng = np.random.default_rng(21)
        atoms.set_chemical_symbols(list(np.array(["Al", "Ni"])[rng.permutation(np.arange(len(atoms)) % 2)]))
    else:
        atoms = bcc100("W", size=(2, 2, 4), a=3.17, vacuum=5.0)
    atoms.pbc = (True, True, False)
    atoms.rattle(0.04, seed=22)
    return attach(atoms, name)


def triclinic_cell(name):
    """Rattled, generally strained periodic cell (all six stress components non-zero and distinct)."""
    if name == "Cu_fs500":
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    elif name == "AlNi_fs":
        atoms = bulk("Al", "fcc", a=3.72, cubic=True)
        atoms.set_chemical_symbols(["Ni", "Al", "Al", "Ni"])
    else:
        atoms = bulk("W", "bcc", a=3.17, cubic=True) * (2, 1, 1)
    atoms.rattle(0.05, seed=31)
    atoms = strain_cell(atoms, GENERAL_STRAIN)
    return attach(atoms, name)


def free_cluster(name):
    """A free, rattled cluster of the potential's species (zero cell, pbc False)."""
    if name == "W_defect":
        return w_cluster()
    sym = "Cu" if name == "Cu_fs500" else "Al"
    atoms = bulk(sym, "fcc", a=3.70, cubic=True) * (2, 2, 2)
    atoms = Atoms(atoms.get_chemical_symbols()[:13], positions=atoms.positions[:13])
    if name == "AlNi_fs":
        atoms.set_chemical_symbols(["Al", "Ni"] * 6 + ["Ni"])
    atoms.rattle(0.06, seed=41)
    atoms.center()
    atoms.set_cell(np.zeros((3, 3)))
    atoms.pbc = False
    return attach(atoms, name)


# ---------------------------------------------------------------------------------- finite differences

def _stencil(energy_at, h, points):
    if points == 2:
        return (energy_at(h) - energy_at(-h)) / (2 * h)
    if points == 4:
        return (-energy_at(2 * h) + 8 * energy_at(h) - 8 * energy_at(-h) + energy_at(-2 * h)) / (12 * h)
    raise ValueError(points)


def fd_forces(atoms, h=1e-5, points=2):
    work = atoms.copy()
    work.calc = atoms.calc.__class__(atoms.calc.basis)
    pos0 = atoms.positions.copy()
    out = np.zeros_like(pos0)
    for i in range(len(atoms)):
        for a in range(3):
            def energy_at(delta):
                p = pos0.copy()
                p[i, a] += delta
                work.positions = p
                return work.get_potential_energy()

            out[i, a] = -_stencil(energy_at, h, points)
    return out


def fd_stress_tensor(atoms, h=1e-5, points=2):
    """sigma_ab = (1/V) dE/d(eps_ab) with symmetric strain eps_ab = eps_ba (each off-diagonal entry e/2)."""
    work = atoms.copy()
    work.calc = atoms.calc.__class__(atoms.calc.basis)
    volume = atoms.get_volume()
    sigma = np.zeros((3, 3))
    for a in range(3):
        for b in range(a, 3):
            def energy_at(e):
                eps = np.zeros((3, 3))
                eps[a, b] += 0.5 * e
                eps[b, a] += 0.5 * e
                strained = strain_cell(atoms, eps)
                work.set_cell(strained.cell, scale_atoms=False)
                work.positions = strained.positions
                return work.get_potential_energy()

            sigma[a, b] = sigma[b, a] = _stencil(energy_at, h, points) / volume
    return sigma


def assert_forces_match_fd(atoms, h, points, rtol=1e-6):
    """|F - F_fd| <= rtol * max|F| overall, and also per atom <= rtol * max(|F_i|, 1 eV/A), so that the
    large ZBL forces of a close pair cannot hide an error on the other atoms."""
    forces = atoms.get_forces()
    fd = fd_forces(atoms, h=h, points=points)
    scale = np.abs(forces).max()
    assert scale > 1e-3, "a degenerate structure: the forces vanish"
    err = np.abs(forces - fd)
    worst = np.unravel_index(np.argmax(err), err.shape)
    msg = (f"|F - F_fd| = {err.max():.3e} at atom {worst[0]} component {'xyz'[worst[1]]} "
           f"(F = {forces[worst]:.6e}, F_fd = {fd[worst]:.6e}); max |F| = {scale:.3e}")
    assert err.max() <= rtol * scale, msg
    local = rtol * np.maximum(np.linalg.norm(forces, axis=1), 1.0)
    bad = np.nonzero(err.max(axis=1) > local)[0]
    assert len(bad) == 0, f"atoms {bad.tolist()} exceed rtol * max(|F_i|, 1): " + msg


# ------------------------------------------------------------------------------------ 1. forces = -dE/dr

def test_forces_fd_cu_rattled_fcc():
    atoms = cu_rattled_fcc()
    assert_forces_match_fd(atoms, h=1e-5, points=2)


def test_forces_fd_alni_random_fcc_with_inner_transition_pair():
    atoms = alni_rattled_fcc()
    i, j = atoms.info["close_pair"]
    assert {atoms[i].symbol, atoms[j].symbol} == {"Al", "Ni"}
    d = pair_distance(atoms, i, j)
    assert ALNI_TRANSITION[0] < d < ALNI_TRANSITION[1], d
    assert_forces_match_fd(atoms, h=1e-5, points=2)


def test_forces_fd_w_bcc_pair_in_zbl_switch():
    atoms = w_bcc_zbl_pair()
    i, j = atoms.info["close_pair"]
    for a, b in ((i, j), (j, i)):
        nn, d1, d2 = nearest_neighbour(atoms, a)
        assert nn == b and W_R_IN - W_DELTA_IN < d1 < W_R_IN, (a, nn, d1)
        assert d2 > W_R_IN + 0.05, "the selected neighbour must be unique (else the energy has a kink)"
    assert_forces_match_fd(atoms, h=1e-4, points=4)


def test_forces_fd_w_free_cluster():
    atoms = w_cluster()
    i, j = atoms.info["close_pair"]
    for a, b in ((i, j), (j, i)):
        nn, d1, d2 = nearest_neighbour(atoms, a)
        assert nn == b and W_R_IN - W_DELTA_IN < d1 < W_R_IN, (a, nn, d1)
        assert d2 > W_R_IN + 0.05
    assert_forces_match_fd(atoms, h=1e-4, points=4)


@pytest.mark.parametrize("name", POTENTIALS)
def test_forces_fd_slab(name):
    atoms = slab(name)
    assert list(atoms.pbc) == [True, True, False]
    assert_forces_match_fd(atoms, h=1e-5, points=2)


# --------------------------------------------------------------------------- 2. stress = (1/V) dE/d(eps)

VOIGT = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]   # ASE: xx yy zz yz xz xy


def assert_stress_matches_fd(atoms, h, points, rtol=1e-6):
    stress = atoms.get_stress()
    fd = fd_stress_tensor(atoms, h=h, points=points)
    expected = np.array([fd[a, b] for a, b in VOIGT])
    scale = np.abs(expected).max()
    assert scale > 1e-4, "a degenerate structure: the stress vanishes"
    tol = rtol * scale
    # the structure must be able to tell the Voigt components apart, or the order check proves nothing
    gaps = np.abs(expected[:, None] - expected[None, :])[np.triu_indices(6, 1)]
    assert gaps.min() > 100 * tol, f"FD stress components not distinct enough: {expected}"
    err = np.abs(stress - expected)
    labels = ["xx", "yy", "zz", "yz", "xz", "xy"]
    assert err.max() <= tol, (
        f"stress {labels[int(np.argmax(err))]}: |sigma - sigma_fd| = {err.max():.3e} "
        f"(sigma = {stress}, sigma_fd = {expected}), tol {tol:.3e}"
    )
    np.testing.assert_allclose(atoms.get_stress(voigt=False), fd, rtol=0, atol=tol)


@pytest.mark.parametrize("name", POTENTIALS)
def test_stress_fd_triclinic_strained_cell(name):
    atoms = triclinic_cell(name)
    angles = atoms.cell.angles()
    assert np.all(np.abs(angles - 90.0) > 0.5), f"cell is not triclinic: angles {angles}"
    assert_stress_matches_fd(atoms, h=1e-5, points=2)


def test_stress_fd_w_pair_in_zbl_switch():
    """The virial of the per-atom ACE/ZBL switch (W bcc with a 2.0 A pair)."""
    atoms = w_bcc_zbl_pair()
    atoms = strain_cell(atoms, 0.5 * GENERAL_STRAIN)
    attach(atoms, "W_defect")
    i, j = atoms.info["close_pair"]
    assert W_R_IN - W_DELTA_IN < pair_distance(atoms, i, j) < W_R_IN
    assert_stress_matches_fd(atoms, h=1e-4, points=4)


# ----------------------------------------------------------------------------------------- 3. invariances

def energy_scale(atoms):
    return max(abs(atoms.get_potential_energy()), np.abs(atoms.get_potential_energies()).sum(), 1e-30)


def invariance_structure(name, kind):
    return free_cluster(name) if kind == "cluster" else triclinic_cell(name)


INVARIANCE_CASES = [(n, k) for n in POTENTIALS for k in ("cluster", "periodic")]


def _reference(atoms):
    return (atoms.get_potential_energy(), atoms.get_potential_energies(), atoms.get_forces(),
            atoms.get_stress() if atoms.pbc.all() else None)


@pytest.mark.parametrize("name,kind", INVARIANCE_CASES)
def test_rotation_invariance(name, kind):
    atoms = invariance_structure(name, kind)
    e, ei, f, s = _reference(atoms)
    rot = random_rotation(np.random.default_rng(51))
    turned = atoms.copy()
    turned.positions = atoms.positions @ rot.T
    if kind == "periodic":
        turned.set_cell(atoms.cell.array @ rot.T, scale_atoms=False)
    attach(turned, name)
    escale = energy_scale(atoms)
    assert abs(turned.get_potential_energy() - e) <= 1e-10 * escale
    np.testing.assert_allclose(turned.get_potential_energies(), ei, rtol=0, atol=1e-10 * escale)
    fscale = np.abs(f).max()
    np.testing.assert_allclose(turned.get_forces(), f @ rot.T, rtol=0, atol=1e-10 * fscale)
    if s is not None:
        sigma = atoms.get_stress(voigt=False)
        np.testing.assert_allclose(turned.get_stress(voigt=False), rot @ sigma @ rot.T,
                                   rtol=0, atol=1e-10 * np.abs(sigma).max())


@pytest.mark.parametrize("name,kind", INVARIANCE_CASES)
def test_translation_invariance(name, kind):
    atoms = invariance_structure(name, kind)
    e, ei, f, s = _reference(atoms)
    moved = atoms.copy()
    moved.positions = atoms.positions + np.array([13.71, -5.29, 8.93])
    if kind == "periodic":
        moved.wrap()
        # and one atom taken to another periodic image
        moved.positions[1] += atoms.cell.array[0] - 2 * atoms.cell.array[2] + atoms.cell.array[1]
    attach(moved, name)
    escale = energy_scale(atoms)
    assert abs(moved.get_potential_energy() - e) <= 1e-10 * escale
    np.testing.assert_allclose(moved.get_potential_energies(), ei, rtol=0, atol=1e-10 * escale)
    np.testing.assert_allclose(moved.get_forces(), f, rtol=0, atol=1e-10 * np.abs(f).max())
    if s is not None:
        np.testing.assert_allclose(moved.get_stress(), s, rtol=0, atol=1e-10 * np.abs(s).max())


@pytest.mark.parametrize("name,kind", INVARIANCE_CASES)
def test_permutation_invariance(name, kind):
    atoms = invariance_structure(name, kind)
    e, ei, f, s = _reference(atoms)
    rng = np.random.default_rng(61)
    numbers = atoms.numbers
    perm = np.arange(len(atoms))
    for z in np.unique(numbers):     # shuffle only among atoms of the same species
        idx = np.nonzero(numbers == z)[0]
        shuffled_idx = rng.permutation(idx)
        if len(idx) > 1 and np.array_equal(shuffled_idx, idx):
            shuffled_idx = np.roll(idx, 1)
        perm[idx] = shuffled_idx
    assert not np.array_equal(perm, np.arange(len(atoms)))
    shuffled = atoms[perm]
    assert np.array_equal(shuffled.numbers, numbers)
    attach(shuffled, name)
    escale = energy_scale(atoms)
    assert abs(shuffled.get_potential_energy() - e) <= 1e-10 * escale
    np.testing.assert_allclose(shuffled.get_potential_energies(), ei[perm], rtol=0, atol=1e-10 * escale)
    np.testing.assert_allclose(shuffled.get_forces(), f[perm], rtol=0, atol=1e-10 * np.abs(f).max())
    if s is not None:
        np.testing.assert_allclose(shuffled.get_stress(), s, rtol=0, atol=1e-10 * np.abs(s).max())


@pytest.mark.parametrize("kind", ["cluster", "periodic"])
def test_permutation_invariance_mixed_species(kind):
    """Any reordering of the atoms (species travel with them) in the two-species potential."""
    atoms = invariance_structure("AlNi_fs", kind)
    e, ei, f, s = _reference(atoms)
    perm = np.random.default_rng(62).permutation(len(atoms))
    shuffled = attach(atoms[perm], "AlNi_fs")
    assert not np.array_equal(shuffled.numbers, atoms.numbers)
    escale = energy_scale(atoms)
    assert abs(shuffled.get_potential_energy() - e) <= 1e-10 * escale
    np.testing.assert_allclose(shuffled.get_potential_energies(), ei[perm], rtol=0, atol=1e-10 * escale)
    np.testing.assert_allclose(shuffled.get_forces(), f[perm], rtol=0, atol=1e-10 * np.abs(f).max())


# ----------------------------------------------------------------------------- 4. small cell vs supercell

def small_cell(name, natoms):
    if name == "Cu_fs500":
        atoms = bulk("Cu", "fcc", a=3.61)                      # primitive, sides 2.55 A
    elif name == "AlNi_fs":
        atoms = bulk("Al", "fcc", a=3.75)
        if natoms == 2:
            atoms = Atoms("AlNi", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]], cell=np.eye(3) * 2.88, pbc=True)
    else:
        atoms = bulk("W", "bcc", a=3.17)                       # primitive, sides 2.75 A
    if natoms == 2 and len(atoms) == 1:
        atoms = atoms * (2, 1, 1)
    assert len(atoms) == natoms
    if natoms > 1:
        atoms.rattle(0.07, seed=71)
    atoms = strain_cell(atoms, GENERAL_STRAIN)
    return attach(atoms, name)


@pytest.mark.parametrize("name", POTENTIALS)
@pytest.mark.parametrize("natoms", [1, 2])
def test_small_cell_equals_supercell(name, natoms):
    small = small_cell(name, natoms)
    cutoff = basis(name).cutoff_max
    heights = small.get_volume() / np.linalg.norm(np.cross(small.cell[[1, 2, 0]], small.cell[[2, 0, 1]]), axis=1)
    assert heights.max() < cutoff, "the cell must be smaller than the cut-off (atoms see their own images)"
    big = attach(small.repeat((3, 3, 3)), name)
    n = len(small)

    e_small, e_big = small.get_potential_energy(), big.get_potential_energy()
    assert abs(e_big / len(big) - e_small / n) <= 1e-10 * abs(e_small / n)
    ei = small.get_potential_energies()
    np.testing.assert_allclose(big.get_potential_energies().reshape(27, n), np.tile(ei, (27, 1)),
                               rtol=0, atol=1e-10 * np.abs(ei).max())
    f_small = small.get_forces()
    f_big = big.get_forces().reshape(27, n, 3)
    fscale = max(np.abs(f_small).max(), 1.0)
    np.testing.assert_allclose(f_big, np.broadcast_to(f_small, f_big.shape), rtol=0, atol=1e-10 * fscale)
    if n == 1:   # every atom is an inversion centre
        assert np.abs(f_small).max() <= 1e-10 and np.abs(f_big).max() <= 1e-10
    else:
        assert np.abs(f_small).max() > 1e-3
    s = small.get_stress()
    np.testing.assert_allclose(big.get_stress(), s, rtol=0, atol=1e-10 * np.abs(s).max())


# ------------------------------------------------------------------ 5. stress without a cell, Newton's 3rd law

@pytest.mark.parametrize("name", POTENTIALS)
def test_stress_of_free_cluster_not_implemented(name):
    atoms = free_cluster(name)
    assert np.all(atoms.cell.array == 0)
    atoms.get_potential_energy()
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()
    fresh = attach(atoms.copy(), name)
    with pytest.raises(PropertyNotImplementedError):
        fresh.get_stress()


def test_stress_of_two_dimensional_cell_not_implemented():
    atoms = slab("W_defect")
    cell = atoms.cell.array.copy()
    cell[2] = 0.0
    atoms.set_cell(cell, scale_atoms=False)
    attach(atoms, "W_defect")
    assert np.isfinite(atoms.get_potential_energy())
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()


@pytest.mark.parametrize("name", POTENTIALS)
def test_free_cluster_forces_sum_to_zero_and_no_torque(name):
    atoms = free_cluster(name)
    f = atoms.get_forces()
    assert np.abs(f).max() > 1e-2
    assert np.abs(f.sum(axis=0)).max() <= 1e-10
    r = atoms.positions - atoms.positions.mean(axis=0)
    torque = np.cross(r, f).sum(axis=0)
    assert np.abs(torque).max() <= 1e-10 * max(1.0, np.abs(f).max() * np.abs(r).max())


@pytest.mark.parametrize("make", [cu_rattled_fcc, alni_rattled_fcc, w_bcc_zbl_pair], ids=["Cu", "AlNi", "W"])
def test_periodic_forces_sum_to_zero(make):
    atoms = make()
    f = atoms.get_forces()
    assert np.abs(f.sum(axis=0)).max() <= 1e-10 * max(1.0, np.abs(f).max())


# ---------------------------------------------------------------------------------- 6. NVE conservation

def run_nve(steps, timestep_fs=1.0, check=True):
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    atoms = bulk("W", "bcc", a=3.17, cubic=True) * (3, 3, 3)
    assert len(atoms) == 54
    attach(atoms, "W_defect")
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(20240))
    totals = []
    temperatures = []

    def record():
        totals.append(atoms.get_potential_energy() + atoms.get_kinetic_energy())
        temperatures.append(atoms.get_temperature())

    dyn = VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
    dyn.attach(record, interval=1)
    record()
    dyn.run(steps)
    totals = np.array(totals)
    assert len(totals) >= steps + 1
    drift = np.abs(totals - totals[0]) / len(atoms)
    assert np.all(np.isfinite(totals))
    assert max(temperatures) > 100, "the atoms do not move"
    if check:
        assert drift.max() <= 1e-4, f"energy drift {drift.max():.3e} eV/atom at step {int(np.argmax(drift))}"
    return drift.max()


@pytest.mark.filterwarnings("ignore:Use thermalize_momenta:DeprecationWarning")
def test_nve_energy_conservation_w_500_steps():
    """54-atom bcc W, 300 K, 500 x 1 fs (about 2 s on one core): |E(t) - E(0)| <= 1e-4 eV/atom."""
    run_nve(500)


@pytest.mark.filterwarnings("ignore:Use thermalize_momenta:DeprecationWarning")
def test_nve_energy_error_scales_with_timestep_squared():
    """Velocity Verlet with forces that are the exact gradient of the energy has a bounded energy error
    proportional to dt^2; forces inconsistent with the energy would give a drift that does not shrink
    that way. Same 250 fs trajectory with dt = 2 fs and 1 fs: the error ratio must be close to 4."""
    coarse = run_nve(125, timestep_fs=2.0, check=False)
    fine = run_nve(250, timestep_fs=1.0, check=False)
    assert 3.0 <= coarse / fine <= 5.0, (coarse, fine)


# ------------------------------------------------------------------------------ 7. ASE change detection

@pytest.fixture
def evaluation_counter(monkeypatch):
    import ace_uq_calc.engine.model as engine_model

    calls = []
    real = engine_model.evaluate

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine_model, "evaluate", counting)
    return calls


def test_unchanged_atoms_are_not_recomputed(evaluation_counter):
    atoms = alni_rattled_fcc()
    e = atoms.get_potential_energy()
    assert len(evaluation_counter) == 1
    f = atoms.get_forces()
    atoms.get_stress()
    ei = atoms.get_potential_energies()
    assert atoms.get_potential_energy(force_consistent=True) == e
    assert atoms.get_potential_energy() == e
    assert len(evaluation_counter) == 1, "energy, forces, stress and per-atom energies come from one evaluation"
    # results are consistent with each other
    assert abs(ei.sum() - e) <= 1e-12 * np.abs(ei).sum()
    # same values written again, or a copy of the atoms: still nothing to do
    atoms.positions = atoms.positions.copy()
    atoms.set_cell(atoms.cell.array.copy(), scale_atoms=False)
    np.testing.assert_array_equal(atoms.get_forces(), f)
    assert atoms.calc.get_potential_energy(atoms.copy()) == e
    assert len(evaluation_counter) == 1
    # the returned arrays are copies: modifying them does not corrupt the stored results
    f_out = atoms.get_forces()
    f_out[:] = 0.0
    np.testing.assert_array_equal(atoms.get_forces(), f)
    assert len(evaluation_counter) == 1


def test_changed_atoms_are_recomputed(evaluation_counter):
    atoms = alni_rattled_fcc()
    e0 = atoms.get_potential_energy()
    f0 = atoms.get_forces()
    s0 = atoms.get_stress()
    n = len(evaluation_counter)
    assert n == 1

    pos0 = atoms.positions.copy()
    atoms.positions[3] += [2e-3, -1e-3, 5e-4]        # in-place change is seen as well
    e1 = atoms.get_potential_energy()
    assert len(evaluation_counter) == n + 1 and e1 != e0
    assert not np.array_equal(atoms.get_forces(), f0)
    assert len(evaluation_counter) == n + 1
    # back to the original positions: a new evaluation, bit-identical to the first
    atoms.positions = pos0
    assert atoms.get_potential_energy() == e0
    np.testing.assert_array_equal(atoms.get_forces(), f0)
    np.testing.assert_array_equal(atoms.get_stress(), s0)
    assert len(evaluation_counter) == n + 2

    # cell change
    atoms.set_cell(atoms.cell.array * 1.002, scale_atoms=True)
    e2 = atoms.get_potential_energy()
    assert len(evaluation_counter) == n + 3 and e2 != e0
    atoms.set_cell(atoms.cell.array / 1.002, scale_atoms=True)

    # species change
    numbers = atoms.numbers.copy()
    k = int(np.nonzero(numbers == 13)[0][1])
    atoms.numbers[k] = 28
    e3 = atoms.get_potential_energy()
    assert len(evaluation_counter) == n + 4 and e3 != e0
    atoms.numbers = numbers

    # periodic boundary conditions
    atoms.pbc = (True, True, False)
    e4 = atoms.get_potential_energy()
    assert len(evaluation_counter) == n + 5 and e4 != e0

    # one calculator shared by two Atoms objects: switching between them recomputes
    calc = attach(atoms, "AlNi_fs").calc
    other_alni = alni_rattled_fcc()
    other_alni.positions[0] += 0.01
    other_alni.calc = calc
    count = len(evaluation_counter)
    ea = atoms.get_potential_energy()
    eb = other_alni.get_potential_energy()
    ea2 = atoms.get_potential_energy()
    assert len(evaluation_counter) == count + 3
    assert ea == ea2 and eb != ea
