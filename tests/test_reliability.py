"""Reliability: bad structures, bad or foreign files, files written under SIGKILL, nothing hangs.

Every bad input must either give a clear exception (type and message start listed in
docs/reliability.md) or a finite result; nothing may run for more than a few seconds, exhaust memory
or return NaN. Expected values come from physics or from numpy, never from the code under test:
supercells repeat the energy of their primitive cell, forces are -dE/dx by finite differences,
extrapolation grades are max |x @ ASI| with ASI read by np.load.
"""
import copy
import json
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from ase import Atoms
from ase.build import bulk
from conftest import FIXTURES, PROJECT_ROOT, fixture_file, require_shared

from ace_uq_calc import ACECalculator, ActiveSet, PotentialFormatError
from ace_uq_calc.engine.evaluate import evaluate
from ace_uq_calc.engine.structure import MAX_NEIGHBOURS_PER_ATOM, MIN_PAIR_DISTANCE
from ace_uq_calc.model.basis import load_basis
from ace_uq_calc.model.yaml_format import CHECKSUM_KEY, read_potential_file, write_potential_file

ALNI_NFUNC = 110          # functions per element of AlNi_fs (pacemaker-format.md 13.1)


@pytest.fixture(scope="module")
def alni_basis():
    return load_basis(fixture_file("AlNi_fs.yaml"))


@pytest.fixture(scope="module")
def alni_asi_path():
    return fixture_file("AlNi_fs.asi")


@pytest.fixture(scope="module")
def alni_active_set(alni_basis, alni_asi_path):
    return ActiveSet.load(alni_asi_path, alni_basis.nfunc)


@pytest.fixture()
def calc(alni_basis, alni_active_set):
    """A fresh calculator (no cached results) on the module's basis and active set."""
    return ACECalculator(alni_basis, active_set=alni_active_set)


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


@pytest.fixture(scope="module")
def alni_document():
    return yaml.load(Path(fixture_file("AlNi_fs.yaml")).read_text(), Loader=_YAML_LOADER)


def energy_and_forces(atoms, calc):
    atoms.calc = calc
    return atoms.get_potential_energy(), atoms.get_forces()


def dimer(symbols, r):
    return Atoms(symbols, positions=[[0.0, 0.0, 0.0], [r, 0.0, 0.0]])


# =====================================================================================================
# 1. structures
# =====================================================================================================

def test_unknown_element_names_it_and_the_potential_elements(calc):
    atoms = Atoms("AlCuNi", positions=[[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0]])
    with pytest.raises(ValueError, match=r"elements \['Cu'\] are not in the potential .*AlNi_fs\.yaml.*Al, Ni"):
        energy_and_forces(atoms, calc)


