"""Performance options of the calculator must not change results.

* ``skin``: neighbour lists reused across calls give the same energies, forces, stress and gamma as
  lists rebuilt every call, along a short MD trajectory (to 1e-12; in fact bit for bit), and the list
  is rebuilt exactly when needed (an atom moved more than skin / 2, or cell / pbc / atoms changed).
* ``num_threads``: one and two Numba threads give the same results; the caller's thread setting is
  restored; invalid values are rejected.
* the Numba gamma kernel equals the BLAS formula max_j |x @ ASI[:, j]| to rounding.
* the calculator's exact change detection agrees with ASE's ``compare_atoms``.

No timings here: speed is measured by benchmarks/bench_evaluator.py.
"""
import numba
import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.calculators.calculator import compare_atoms
from ase.md.verlet import VelocityVerlet
from conftest import fixture_file

from ace_uq_calc import ACECalculator, ActiveSet
from ace_uq_calc.engine.neighbour_cache import NeighbourListCache
from ace_uq_calc.engine.threads import PARALLEL_MIN_ATOMS
from ace_uq_calc.kernels.gamma import extrapolation_grades
from ace_uq_calc.kernels.neighbours import build_neighbour_list
from ace_uq_calc.model.basis import load_basis
from ace_uq_calc.uncertainty.grades import extrapolation_grade, gamma_amplification


@pytest.fixture(scope="module")
def alni():
    basis = load_basis(fixture_file("AlNi_fs.yaml"))
    return basis, ActiveSet.load(fixture_file("AlNi_fs.asi"), basis.nfunc)


def _alni_structure(size=(2, 2, 2), seed=0):
    rng = np.random.default_rng(seed)
    atoms = bulk("Al", "fcc", a=4.05, cubic=True) * size
    atoms.symbols[rng.random(len(atoms)) < 0.4] = "Ni"
    atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
    return atoms


def _results(calc, atoms):
    atoms = atoms.copy()
    atoms.calc = calc
    return (atoms.get_potential_energy(), atoms.get_forces().copy(), atoms.get_stress().copy(),
            calc.results["energies"].copy(), calc.results["gamma"].copy())


def _assert_same(a, b):
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12)


def test_skin_gives_the_results_of_fresh_lists_along_md(alni):
    basis, active = alni
    atoms = _alni_structure()
    atoms.calc = ACECalculator(basis, active_set=active, skin=0.0)
    reused = ACECalculator(basis, active_set=active, skin=0.3)
    masses = atoms.get_masses()[:, None]
    kt = 2500 * units.kB
    atoms.set_momenta(np.random.default_rng(1).normal(size=(len(atoms), 3)) * np.sqrt(masses * kt))
    dyn = VelocityVerlet(atoms, timestep=2.0 * units.fs)
    steps = 30
    for _ in range(steps):
        fresh = (atoms.get_potential_energy(), atoms.get_forces().copy(), atoms.get_stress().copy(),
                 atoms.calc.results["energies"].copy(), atoms.calc.results["gamma"].copy())
        _assert_same(_results(reused, atoms), fresh)
        dyn.run(1)
    cache = reused.neighbour_cache
    assert cache.builds + cache.reuses == steps
    assert 1 < cache.builds < steps // 2       # hot MD: some rebuilds, mostly reuse
    assert atoms.calc.neighbour_cache.builds == steps + 1


@pytest.mark.parametrize("threads", [1, 2])
def test_refreshed_list_equals_fresh_list_bit_for_bit(alni, threads):
    if threads > numba.config.NUMBA_NUM_THREADS:
        pytest.skip("needs two Numba threads")
    before = numba.get_num_threads()
    numba.set_num_threads(threads)             # one thread: the serial refresh; more: the parallel one
    try:
        _check_refreshed_list(alni)
    finally:
        numba.set_num_threads(before)


