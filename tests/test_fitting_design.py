"""Design rows of linear models reproduce the evaluator: E = X c, F = D c, virial = V c."""
import dataclasses

import numpy as np
import pytest
from ase.build import bulk
from conftest import fixture_file


def _linearised(path, seed=0, core=False):
    """A linear (one density, F = rho) version of a fixture potential with random coefficients."""
    from ace_uq_calc.model.basis import build_basis
    from ace_uq_calc.model.yaml_format import read_potential_file

    pot = read_potential_file(path)
    rng = np.random.default_rng(seed)
    for el, emb in pot.embeddings.items():
        pot.embeddings[el] = dataclasses.replace(emb, npoti="FinnisSinclairShiftedScaled", weights=np.ones(1),
                                                 exponents=np.ones(1))
        for spec in pot.functions[el]:
            spec.coefficients = rng.normal(scale=0.1, size=1)
    if not core:
        for key, bond in pot.bonds.items():
            pot.bonds[key] = dataclasses.replace(bond, core_repulsion=(0.0, 0.0))
    return build_basis(pot)


def _alni_structure(seed=0):
    rng = np.random.default_rng(seed)
    atoms = bulk("Al", "fcc", a=3.9, cubic=True).repeat((2, 2, 1))
    atoms.set_chemical_symbols(list(np.where(rng.random(len(atoms)) < 0.5, "Al", "Ni")))
    atoms.rattle(0.15, seed=seed)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + rng.normal(scale=0.02, size=(3, 3))), scale_atoms=True)
    return atoms


@pytest.mark.parametrize("core", [False, True])
def test_design_rows_reproduce_evaluator(core):
    from ace_uq_calc.engine.evaluate import evaluate
    from ace_uq_calc.fitting.design import structure_design

    basis = _linearised(fixture_file("AlNi_fs.yaml"), core=core)
    atoms = _alni_structure()
    if core:   # one pair inside the inner cut-off, where the core repulsion acts
        atoms.positions[1] = atoms.positions[0] + np.array([1.7, 0.3, 0.0])
    d = structure_design(basis, atoms)
    c = basis.coefficients[:, 0]
    res = evaluate(basis, atoms.positions, atoms.cell.array, atoms.pbc, basis.species_of(atoms.get_chemical_symbols()))
    assert d.energy @ c + d.baseline_energy == pytest.approx(res.energy, rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(d.forces @ c + d.baseline_forces, res.forces.ravel(), rtol=0,
                               atol=1e-10 * np.abs(res.forces).max())
    np.testing.assert_allclose(d.virial @ c + d.baseline_virial, res.virial.ravel(), rtol=0,
                               atol=1e-10 * np.abs(res.virial).max())
    if core:
        assert d.baseline_energy != 0.0
    e_only = structure_design(basis, atoms, with_forces=False)
    np.testing.assert_allclose(e_only.energy, d.energy, rtol=1e-12, atol=1e-12)


def test_design_rows_on_cu_fs500_basis():
    from ace_uq_calc.engine.evaluate import evaluate
    from ace_uq_calc.fitting.design import structure_design

    basis = _linearised(fixture_file("Cu_fs500.yaml"))
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.1, seed=3)
    d = structure_design(basis, atoms)
    c = basis.coefficients[:, 0]
    res = evaluate(basis, atoms.positions, atoms.cell.array, atoms.pbc, basis.species_of(atoms.get_chemical_symbols()))
    assert d.energy @ c == pytest.approx(res.energy, rel=1e-12)
    np.testing.assert_allclose(d.forces @ c, res.forces.ravel(), rtol=0, atol=1e-10 * np.abs(res.forces).max())