@pytest.mark.parametrize("where", ["position", "cell_periodic", "cell_nonperiodic"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_positions_or_cell(calc, where, bad):
    atoms = Atoms("AlNi", positions=[[0, 0, 0], [2.5, 0, 0]], cell=np.eye(3) * 6.0, pbc=[True, True, False])
    if where == "position":
        atoms.positions[1, 2] = bad
        message = r"positions of atoms \[1\] are NaN or infinite"
    else:
        row = 0 if where == "cell_periodic" else 2
        cell = atoms.cell.array.copy()
        cell[row, row] = bad
        atoms.cell = cell        # ASE keeps the NaN/inf when the cell is assigned directly
        message = r"the cell contains NaN or infinite entries"
    with pytest.raises(ValueError, match=message):
        energy_and_forces(atoms, calc)


def test_nan_positions_do_not_return_stale_results(calc):
    atoms = Atoms("AlNi", positions=[[0, 0, 0], [2.5, 0, 0]])
    energy_and_forces(atoms, calc)
    atoms.positions[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        atoms.get_potential_energy()
    atoms.positions[0, 0] = 0.0
    assert np.isfinite(atoms.get_potential_energy())


@pytest.mark.parametrize("cell, pbc, message", [
    ([[5, 0, 0], [10, 0, 0], [0, 0, 5]], True, "linearly dependent"),                # parallel a, b
    ([[5, 0, 0], [0, 5, 0], [5, 5, 0]], True, "linearly dependent"),                 # coplanar a, b, c
    ([[5, 0, 0], [0, 5, 0], [0, 0, 0]], True, "zero-length cell vector"),
    ([[0, 0, 0], [0, 0, 0], [0, 0, 0]], True, "zero-length cell vector"),
    ([[5, 0, 0], [-5, 0, 0], [0, 0, 0]], [True, True, False], "parallel"),
    ([[5, 0, 0], [5, 1e-12, 0], [0, 0, 5]], True, "linearly dependent"),           # nearly parallel
])
def test_degenerate_periodic_cell(calc, cell, pbc, message):
    atoms = Atoms("AlNi", positions=[[0, 0, 0], [1.2, 1.3, 1.4]], cell=cell, pbc=pbc)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        energy_and_forces(atoms, calc)
    assert time.perf_counter() - start < 2.0


def test_degenerate_vector_along_non_periodic_direction_is_fine(calc):
    atoms = Atoms("AlNi", positions=[[0, 0, 0], [2.5, 0, 0]], cell=[[4, 0, 0], [0, 4, 0], [0, 0, 0]],
                  pbc=[True, True, False])
    energy, forces = energy_and_forces(atoms, calc)
    assert np.isfinite(energy) and np.all(np.isfinite(forces))


@pytest.mark.parametrize("cell, pbc", [
    (np.eye(3) * 0.06, True),                                   # ~3e6 self-images
    (np.diag([0.004, 0.004, 0.0]), [True, True, False]),       # 2-D: ~6e6 images
    (np.diag([1e-4, 0.0, 0.0]), [True, False, False]),         # 1-D: 1.1e5 images
])
def test_cell_far_smaller_than_cut_off_is_rejected_fast(calc, cell, pbc):
    atoms = Atoms("Al", positions=[[0, 0, 0]], cell=cell, pbc=pbc)
    start = time.perf_counter()
    with pytest.raises(ValueError, match="far too small for the cut-off"):
        energy_and_forces(atoms, calc)
    assert time.perf_counter() - start < 1.0


def test_atoms_piled_up_beyond_neighbour_limit_are_rejected(alni_basis):
    # a user neighbour list claiming more neighbours than the limit is refused before the kernels run
    from ace_uq_calc.kernels.neighbours import NeighbourList

    n = MAX_NEIGHBOURS_PER_ATOM + 1
    nl = NeighbourList(np.array([0, n, n]), np.ones(n, dtype=np.int64), np.zeros((n, 3), dtype=np.int64),
                       np.tile([2.0, 0.0, 0.0], (n, 1)), np.full(n, 2.0))
    with pytest.raises(ValueError, match=r"atom 0 has 100001 neighbours"):
        evaluate(alni_basis, [[0, 0, 0], [2, 0, 0]], np.zeros((3, 3)), False, [0, 1], neighbour_list=nl)


@pytest.mark.parametrize("case", ["identical", "1e-4 apart", "periodic image", "skewed image", "third pair"])
def test_atoms_closer_than_minimum_distance_are_named(calc, case):
    d = MIN_PAIR_DISTANCE / 10
    cell, pbc = np.zeros((3, 3)), False
    if case == "identical":
        symbols, positions, pair = "AlNi", [[1, 1, 1], [1, 1, 1]], "0 and 1"
    elif case == "1e-4 apart":
        symbols, positions, pair = "AlAl", [[0, 0, 0], [d, 0, 0]], "0 and 1"
    elif case == "periodic image":        # atom 1 sits on the image of atom 0 one cell length away
        symbols, positions, pair = "AlNi", [[0, 0, 0], [6.0, 0, 0]], "0 and 1"
        cell, pbc = np.eye(3) * 6.0, True
    elif case == "skewed image":          # atom 1 = atom 0 + a + b of a triclinic cell, plus 1e-4
        cell = np.array([[5.0, 0, 0], [1.3, 4.7, 0], [0.4, 0.9, 5.2]])
        symbols, positions, pair = "NiNi", [[0.2, 0.3, 0.1], cell[0] + cell[1] + [0.2 + d, 0.3, 0.1]], "0 and 1"
        pbc = True
    else:                                 # only atoms 1 and 2 coincide
        symbols, positions, pair = "AlNiNi", [[0, 0, 0], [2.5, 0, 0], [2.5, 0, d]], "1 and 2"
    atoms = Atoms(symbols, positions=positions, cell=cell, pbc=pbc)
    with pytest.raises(ValueError, match=rf"atoms {pair} are .* Angstrom apart \(closer than 0.001 Angstrom\)"):
        energy_and_forces(atoms, calc)


def test_neighbour_list_reports_coincident_atoms_with_distance_zero(alni_basis):
    from ace_uq_calc.kernels.neighbours import (
        build_neighbour_list,
        minimum_pair_distance,
    )

    cell = np.eye(3) * 6.0
    nl = build_neighbour_list(np.array([[0.0, 0, 0], [6.0, 0, 0]]), cell, [True] * 3, np.array([0, 1]),
                              alni_basis.cutoff_matrix)
    dmin, i, j = minimum_pair_distance(nl)
    assert dmin == 0.0 and {i, j} == {0, 1}


def _close_pair_potentials():
    return [("AlNi_fs", [("Al", "Al"), ("Al", "Ni"), ("Ni", "Ni")]), ("Cu_fs500", [("Cu", "Cu")]),
            ("W_defect", [("W", "W")])]


def _potential_path(name):
    if name == "W_defect":
        return require_shared(FIXTURES / "W_defect.yaml")
    return fixture_file(f"{name}.yaml")


@pytest.mark.parametrize("name, pairs", _close_pair_potentials(), ids=[p[0] for p in _close_pair_potentials()])
def test_pairs_inside_inner_cut_off_are_finite(name, pairs):
    """From just above MIN_PAIR_DISTANCE to beyond the inner cut-off: finite energies and forces, and
    forces are -dE/dr (central differences)."""
    calc = ACECalculator(_potential_path(name))
    distances = [1.01 * MIN_PAIR_DISTANCE, 0.003, 0.01, 0.05, 0.1, 0.3, 0.7, 1.2, 1.7, 2.1]
    for symbols in pairs:
        energies = []
        for r in distances:
            energy, forces = energy_and_forces(dimer(symbols, r), calc)
            assert np.isfinite(energy) and np.all(np.isfinite(forces)), (symbols, r)
            energies.append(energy)
            if r >= 0.05:                   # -dE/dr by central differences (relative step 1e-6)
                h = 1e-6 * r
                e_plus = energy_and_forces(dimer(symbols, r + h), calc)[0]
                e_minus = energy_and_forces(dimer(symbols, r - h), calc)[0]
                derivative = (e_plus - e_minus) / (2 * h)
                assert forces[1, 0] == pytest.approx(-derivative, rel=1e-5, abs=1e-6 * (1 + abs(energy) / r))
                assert forces[0, 0] == pytest.approx(-forces[1, 0], rel=1e-12, abs=1e-9)
        if name in ("AlNi_fs", "W_defect"):
            # core repulsion / ZBL: the energy rises steeply as the pair is squeezed
            assert all(a > b for a, b in zip(energies[:6], energies[1:6])), (symbols, energies)
        # a squeezed trimer (angular terms at short range) stays finite too
        trimer = Atoms(list(symbols) + [symbols[-1]], positions=[[0, 0, 0], [0.02, 0, 0], [0.01, 0.015, 0.004]])
        energy, forces = energy_and_forces(trimer, calc)
        assert np.isfinite(energy) and np.all(np.isfinite(forces))
        assert np.allclose(forces.sum(axis=0), 0.0, atol=1e-9 * np.abs(forces).max())


@pytest.mark.parametrize("pbc", [False, True])
def test_zero_atoms(calc, alni_basis, pbc):
    atoms = Atoms(cell=np.eye(3) * 5.0 if pbc else np.zeros((3, 3)), pbc=pbc)
    atoms.calc = calc
    assert atoms.get_potential_energy() == 0.0
    assert atoms.get_forces().shape == (0, 3)
    assert calc.results["gamma"].shape == (0,) and calc.results["max_gamma"] == 0.0
    result = evaluate(alni_basis, np.zeros((0, 3)), np.zeros((3, 3)), False, np.zeros(0, dtype=int))
    assert result.energy == 0.0 and result.forces.shape == (0, 3) and result.energies.shape == (0,)


@pytest.mark.parametrize("cell, repeat", [
    (np.eye(3) * 2.6, (2, 2, 2)),                                           # simple cubic, 1 atom
    (np.array([[2.7, 0, 0], [0.8, 2.6, 0], [0.3, 0.5, 2.9]]), (3, 1, 2)),   # triclinic, 1 atom
])
def test_self_images_within_cut_off_match_supercell(calc, cell, repeat):
    """A 1-atom cell (every atom sees its own images within r_c = 5 A) and its supercell are the same
    crystal: energy per atom, forces (zero by inversion symmetry) and gamma must agree."""
    primitive = Atoms("Ni", positions=[[0.1, 0.2, 0.3]], cell=cell, pbc=True)
    e1, f1 = energy_and_forces(primitive, calc)
    gamma1 = calc.results["gamma"].copy()
    assert calc.results["neighbour_count"][0] > 12       # self-images are really there
    supercell = primitive.repeat(repeat)
    n = len(supercell)
    en, fn = energy_and_forces(supercell, calc)
    assert en == pytest.approx(n * e1, rel=1e-12)
    assert np.allclose(f1, 0.0, atol=1e-9) and np.allclose(fn, 0.0, atol=1e-9)
    assert np.allclose(calc.results["gamma"], gamma1[0], rtol=1e-9)


def test_two_atom_triclinic_cell_matches_supercell(calc):
    rng = np.random.default_rng(3)
    cell = np.array([[3.1, 0, 0], [0.9, 2.9, 0], [0.2, 0.7, 3.3]])
    atoms = Atoms("AlNi", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]], cell=cell, pbc=True)
    atoms.positions += rng.normal(scale=0.1, size=(2, 3))
    e1, f1 = energy_and_forces(atoms, calc)
    supercell = atoms.repeat((2, 2, 2))
    en, fn = energy_and_forces(supercell, calc)
    assert en == pytest.approx(8 * e1, rel=1e-12)
    assert np.allclose(fn, np.tile(f1, (8, 1)), rtol=1e-10, atol=1e-10)


def test_overflowing_potential_raises_instead_of_returning_nan(tmp_path, alni_document):
    """A potential whose numbers are finite but overflow in the products (radial coefficient 1e300)
    must not hand NaN/inf to an MD code: FloatingPointError naming the potential and the atoms."""
    document = copy.deepcopy(alni_document)
    _block(document, "Al")["radcoefficients"][0][0][0] = 1e300
    path = tmp_path / "overflow.yaml"
    path.write_text(yaml.dump(document, Dumper=_YAML_DUMPER))
    atoms = Atoms("AlAlNi", positions=[[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0]])
    atoms.calc = ACECalculator(str(path))
    with pytest.raises(FloatingPointError, match=r"overflow\.yaml gives non-finite energies of atoms \[0, 1\]"):
        atoms.get_potential_energy()
    lone_ni = Atoms("Ni", positions=[[0, 0, 0]])       # atoms that never see the broken bond are fine
    lone_ni.calc = atoms.calc
    assert abs(lone_ni.get_potential_energy()) < 1e-12


# -----------------------------------------------------------------------------------------------------
# nothing hangs: every bad input in a subprocess with a memory cap, each within a few seconds
# -----------------------------------------------------------------------------------------------------

_HANG_SCRIPT = textwrap.dedent(r"""
    import copy, json, os, resource, sys, time
    resource.setrlimit(resource.RLIMIT_AS, (8 * 2**30, 8 * 2**30))   # a runaway allocation fails here
    import numpy as np, yaml
    from ase import Atoms
    from ace_uq_calc import ACECalculator
    potential, active_set, workdir = sys.argv[1:4]
    calc = ACECalculator(potential, active_set=active_set)
    warm = Atoms("AlNi", positions=[[0, 0, 0], [2.5, 0, 0]])
    warm.calc = calc
    warm.get_potential_energy()
    rng = np.random.default_rng(0)
    pile = Atoms("Al300", positions=rng.uniform(0, 1.5, size=(300, 3)))
    structures = {
        "NaN position": Atoms("AlNi", positions=[[0, 0, 0], [np.nan, 0, 0]]),
        "inf cell": Atoms("AlNi", positions=[[0, 0, 0], [2, 0, 0]], cell=[[np.inf, 0, 0], [0, 5, 0], [0, 0, 5]], pbc=True),
        "zero-volume cell": Atoms("Al", cell=[[5, 0, 0], [0, 5, 0], [5, 5, 0]], pbc=True),
        "nearly parallel cell vectors": Atoms("Al", cell=[[5, 0, 0], [5, 1e-7, 0], [0, 0, 5]], pbc=True),
        "cell 0.06 A": Atoms("Al", cell=np.eye(3) * 0.06, pbc=True),
        "cell 0.2 A": Atoms("Al", cell=np.eye(3) * 0.2, pbc=True),
        "cell 0.01 A, 20 atoms": Atoms("Al20", scaled_positions=rng.random((20, 3)), cell=np.eye(3) * 0.01, pbc=True),
        "2-D cell 0.003 A": Atoms("Al", cell=np.diag([0.003, 0.003, 0]), pbc=[True, True, False]),
        "1-D cell 0.002 A": Atoms("Al", cell=np.diag([0.002, 0, 0]), pbc=[True, False, False]),
        "coincident 2000 atoms": Atoms("Al2000", positions=np.zeros((2000, 3))),
        "100000 atoms left at the origin": Atoms("Al100000"),
        "2000 atoms within 1e-9 A": Atoms("Al2000", positions=rng.uniform(0, 1e-9, size=(2000, 3))),
        "300 atoms in 1.5 A box": pile,
        "atom 1e15 A away": Atoms("AlNi", positions=[[0, 0, 0], [1e15, 0, 0]]),
        "atom 1e17 cells outside": Atoms("AlNi", positions=[[0, 0, 0], [5e17, 0, 0]], cell=np.eye(3) * 5, pbc=True),
        "cell 1e8 A": Atoms("AlNi", positions=[[0, 0, 0], [2.5, 0, 0]], cell=np.eye(3) * 1e8, pbc=True),
        "needle cell": Atoms("Al", cell=[[5, 0, 0], [4.99, 0.05, 0], [0, 0, 5]], pbc=True),
        "sheared cell": Atoms("Al", cell=[[5, 0, 0], [4.995, 0.005, 0], [0, 0, 5]], pbc=True),
        "coordinate 1e101 A": Atoms("AlNi", positions=[[0, 0, 0], [1e101, 0, 0]]),
    }
    out = {}
    for name, atoms in structures.items():
        start = time.perf_counter()
        try:
            atoms.calc = calc
            e = atoms.get_potential_energy(); atoms.get_forces()
            outcome = "finite" if np.isfinite(e) else "NON-FINITE"
        except (ValueError, FloatingPointError) as exc:
            outcome = type(exc).__name__ + ": " + str(exc)[:80]
        out[name] = (time.perf_counter() - start, outcome)
    doc = yaml.safe_load(open(potential))
    al = next(b for b in doc["species"] if b["speciesblock"] == "Al")
    edits = {
        "rcutij 1e6": lambda d, b: b.__setitem__("rcutij", 1e6),
        "DeltaSplineBins 1e-9": lambda d, b: d["global"].__setitem__("DeltaSplineBins", 1e-9),
        "nr [1, 100000]": lambda d, b: b["nbody"][7].__setitem__("nr", [1, 100000]),
        "nl [200, 200]": lambda d, b: b["nbody"][7].__setitem__("nl", [200, 200]),
        "nradmaxi 100000": lambda d, b: b.__setitem__("nradmaxi", 100000),
        "rank 6, l = 20": lambda d, b: b["nbody"].append(
            {"type": "Al " * 6 + "Al", "nr": [1] * 6, "nl": [20] * 6, "lint": [20] * 4, "c": [1.0, 1.0]}),
    }
    from ace_uq_calc.model.basis import load_basis
    for name, edit in edits.items():
        d = copy.deepcopy(doc)
        edit(d, next(b for b in d["species"] if b["speciesblock"] == "Al"))
        path = os.path.join(workdir, "edited.yaml")
        with open(path, "w") as handle:
            yaml.safe_dump(d, handle)
        start = time.perf_counter()
        try:
            load_basis(path)
            outcome = "loaded"
        except ValueError as exc:
            outcome = type(exc).__name__ + ": " + str(exc)[:80]
        out["file: " + name] = (time.perf_counter() - start, outcome)
    print(json.dumps(out))
""")


def test_no_bad_input_hangs_or_exhausts_memory(tmp_path, alni_asi_path):
    process = subprocess.run(
        [sys.executable, "-c", _HANG_SCRIPT, str(fixture_file("AlNi_fs.yaml")), str(alni_asi_path), str(tmp_path)],
        capture_output=True, text=True, timeout=240, cwd=PROJECT_ROOT,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    results = json.loads(process.stdout.strip().splitlines()[-1])
    for name, (seconds, outcome) in results.items():
        print(f"{name:32s} {seconds:6.3f} s  {outcome}")
    slow = {name: r for name, r in results.items() if r[0] > 5.0}
    assert not slow, slow
    for name, (_, outcome) in results.items():
        assert "NON-FINITE" not in outcome and "MemoryError" not in outcome, (name, outcome)
        if name.startswith("file: "):
            assert outcome.startswith("PotentialFormatError"), (name, outcome)
    assert results["cell 0.2 A"][1] == "finite"                 # absurd but allowed: 6.5e4 images
    assert results["300 atoms in 1.5 A box"][1] == "finite"
    assert "closer than 0.001" in results["coincident 2000 atoms"][1]
    assert "atoms 0 and 1 are 0 Angstrom apart" in results["100000 atoms left at the origin"][1]
    assert "closer than 0.001" in results["2000 atoms within 1e-9 A"][1]
    assert "far too small" in results["cell 0.01 A, 20 atoms"][1]
    assert "too long for the periodic cell" in results["sheared cell"][1]
    assert "positions beyond 1e+100 Angstrom" in results["coordinate 1e101 A"][1]


# =====================================================================================================
# 2. files
# =====================================================================================================

def test_yaml_with_python_tag_is_rejected_and_not_executed(tmp_path):
    marker = tmp_path / "executed"
    text = Path(fixture_file("AlNi_fs.yaml")).read_text()
    text = text.replace("global:\n", f'global:\n  evil: !!python/object/apply:os.system ["touch {marker}"]\n', 1)
    path = tmp_path / "tagged.yaml"
    path.write_text(text)
    with pytest.raises(PotentialFormatError, match=r"tagged\.yaml: not valid YAML: .*python/object"):
        read_potential_file(path)
    with pytest.raises(PotentialFormatError):
        ACECalculator(str(path))
    assert not marker.exists()


class _Payload:
    """Unpickling this would create a marker file (it must never be unpickled)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_asi_with_object_array_is_rejected_and_not_unpickled(tmp_path, alni_basis):
    marker = tmp_path / "unpickled"
    path = tmp_path / "objects.asi"
    objects = np.empty((ALNI_NFUNC, ALNI_NFUNC), dtype=object)
    objects[:] = 0.0
    objects[0, 0] = _Payload(marker)
    with open(path, "wb") as handle:
        np.savez(handle, Al=objects, Ni=np.eye(ALNI_NFUNC))
    assert not marker.exists()
    with pytest.raises(ValueError, match=r"objects\.asi: .*(Object arrays|pickle)"):
        ActiveSet.load(path, nfunc_per_element=alni_basis.nfunc)
    with pytest.raises(ValueError, match=r"objects\.asi"):
        ACECalculator(alni_basis, active_set=path)
    assert not marker.exists()
    # a whole pickle renamed .asi is refused as well
    pickled = tmp_path / "pickled.asi"
    pickled.write_bytes(pickle.dumps({"Al": _Payload(marker)}))
    with pytest.raises(ValueError, match=r"pickled\.asi: not a NumPy \.npz"):
        ActiveSet.load(pickled, nfunc_per_element=alni_basis.nfunc)
    assert not marker.exists()


def _truncation_offsets(size, count=60, seed=7):
    rng = np.random.default_rng(seed)
    return sorted(set(rng.integers(0, size, count).tolist()) | {0, 1, size // 2, size - 2, size - 1})


def test_truncated_potential_files(tmp_path, alni_asi_path):
    """A truncated .yaml is a PotentialFormatError naming the file (YAML errors add line and column,
    missing fields name the field, a cut mid-line the missing final newline). A pacemaker file (no
    checksum) cut exactly after a complete function entry still parses; it then has fewer functions, which
    the matching active set exposes at ACECalculator construction."""
    source = Path(fixture_file("AlNi_fs.yaml")).read_bytes()
    complete = read_potential_file(fixture_file("AlNi_fs.yaml")).nfunc
    path = tmp_path / "cut.yaml"
    outcomes = {"error": 0, "fewer functions": 0, "complete": 0}
    for offset in _truncation_offsets(len(source)):
        path.write_bytes(source[:offset])
        try:
            potential = read_potential_file(path)
        except PotentialFormatError as exc:
            message = str(exc)
            assert message.startswith(f"{path}: "), message
            assert ("line" in message or "field" in message or "empty" in message or "top level" in message
                    or "no 1-species block" in message or "no radial description" in message
                    or "does not end with a newline" in message), message
            if not source[:offset].endswith(b"\n"):
                assert "does not end with a newline" in message or "empty" in message, (offset, message)
            outcomes["error"] += 1
            continue
        assert source[:offset].endswith(b"\n"), offset          # a cut mid-line is never accepted
        if potential.nfunc == complete:
            outcomes["complete"] += 1
            continue
        outcomes["fewer functions"] += 1
        with pytest.raises(ValueError, match=r"AlNi_fs\.asi: member '(Al|Ni)' has size 110x110"):
            ACECalculator(str(path), active_set=alni_asi_path)
    print(outcomes)
    assert outcomes["error"] >= 50, outcomes


def test_our_potential_files_carry_a_checksum_that_refuses_truncation_and_edits(tmp_path):
    """Files written by ace_uq_calc hold a SHA-256 of their content in the metadata: a copy cut at any
    line end, or with one coefficient altered, is refused with a message naming the file; the intact
    file reads back identically; pacemaker's files (no checksum) load as before."""
    original = read_potential_file(fixture_file("AlNi_fs.yaml"))
    assert CHECKSUM_KEY not in original.metadata
    path = tmp_path / "ours.yaml"
    write_potential_file(original, path)
    text = path.read_text()
    assert f"  {CHECKSUM_KEY}: '" in text
    back = read_potential_file(path)
    assert back.nfunc == original.nfunc and len(back.metadata[CHECKSUM_KEY]) == 64
    lines = text.splitlines(keepends=True)
    cut = tmp_path / "cut.yaml"
    refused = 0
    for keep in range(len(lines) // 2, len(lines)):          # every cut at a line end of the second half
        cut.write_text("".join(lines[:keep]))
        with pytest.raises(PotentialFormatError, match=rf"{cut}: (checksum mismatch|.*line|.*field)"):
            read_potential_file(cut)
        refused += 1
    assert refused >= 10
    edited = tmp_path / "edited.yaml"
    index = next(k for k, line in enumerate(lines) if "c: [" in line)
    lines[index] = lines[index].replace("c: [", "c: [1", 1)
    edited.write_text("".join(lines))
    with pytest.raises(PotentialFormatError, match=rf"{edited}: checksum mismatch"):
        read_potential_file(edited)
    write_potential_file(back, tmp_path / "again.yaml")             # rewriting replaces the old checksum
    assert (tmp_path / "again.yaml").read_text() == text


def test_truncated_active_set_files(tmp_path, alni_basis, alni_asi_path):
    source = Path(alni_asi_path).read_bytes()
    path = tmp_path / "cut.asi"
    for offset in _truncation_offsets(len(source), count=25):
        path.write_bytes(source[:offset])
        with pytest.raises(ValueError, match=r"cut\.asi: "):
            ACECalculator(alni_basis, active_set=path)


def _block(document, name):
    return next(b for b in document["species"] if b["speciesblock"] == name)


def _function(document, block, rank):
    return next(f for f in _block(document, block)["nbody"] if len(f["type"].split()) == rank + 1)


def _drop(mapping, key):
    del mapping[key]


# (name, edit of the parsed document, regex the message must contain after the file name)
GARBLED = [
    ("radcoefficients wrong shape", lambda d: _block(d, "Al").__setitem__("radcoefficients", _block(d, "Al")["radcoefficients"][:-1]),
     r"speciesblock 'Al': field 'radcoefficients' has shape \(3, 4, 6\), expected .* = \(4, 4, 6\)"),
    ("radcoefficients ragged", lambda d: _block(d, "Al")["radcoefficients"][0].__setitem__(0, [1.0]),
     r"speciesblock 'Al': field 'radcoefficients' is not a regular numeric array"),
    ("radcoefficients text", lambda d: _block(d, "Al")["radcoefficients"][0][0].__setitem__(0, "x"),
     r"field 'radcoefficients' is not a regular numeric array"),
    ("missing rcutij", lambda d: _drop(_block(d, "Al"), "rcutij"), r"speciesblock 'Al': missing field 'rcutij'"),
    ("rcutij negative", lambda d: _block(d, "Al").__setitem__("rcutij", -5.0), r"field 'rcutij' must be positive"),
    ("rcutij text", lambda d: _block(d, "Al").__setitem__("rcutij", "five"), r"field 'rcutij' must be a number"),
    ("rcutij nan", lambda d: _block(d, "Al").__setitem__("rcutij", float("nan")), r"field 'rcutij' is not finite"),
    ("rcutij 1e6", lambda d: _block(d, "Al").__setitem__("rcutij", 1e6), r"radial tables would need .* GiB"),
    ("npoti unknown", lambda d: _block(d, "Al").__setitem__("npoti", "Foo"), r"speciesblock 'Al': unknown npoti 'Foo'"),
    ("npoti missing", lambda d: _drop(_block(d, "Ni"), "npoti"), r"speciesblock 'Ni': missing field 'npoti'"),
    ("ndensityi zero", lambda d: _block(d, "Al").__setitem__("ndensityi", 0), r"field 'ndensityi' must be >= 1"),
    ("parameters short", lambda d: _block(d, "Al").__setitem__("parameters", [1, 1, 1]),
     r"field 'parameters' must hold 2\*ndensityi = 4 numbers, found 3"),
    ("embedding exponent 0", lambda d: _block(d, "Al").__setitem__("parameters", [1, 0, 1, 0.5]),
     r"field 'parameters': the exponents m of FinnisSinclairShiftedScaled must be > 0"),
    ("c length wrong", lambda d: _block(d, "Al")["nbody"][0].__setitem__("c", [0.1]),
     r"speciesblock 'Al': nbody\[0\]: field 'c' has 1 entries, expected ndensity = 2"),
    ("c missing", lambda d: _drop(_block(d, "Ni")["nbody"][3], "c"), r"speciesblock 'Ni': nbody\[3\]: missing field 'c'"),
    ("nr zero", lambda d: _block(d, "Al")["nbody"][0].__setitem__("nr", [0]), r"nbody\[0\]: 'nr' entries are 1-based"),
    ("nr out of range", lambda d: _function(d, "Al", 2).__setitem__("nr", [1, 100000]), r"field 'nr' = \[1, 100000\] exceeds 1000"),
    ("nr wrong length", lambda d: _function(d, "Al", 2).__setitem__("nr", [1]), r"'nr' and 'nl' need 2 entries"),
    ("nr not integer", lambda d: _function(d, "Al", 2).__setitem__("nr", [1, 1.5]), r"field 'nr' must be a list of integers"),
    ("nl out of range", lambda d: _function(d, "Al", 2).__setitem__("nl", [200, 200]), r"field 'nl' = \[200, 200\] exceeds 100"),
    ("nl odd sum", lambda d: _function(d, "Al", 2).__setitem__("nl", [1, 2]), r"sum of nl = \[1, 2\] is odd"),
    ("lint inconsistent", lambda d: _function(d, "Al", 3).__setitem__("lint", [7]), r"lint = \[7\] .* violates"),
    ("type unknown element", lambda d: _block(d, "Al")["nbody"][0].__setitem__("type", "Al Cu"),
     r"'type' uses elements \['Cu'\] not named by its speciesblock"),
    ("skip not bool", lambda d: _block(d, "Al")["nbody"][0].__setitem__("skip", "no"), r"field 'skip' must be true or false"),
    ("nradmaxi negative", lambda d: _block(d, "Al").__setitem__("nradmaxi", -1), r"field 'nradmaxi' must lie in 0\.\.1000, found -1"),
    ("lmaxi huge", lambda d: _block(d, "Al").__setitem__("lmaxi", 10**6), r"field 'lmaxi' must lie in 0\.\.100"),
    ("radbase unknown", lambda d: _block(d, "Al").__setitem__("radbase", "Foo"), r"unknown radbase 'Foo'"),
    ("radparameters empty", lambda d: _block(d, "Al").__setitem__("radparameters", []), r"field 'radparameters' needs lambda"),
    ("ChebExpCos lambda 0", lambda d: _block(d, "Al").__setitem__("radparameters", [0.0]),
     r"field 'radparameters': lambda of ChebExpCos must be non-zero"),
    ("inner_cutoff_type unknown", lambda d: _block(d, "Al").__setitem__("inner_cutoff_type", "foo"), r"unknown inner_cutoff_type 'foo'"),
    ("inner_cutoff_type mixed", lambda d: _block(d, "Al").__setitem__("inner_cutoff_type", "zbl"), r"inner_cutoff_type differs between bonds"),
    ("core-repulsion length", lambda d: _block(d, "Al").__setitem__("core-repulsion", [1.0]), r"field 'core-repulsion' must be \[prefactor, lambda\]"),
    ("bond blocks disagree", lambda d: _block(d, "Al Ni").__setitem__("rcutij", 5.4), r"'Al Ni' and 'Ni Al' describe the bond differently"),
    ("embedding block missing", lambda d: d.__setitem__("species", [b for b in d["species"] if b["speciesblock"] != "Ni"]),
     r"no 1-species block \(embedding\) for elements \['Ni'\]"),
    ("DeltaSplineBins 0", lambda d: d["global"].__setitem__("DeltaSplineBins", 0), r"global\.DeltaSplineBins must be > 0"),
    ("DeltaSplineBins 10", lambda d: d["global"].__setitem__("DeltaSplineBins", 10.0), r"field 'rcutij' = 5\.0 gives fewer than two spline knots"),
    ("DeltaSplineBins 1e-9", lambda d: d["global"].__setitem__("DeltaSplineBins", 1e-9), r"radial tables would need .* GiB"),
    ("species missing", lambda d: _drop(d, "species"), r"missing field 'species'"),
    ("species not a list", lambda d: d.__setitem__("species", {"a": 1}), r"field 'species' must be a non-empty list"),
    ("speciesblock unknown element", lambda d: _block(d, "Al").__setitem__("speciesblock", "Xx"), r"unknown element symbols \['Xx'\]"),
    ("nbody not a list", lambda d: _block(d, "Al").__setitem__("nbody", "x"), r"field 'nbody' must be a list"),
]


@pytest.mark.parametrize("name, edit, message", GARBLED, ids=[g[0] for g in GARBLED])
def test_garbled_field_names_file_and_field(tmp_path, alni_document, name, edit, message):
    document = copy.deepcopy(alni_document)
    edit(document)
    path = tmp_path / "garbled.yaml"
    path.write_text(yaml.dump(document, Dumper=_YAML_DUMPER))
    start = time.perf_counter()
    with pytest.raises(PotentialFormatError) as info:
        ACECalculator(str(path))
    assert time.perf_counter() - start < 5.0
    text = str(info.value)
    assert text.startswith(f"{path}: "), text
    assert re.search(message, text), text


# -----------------------------------------------------------------------------------------------------
# potential and active set that do not belong together
# -----------------------------------------------------------------------------------------------------

def _savez(path, **arrays):
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


@pytest.mark.parametrize("case, message", [
    ("Cu active set", r"element 'Al' is missing from the active-set file \(members: Cu\)"),
    ("one element only", r"element 'Ni' is missing"),
    ("109 functions", r"member 'Ni' has size 109x109, expected 110 \(linear, nfunc\) or 220"),
    ("111 functions", r"member 'Al' has size 111x111"),
    ("mixed linear and non-linear", r"mix linear and non-linear"),
])
def test_foreign_active_set_file_is_rejected_at_construction(tmp_path, alni_basis, case, message):
    rng = np.random.default_rng(11)
    n = ALNI_NFUNC
    path = tmp_path / "foreign.asi"
    cu_nfunc = len(read_potential_file(fixture_file("Cu_fs500.yaml")).functions["Cu"])   # a Cu_fs500-type .asi
    members = {
        "Cu active set": {"Cu": rng.normal(size=(cu_nfunc, cu_nfunc))},
        "one element only": {"Al": rng.normal(size=(n, n))},
        "109 functions": {"Al": rng.normal(size=(n, n)), "Ni": rng.normal(size=(n - 1, n - 1))},
        "111 functions": {"Al": rng.normal(size=(n + 1, n + 1)), "Ni": rng.normal(size=(n, n))},
        "mixed linear and non-linear": {"Al": rng.normal(size=(n, n)), "Ni": rng.normal(size=(2 * n, 2 * n))},
    }[case]
    _savez(path, **members)
    with pytest.raises(ValueError, match=r"foreign\.asi: .*" + message):
        ACECalculator(alni_basis, active_set=path)


def test_shared_active_set_of_other_potential_is_rejected(tmp_path):
    """Real pairs: the Cu_fs500 active set with the AlNi_fs potential and vice versa."""
    cu_asi = require_shared(FIXTURES / "Cu_fs500.asi")
    with pytest.raises(ValueError, match=r"Cu_fs500\.asi: element 'Al' is missing"):
        ACECalculator(str(fixture_file("AlNi_fs.yaml")), active_set=cu_asi)
    with pytest.raises(ValueError, match=r"AlNi_fs\.asi: element 'Cu' is missing"):
        ACECalculator(str(fixture_file("Cu_fs500.yaml")), active_set=fixture_file("AlNi_fs.asi"))


def test_active_set_object_of_wrong_size_is_rejected(alni_basis, alni_asi_path):
    rng = np.random.default_rng(5)
    n = ALNI_NFUNC
    with pytest.raises(ValueError, match=r"'Ni' has size 100x100"):
        ACECalculator(alni_basis, active_set=ActiveSet({"Al": np.eye(n), "Ni": rng.normal(size=(100, 100))}))
    with pytest.raises(ValueError, match=r"no inverse active set for element 'Ni'"):
        ACECalculator(alni_basis, active_set=ActiveSet({"Al": np.eye(n)}))
    with pytest.raises(ValueError, match=r"sizes are those of a non-linear active set, but it is marked nonlinear=False"):
        ACECalculator(alni_basis, active_set=ActiveSet({"Al": np.eye(2 * n), "Ni": np.eye(2 * n)}, nonlinear=False))
    # the genuine one, as an object, is accepted and gives the grades of the file
    good = ActiveSet.load(alni_asi_path, alni_basis.nfunc)
    ACECalculator(alni_basis, active_set=good)


def test_extra_elements_in_active_set_are_ignored_and_grades_are_right(tmp_path, alni_basis, alni_asi_path):
    """An .asi with an additional element still fits; gamma equals max |x @ ASI| from np.load."""
    from ace_uq_calc.uncertainty.projections import structure_projections

    with np.load(alni_asi_path, allow_pickle=False) as archive:
        inverse = {el: archive[el] for el in archive.files}
    path = tmp_path / "extra.asi"
    _savez(path, Cu=np.eye(4), **inverse)
    calc = ACECalculator(alni_basis, active_set=path)
    atoms = bulk("Al", "fcc", a=4.05, cubic=True) * (2, 1, 1)
    atoms.symbols[::3] = "Ni"
    atoms.rattle(0.1, seed=2)
    atoms.calc = calc
    atoms.get_potential_energy()
    species, x = structure_projections(alni_basis, atoms)
    expected = np.array([np.abs(x[i, :ALNI_NFUNC] @ inverse[alni_basis.elements[s]]).max()
                         for i, s in enumerate(species)])
    assert np.allclose(calc.results["gamma"], expected, rtol=1e-10, atol=1e-12)


# -----------------------------------------------------------------------------------------------------
# files written by the package survive SIGKILL
# -----------------------------------------------------------------------------------------------------

_REWRITER = textwrap.dedent(r"""
    import sys, time
    import numpy as np
    import ace_uq_calc.atomic_io as atomic_io
    kind, target, source_a, source_b = sys.argv[1:5]
    real_fsync = atomic_io.os.fsync

    def slow_fsync(fd):               # a slow disk; tells the parent that a write is under way
        print("fsync", flush=True)
        time.sleep(0.2)
        real_fsync(fd)

    atomic_io.os.fsync = slow_fsync
    if kind == "potential":
        from ace_uq_calc.model.yaml_format import read_potential_file, write_potential_file
        versions = [read_potential_file(source_a), read_potential_file(source_b)]
        write = lambda version: write_potential_file(version, target)
    elif kind == "active_set":
        from ace_uq_calc.uncertainty.active_set import ActiveSet
        versions = [ActiveSet.load(source_a), ActiveSet.load(source_b)]
        write = lambda version: version.save(target)
    else:
        import ase.io
        from ace_uq_calc.io import write_frames
        versions = [ase.io.read(source_a, ":"), ase.io.read(source_b, ":")]
        write = lambda version: write_frames(target, version)
    print("ready", flush=True)
    k = 0
    while True:                       # rewrite the target for ever, alternating the two versions
        write(versions[k % 2])
        k += 1
""")


def _frames(count, n_atoms, seed):
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        atoms = Atoms(f"Al{n_atoms}", positions=rng.uniform(0, 10, size=(n_atoms, 3)), cell=np.eye(3) * 10, pbc=True)
        atoms.info["step"] = len(frames)
        atoms.arrays["gamma"] = rng.uniform(0, 3, n_atoms)
        frames.append(atoms)
    return frames


def _versions(kind, tmp_path):
    """Two versions (paths) of a file of the given kind and a function: path -> comparable content."""
    import ase.io

    if kind == "potential":
        from ace_uq_calc.model.yaml_format import format_potential, write_potential_file

        a = read_potential_file(fixture_file("AlNi_fs.yaml"))
        b = copy.deepcopy(a)
        b.metadata = {"comment": "version B"}
        for spec in b.functions["Al"]:
            spec.coefficients = spec.coefficients * 2.0
        paths = (tmp_path / "a.yaml", tmp_path / "b.yaml")
        write_potential_file(a, paths[0])
        write_potential_file(b, paths[1])
        return paths, lambda path: format_potential(read_potential_file(path))
    if kind == "active_set":
        rng = np.random.default_rng(1)
        paths = (tmp_path / "a.asi", tmp_path / "b.asi")
        for path in paths:
            ActiveSet({"Al": rng.normal(size=(300, 300)), "Ni": rng.normal(size=(300, 300))}).save(path)

        def content(path):
            with np.load(path, allow_pickle=False) as archive:
                return tuple(archive[el].tobytes() for el in ("Al", "Ni"))
        return paths, content
    paths = (tmp_path / "a.xyz", tmp_path / "b.xyz")
    from ace_uq_calc.io import write_frames

    write_frames(paths[0], _frames(40, 50, 1))
    write_frames(paths[1], _frames(40, 50, 2))
    return paths, lambda path: tuple(f.positions.tobytes() + f.arrays["gamma"].tobytes() for f in ase.io.read(path, ":"))


@pytest.mark.parametrize("kind", ["potential", "active_set", "frames"])
def test_sigkill_during_rewrites_leaves_a_complete_file(tmp_path, kind):
    """A writer rewrites the target in a loop and is SIGKILLed at random moments: the target is always
    one of the two complete versions (never partial); interrupted writes only leave a stray .tmp."""
    (path_a, path_b), content = _versions(kind, tmp_path)
    expected = {content(path_a), content(path_b)}
    assert len(expected) == 2
    target = tmp_path / ("target" + path_a.suffix)
    rng = np.random.default_rng(0)
    strays_seen, trials = 0, 5
    for trial in range(trials):
        if trial % 2:
            target.unlink(missing_ok=True)     # also: a kill before the first rename leaves no target
        else:
            target.write_bytes(path_a.read_bytes())
        before = content(target) if target.exists() else None
        process = subprocess.Popen([sys.executable, "-c", _REWRITER, kind, str(target), str(path_a), str(path_b)],
                                   stdout=subprocess.PIPE, text=True, cwd=PROJECT_ROOT)
        assert process.stdout.readline().strip() == "ready"
        mid_write = trial < 2
        if mid_write:                          # kill while the first write is being synced
            assert process.stdout.readline().strip() == "fsync"
        else:
            time.sleep(rng.uniform(0.05, 0.8))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        process.stdout.close()
        if target.exists():
            assert content(target) in expected
        else:
            assert trial % 2, "a target that existed before can never disappear"
        strays = [p for p in tmp_path.iterdir() if p.name.startswith(f".{target.name}.")]
        if mid_write:
            assert (content(target) if target.exists() else None) == before   # still the old file (or none)
            assert strays, "the interrupted write leaves only its temporary file"
        strays_seen += len(strays)
        for stray in strays:
            stray.unlink()
    print(f"{kind}: {strays_seen} of {trials} kills landed inside a write")


_APPENDER = textwrap.dedent(r"""
    import sys, time
    import numpy as np
    from ase import Atoms
    from ace_uq_calc.io import append_frame
    target, pause = sys.argv[1], float(sys.argv[2])
    rng = np.random.default_rng(0)
    for step in range(100000):
        atoms = Atoms("Al60", positions=rng.uniform(0, 10, size=(60, 3)), cell=np.eye(3) * 10, pbc=True)
        atoms.info["step"] = step
        append_frame(target, atoms)
        print(step, flush=True)
        time.sleep(pause)
""")


def _complete_frames(path):
    """Parse extended XYZ frame by frame by hand: (number of complete frames, whether a partial tail exists)."""
    lines = Path(path).read_text().split("\n")
    position, complete = 0, 0
    while position < len(lines) and lines[position] != "":
        natoms = int(lines[position])
        if position + 2 + natoms > len(lines) - 1:         # the last frame line must end with a newline
            return complete, True
        position += 2 + natoms
        complete += 1
    return complete, position < len(lines) - 1


def test_append_frame_killed_between_appends_keeps_every_frame(tmp_path):
    import ase.io

    target = tmp_path / "trajectory.xyz"
    process = subprocess.Popen([sys.executable, "-c", _APPENDER, str(target), "0.05"],
                               stdout=subprocess.PIPE, text=True, cwd=PROJECT_ROOT)
    reported = [int(process.stdout.readline()) for _ in range(6)]
    process.send_signal(signal.SIGKILL)       # the writer is sleeping between appends
    process.wait(timeout=30)
    process.stdout.close()
    frames = ase.io.read(target, ":")
    assert len(frames) in (reported[-1] + 1, reported[-1] + 2)
    assert [f.info["step"] for f in frames] == list(range(len(frames)))
    assert all(len(f) == 60 for f in frames)


def test_append_frame_killed_at_random_moments_keeps_every_complete_frame(tmp_path):
    """Killed anywhere (no pause between appends), every frame reported as appended is complete and
    readable; at most the frame being written at the kill can be cut (see docs/reliability.md)."""
    import ase.io

    target = tmp_path / "trajectory.xyz"
    rng = np.random.default_rng(4)
    before = 0
    for _ in range(3):
        process = subprocess.Popen([sys.executable, "-c", _APPENDER, str(target), "0"],
                                   stdout=subprocess.PIPE, text=True, cwd=PROJECT_ROOT)
        process.stdout.readline()
        time.sleep(rng.uniform(0.02, 0.3))
        process.send_signal(signal.SIGKILL)
        out, _ = process.communicate(timeout=30)
        reported = len(out.split()) + 1
        complete, partial_tail = _complete_frames(target)
        assert complete >= before + reported
        if partial_tail:                      # drop the cut frame (60 atoms: 62 lines) before going on
            lines = target.read_text().split("\n")
            target.write_text("\n".join(lines[:62 * complete]) + "\n")
        frames = ase.io.read(target, ":")
        assert len(frames) == complete and all(len(f) == 60 for f in frames)
        before = complete