def _check_refreshed_list(alni):
    basis, _ = alni
    atoms = _alni_structure((3, 2, 2), seed=3)
    species = basis.species_of(atoms.get_chemical_symbols())
    cell, pbc = atoms.cell.array, np.array(atoms.pbc)
    cache = NeighbourListCache(0.4)
    cache.neighbour_list(basis, atoms.positions.copy(), cell, pbc, species)
    rng = np.random.default_rng(5)
    positions = atoms.positions + rng.uniform(-0.11, 0.11, size=atoms.positions.shape)   # |d| < 0.2
    refreshed = cache.neighbour_list(basis, positions, cell, pbc, species)
    assert (cache.builds, cache.reuses) == (1, 1)
    fresh = build_neighbour_list(positions, cell, pbc, species, basis.cutoff_matrix)
    for a, b in zip(refreshed, fresh, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_rebuild_happens_exactly_when_needed(alni):
    basis, _ = alni
    atoms = _alni_structure()
    species = basis.species_of(atoms.get_chemical_symbols())
    cell, pbc = atoms.cell.array.copy(), np.array(atoms.pbc)
    positions = atoms.positions.copy()
    cache = NeighbourListCache(0.5)

    def call(pos=None, c=None, p=None, s=None):
        before = cache.builds
        cache.neighbour_list(basis, positions if pos is None else pos, cell if c is None else c,
                             pbc if p is None else p, species if s is None else s)
        return cache.builds > before

    assert call()                                   # first call builds
    assert not call()                               # unchanged
    moved = positions.copy()
    moved[3, 0] += 0.249                            # < skin / 2 from the build positions
    assert not call(moved)
    moved[7, 1] -= 0.249                            # two atoms moved, each < skin / 2
    assert not call(moved)
    moved[3, 0] += 0.002                            # atom 3 now 0.251 > skin / 2 from the build
    assert call(moved)
    assert not call(moved)                          # new reference positions
    strained = cell * 1.001
    assert call(moved, c=strained)                  # cell changed
    assert call(moved)                              # and back
    assert call(moved, p=np.array([True, True, False]))   # pbc changed
    assert call(moved)
    other = species.copy()
    other[0] = 1 - other[0]
    assert call(moved, s=other)                     # species changed
    assert call(moved[:-1], s=species[:-1])         # atom removed
    no_skin = NeighbourListCache(0.0)
    for _ in range(3):
        no_skin.neighbour_list(basis, positions, cell, pbc, species)
    assert (no_skin.builds, no_skin.reuses) == (3, 0)


def test_skin_validation(alni):
    basis, _ = alni
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="skin"):
            ACECalculator(basis, skin=bad)
    assert ACECalculator(basis).skin == 0.5


def test_skin_calculator_wrapped_atoms_and_changed_cell(alni):
    """Wrapping atoms back into the cell (a jump by a lattice vector) and straining the cell both
    rebuild; results stay those of a fresh calculator."""
    basis, active = alni
    atoms = _alni_structure(seed=7)
    calc = ACECalculator(basis, active_set=active, skin=0.5)
    reference = ACECalculator(basis, active_set=active, skin=0.0)
    _assert_same(_results(calc, atoms), _results(reference, atoms))
    atoms.positions[0] += atoms.cell[0] * 1.02
    _assert_same(_results(calc, atoms), _results(reference, atoms))
    atoms.wrap()
    _assert_same(_results(calc, atoms), _results(reference, atoms))
    atoms.set_cell(atoms.cell * 1.01, scale_atoms=True)
    _assert_same(_results(calc, atoms), _results(reference, atoms))
    assert calc.neighbour_cache.builds == 4


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
def test_num_threads_one_and_two_give_the_same_results(alni):
    basis, active = alni
    atoms = _alni_structure((4, 4, 3), seed=11)          # 192 atoms: above PARALLEL_MIN_ATOMS
    assert len(atoms) >= PARALLEL_MIN_ATOMS
    before = numba.get_num_threads()
    one = _results(ACECalculator(basis, active_set=active, num_threads=1, skin=0.0), atoms)
    two = _results(ACECalculator(basis, active_set=active, num_threads=2, skin=0.0), atoms)
    default = _results(ACECalculator(basis, active_set=active), atoms)
    assert numba.get_num_threads() == before
    _assert_same(one, two)
    _assert_same(one, default)
    small = _alni_structure((2, 2, 2), seed=12)          # below PARALLEL_MIN_ATOMS: one thread anyway
    _assert_same(_results(ACECalculator(basis, active_set=active, num_threads=2), small),
                 _results(ACECalculator(basis, active_set=active, num_threads=1), small))
    assert numba.get_num_threads() == before


