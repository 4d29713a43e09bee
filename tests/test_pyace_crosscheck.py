"""Optional cross-check: pacemaker (python-ace, run as a black box in its own interpreter) loads the
potentials and active sets this package fits and builds, and reproduces our energies, forces and
gamma to the tolerances of pacemaker-format.md section 13.4.

Skipped unless python-ace is importable: set ACE_UQ_PYACE_PYTHON to the python of a throwaway venv
with ``pip install python-ace`` (it is never a dependency of this project), or run the tests in an
environment where ``import pyace`` works.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator


def _pyace_python():
    candidates = [os.environ.get("ACE_UQ_PYACE_PYTHON"), sys.executable]
    for python in candidates:
        if not python:
            continue
        try:
            probe = subprocess.run([python, "-c", "import pyace, ase"], capture_output=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return python
    return None


PYACE = _pyace_python()
pytestmark = pytest.mark.skipif(PYACE is None, reason="python-ace not available (set ACE_UQ_PYACE_PYTHON to "
                                                      "the python of a venv with python-ace)")

_RUNNER = r"""
import json, sys
import ase.io
from pyace import PyACECalculator
pot, asi, frames_path = sys.argv[1:4]
calc = PyACECalculator(pot)
calc.set_active_set(asi)
out = []
for atoms in ase.io.read(frames_path, ":"):
    atoms.calc = calc
    e = atoms.get_potential_energy()
    f = atoms.get_forces()
    out.append({"energy": float(e), "forces": f.tolist(), "gamma": [float(g) for g in calc.results["gamma"]]})
print(json.dumps(out))
"""


def _structures(elements, count, seed):
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(count):
        atoms = bulk(elements[0], "fcc", a=3.6 + 0.1 * rng.normal(), cubic=True).repeat((2, 2, 2))
        if len(elements) > 1:
            pick = rng.random(len(atoms)) < 0.5
            atoms.symbols[pick] = elements[1]
        atoms.rattle(0.08, seed=seed * 100 + k)
        frames.append(atoms)
    return frames


def _term_scale(calc, atoms):
    """sum over atoms and functions of |c_f B_f(i)| (eV): the magnitude the energy is summed from."""
    from ace_uq_calc.engine.evaluate import evaluate

    basis = calc.basis
    species = basis.species_of(atoms.get_chemical_symbols())
    run = evaluate(basis, atoms.positions, atoms.cell.array, atoms.pbc, species, forces=False, projections=True)
    total = 0.0
    for i, e in enumerate(species):
        f0, f1 = basis.function_start[e], basis.function_start[e + 1]
        total += float(np.abs(basis.coefficients[f0:f1, 0] * run.projections[i, :f1 - f0]).sum())
    return total


def _asi_grades(calc, atoms):
    """(max_j |(x ASI)_j| per atom from the .asi matrices alone, the rounding amplification kappa of each)."""
    from ace_uq_calc.engine.evaluate import evaluate
    from ace_uq_calc.uncertainty.grades import gamma_amplification

    basis = calc.basis
    species = basis.species_of(atoms.get_chemical_symbols())
    x = evaluate(basis, atoms.positions, atoms.cell.array, atoms.pbc, species, forces=False,
                 projections=True).projections
    grades, kappa = np.zeros(len(atoms)), np.zeros(len(atoms))
    for e, el in enumerate(basis.elements):
        mine = species == e
        asi = calc.active_set.inverse[el]
        grades[mine] = np.abs(x[mine, :asi.shape[0]] @ asi).max(axis=1)
        kappa[mine] = gamma_amplification(x[mine, :asi.shape[0]], asi)
    return grades, kappa


def _compare(tmp_path, pot_path, asi_path, frames):
    import ase.io

    from ace_uq_calc import ACECalculator

    frames_path = tmp_path / "frames.xyz"
    ase.io.write(frames_path, frames)
    frames = ase.io.read(frames_path, ":")      # both sides evaluate the positions as written (rounded)
    run = subprocess.run([PYACE, "-c", _RUNNER, str(pot_path), str(asi_path), str(frames_path)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    theirs = json.loads(run.stdout.strip().splitlines()[-1])
    calc = ACECalculator(pot_path, active_set=asi_path, reference_energies=False)   # pacemaker has no E0
    worst = {"E": 0.0, "E_plain": 0.0, "F": 0.0, "gamma": 0.0}
    for atoms, ref in zip(frames, theirs):
        atoms = atoms.copy()
        atoms.calc = calc
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        gamma = calc.results["gamma"]
        # relative to the scale of the sum's rounding: sum_i sum_f |c_f B_f(i)| (fits on non-orthogonal
        # radial bases have coefficients of ~1e4 that cancel to energies of ~10 eV)
        worst["E"] = max(worst["E"], abs(energy - ref["energy"]) / max(abs(ref["energy"]), _term_scale(calc, atoms), 1.0))
        worst["E_plain"] = max(worst["E_plain"], abs(energy - ref["energy"]) / max(abs(ref["energy"]), 1.0))
        f_ref = np.array(ref["forces"])
        worst["F"] = max(worst["F"], np.abs(forces - f_ref).max() / max(np.abs(f_ref).max(), 1.0))
        g_ref = np.array(ref["gamma"])
        # pacemaker grades with the .asi alone: max_j |(x ASI)_j|; this package's gamma adds, for active sets
        # that span a subspace, the distance from it (companion file), so it is never smaller
        pace_view, kappa = _asi_grades(calc, atoms)
        worst["gamma"] = max(worst["gamma"], float(np.max(np.abs(pace_view - g_ref) / (kappa * g_ref + 1.0))))
        assert np.all(gamma >= g_ref * (1 - 1e-9) - 1e-12)
    assert worst["E"] <= 1e-12, worst
    assert worst["F"] <= 1e-10, worst
    assert worst["gamma"] <= 1e-12, worst        # |dgamma| <= 1e-12 (kappa gamma + 1), section 13.4
    print("worst relative differences to pacemaker:", worst)
    return worst


def test_pacemaker_reproduces_the_bundled_fitted_model(tmp_path):
    from ace_uq_calc.demo import example_files

    pot, asi = example_files()
    _compare(tmp_path, pot, asi, _structures(["Cu"], 4, seed=0))


@pytest.mark.parametrize("radial_basis", ["SBessel", "ChebExpCos", "ChebPow"])
def test_pacemaker_reproduces_a_fresh_two_element_fit_and_its_active_set(tmp_path, radial_basis):
    from ace_uq_calc.fitting.basis_construction import (
        BasisLimits,
        new_potential,
        prune_dependent_functions,
    )
    from ace_uq_calc.fitting.linear_fit import fit_linear
    from ace_uq_calc.model.yaml_format import write_potential_file
    from ace_uq_calc.uncertainty.build import build_active_set

    train = []
    for atoms in _structures(["Cu", "Ni"], 16, seed=1):
        atoms.calc = EMT()
        e, f = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f)
        train.append(atoms)
    pot = new_potential(["Cu", "Ni"], BasisLimits((6, 3, 2), (0, 2, 1)), rcut=4.5, radbase=radial_basis)
    pot = prune_dependent_functions(pot, count=600)
    result = fit_linear(pot, train)
    pot_path = tmp_path / "CuNi.yaml"
    write_potential_file(result.potential, pot_path)
    active = build_active_set(result.potential, train)
    asi_path = tmp_path / "CuNi.asi"
    active.save(asi_path)
    _compare(tmp_path, pot_path, asi_path, _structures(["Ni", "Cu"], 3, seed=2))
