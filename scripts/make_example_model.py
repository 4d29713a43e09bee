"""Generate the bundled example model ``ace_uq_calc/data/Cu_example.yaml`` and its ``.asi``.

PLACEHOLDER until the fitting issue lands: a small linear ACE for Cu fitted by ridge least
squares to per-atom energies of ASE's EMT potential (a toy reference, not DFT) on rattled and
strained fcc cells at several temperatures. It is for demonstrations only; do not use it for science.

Run from the project root:  python scripts/make_example_model.py
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from ase.build import bulk, fcc100, fcc111
from ase.calculators.emt import EMT

from ace_uq_calc.fitting.basis_construction import BasisLimits, new_potential, prune_dependent_functions
from ace_uq_calc.potential.basis import build_basis
from ace_uq_calc.potential.yaml_format import write_potential_file
from ace_uq_calc.uncertainty.active_set import build_active_set_from_projections
from ace_uq_calc.uncertainty.projections import structure_projections

OUT = Path(__file__).resolve().parent.parent / "ace_uq_calc" / "data"


def training_structures(seed=0):
    rng = np.random.default_rng(seed)
    frames = []
    for a in np.linspace(3.45, 3.80, 8):
        for amplitude in (0.0, 0.05, 0.1, 0.15, 0.2):
            atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat((2, 2, 2))
            strain = np.eye(3) + rng.normal(scale=0.01, size=(3, 3))
            atoms.set_cell(atoms.cell.array @ strain, scale_atoms=True)
            atoms.positions += rng.normal(scale=amplitude, size=atoms.positions.shape)
            frames.append(atoms)
    for k in range(12):   # vacancies and (100)/(111) surfaces, rattled
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
        del atoms[int(rng.integers(len(atoms)))]
        atoms.rattle(0.1, seed=k)
        frames.append(atoms)
        slab = fcc111("Cu", size=(2, 2, 4), vacuum=5.0, a=3.61) if k % 2 else fcc100("Cu", size=(2, 2, 4), vacuum=5.0)
        slab.rattle(0.1, seed=100 + k)
        frames.append(slab)
    return frames


def main():
    pot = new_potential(["Cu"], BasisLimits(nradmax_by_rank=(8, 4, 3, 2), lmax_by_rank=(0, 3, 2, 1)), rcut=5.0)
    pot = prune_dependent_functions(pot)
    pot.metadata = {
        "comment": "ace_uq_calc EXAMPLE model (placeholder): linear ACE fitted to ASE EMT Cu per-atom energies, "
                   "not to DFT; for demonstrations only",
        "generated_by": "scripts/make_example_model.py",
    }
    basis = build_basis(pot)
    frames = training_structures()
    xs, ys = [], []
    for atoms in frames:
        atoms.calc = EMT()
        energies = atoms.get_potential_energies()
        _, x = structure_projections(basis, atoms)
        xs.append(x)
        ys.append(energies)
    X = np.concatenate(xs)
    y = np.concatenate(ys)
    scale = np.abs(X).max(axis=0) + 1e-12
    Xs = X / scale
    lam = 1e-6 * len(y)
    coef = np.linalg.solve(Xs.T @ Xs + lam * np.eye(Xs.shape[1]), Xs.T @ y) / scale
    rmse = np.sqrt(np.mean((X @ coef - y) ** 2))
    print(f"{basis.nfunc['Cu']} functions, {len(y)} training atoms, per-atom energy RMSE {1000 * rmse:.2f} meV")
    ordered = basis.ordered_functions["Cu"]
    for spec, c in zip(ordered, coef):
        spec.coefficients = np.array([c])
    OUT.mkdir(exist_ok=True)
    write_potential_file(pot, OUT / "Cu_example.yaml")
    basis = build_basis(pot)
    active = build_active_set_from_projections({"Cu": X}, tolerance=1.001)
    active.save(OUT / "Cu_example.asi")
    print(f"wrote {OUT / 'Cu_example.yaml'} and .asi (condition number {active.condition_numbers['Cu']:.3g})")


if __name__ == "__main__":
    main()