def test_num_threads_validation(alni):
    basis, _ = alni
    for bad in (0, -1, 1.5, True, numba.config.NUMBA_NUM_THREADS + 1):
        with pytest.raises(ValueError, match="num_threads"):
            ACECalculator(basis, num_threads=bad)
    assert ACECalculator(basis, num_threads=1).num_threads == 1


def test_gamma_kernel_equals_blas_formula():
    rng = np.random.default_rng(2)
    for m, n in ((1, 3), (7, 5), (40, 33), (61, 1), (300, 9)):
        asi = np.ascontiguousarray(rng.normal(size=(m, m)))
        x = rng.normal(size=(n, m + 3))                 # wider rows: only the first m columns count
        x[0] = 0.0                                      # an isolated atom: gamma 0
        rows = np.arange(n, dtype=np.int64)[::-1].copy()   # any order, written to out[rows]
        out = np.full(n, -1.0)
        extrapolation_grades(x, rows, asi, m, 2, out)
        ref = np.max(np.abs(x[:, :m] @ asi), axis=1)    # numpy's BLAS product, the reference
        kappa = gamma_amplification(x[:, :m], asi)
        assert np.all(np.abs(out - ref) <= 1e-13 * kappa * ref + 1e-300)
        assert out[0] == 0.0
        subset = np.array([n - 1], dtype=np.int64)
        out2 = np.zeros(n)
        extrapolation_grades(x, subset, asi, m, 1, out2)
        assert out2[n - 1] == out[n - 1] and not out2[: n - 1].any()
        # the columns from r on measure a distance: gamma = max(max_j<r |c_j|, ||c_{j>=r}||)
        for r in sorted({0, m // 2, m - 1, 129 % max(m, 1)}):
            out3 = np.full(n, -1.0)
            extrapolation_grades(x, rows, asi, r, 2, out3)
            c = x[:, :m] @ asi
            ref3 = np.maximum(np.abs(c[:, :r]).max(axis=1, initial=0.0), np.linalg.norm(c[:, r:], axis=1))
            assert np.allclose(out3, ref3, rtol=1e-12, atol=1e-300), (m, r)


def test_exact_change_detection_agrees_with_ase(alni):
    basis, _ = alni
    atoms = _alni_structure()
    calc = ACECalculator(basis)
    atoms.calc = calc
    atoms.get_potential_energy()
    edits = [
        lambda a: None,
        lambda a: a.positions.__setitem__((0, 0), a.positions[0, 0] + 1e-6),
        lambda a: a.set_cell(a.cell * 1.0001),
        lambda a: a.set_pbc([True, False, True]),
        lambda a: a.numbers.__setitem__(0, 28 if a.numbers[0] == 13 else 13),
        lambda a: a.set_initial_magnetic_moments(np.ones(len(a))),
        lambda a: a.set_initial_charges(np.full(len(a), 0.1)),
        lambda a: a.set_tags(np.arange(len(a))),
    ]
    for edit in edits:
        changed = atoms.copy()
        edit(changed)
        assert sorted(calc.check_state(changed)) == sorted(compare_atoms(calc.atoms, changed))


def test_cli_num_threads_option(tmp_path, alni, capsys):
    import ase.io

    from ace_uq_calc.cli import build_parser, main

    structures = tmp_path / "s.xyz"
    ase.io.write(structures, [_alni_structure(seed=21)])
    before = numba.get_num_threads()
    code = main(["evaluate", str(fixture_file("AlNi_fs.yaml")), str(structures), "--num-threads", "1",
                 "--active-set", str(fixture_file("AlNi_fs.asi"))])
    assert code == 0 and "max gamma" in capsys.readouterr().out
    assert numba.get_num_threads() == before
    assert main(["evaluate", str(fixture_file("AlNi_fs.yaml")), str(structures), "--num-threads", "0"]) == 2
    assert "num_threads" in capsys.readouterr().err
    parser = build_parser()
    for command in (["md", "POT", "--structure", "S", "--temperature", "300", "--steps", "1", "--timestep", "1"],
                    ["relax", "POT", "--structure", "S"]):
        assert parser.parse_args(command + ["--num-threads", "2"]).num_threads == 2
        assert parser.parse_args(command).num_threads is None
