"""Design rows of linear ACE models: energy, forces and virial as linear functions of the coefficients.

For a potential whose every element has one density with F(rho) = rho, the energy is
E = baseline + sum_g c_g X_g, and forces and virial are linear in c as well. The baseline is the
part that does not depend on the coefficients (core repulsion), evaluated once per structure.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engine.evaluate import evaluate
from ..kernels.fitting import FunctionSet, linear_design_rows
from ..kernels.neighbours import build_neighbour_list
from ..model.basis import ACEBasis


@dataclass
class StructureDesign:
    energy: np.ndarray        # (m,) dE/dc (eV)
    forces: np.ndarray        # (3N, m) dF/dc (eV/A)
    virial: np.ndarray        # (9, m) d(sum r_ij (x) dE/dr_ij)/dc (eV)
    baseline_energy: float    # energy with all coefficients zero (core repulsion), eV
    baseline_forces: np.ndarray   # (3N,)
    baseline_virial: np.ndarray   # (9,)


def is_linear(basis: ACEBasis) -> bool:
    """True when every element has one density with F(rho) = rho (weight 1, exponent 1)."""
    return bool(np.all(basis.ndensity == 1) and np.allclose(basis.embedding_weight[:, 0], 1.0)
                and np.allclose(basis.embedding_exponent[:, 0], 1.0))


def structure_design(basis: ACEBasis, atoms, with_forces: bool = True) -> StructureDesign:
    """Design rows of one ASE structure for a linear basis (see module docstring)."""
    if not is_linear(basis):
        raise ValueError("linear fitting needs one density per element with F(rho) = rho")
    species = basis.species_of(atoms.get_chemical_symbols())
    positions = np.ascontiguousarray(atoms.positions, dtype=np.float64)
    cell = np.ascontiguousarray(atoms.cell.array, dtype=np.float64)
    pbc = np.asarray(atoms.pbc, dtype=bool)
    nl = build_neighbour_list(positions, cell, pbc, species, basis.cutoff_matrix)
    m = int(basis.function_start[-1])
    n = len(atoms)
    energy = np.zeros(m)
    forces = np.zeros((3 * n if with_forces else 0, m))
    virial = np.zeros((9, m))
    if with_forces:
        functions = FunctionSet(
            basis.radial_tables, basis.radial_scale, basis.radial_nlut, int(basis.nradbase), int(basis.nradmax),
            int(basis.lmax), basis.harmonic_norm, basis.function_start, basis.function_rank,
            basis.function_a1_index, basis.function_ms_start, basis.ms_coefficient, basis.ms_factor)
        linear_design_rows(species, nl, functions, energy, forces, virial)
    else:
        res = evaluate(basis, positions, cell, pbc, species, forces=False, projections=True,
                       neighbour_list=nl)
        for e in range(basis.n_elements):
            mask = species == e
            f0, f1 = basis.function_start[e], basis.function_start[e + 1]
            energy[f0:f1] = res.projections[mask, : f1 - f0].sum(axis=0)
    baseline_e, baseline_f, baseline_v = 0.0, np.zeros(3 * n), np.zeros(9)
    if np.any(basis.radial_tables[:, :, -1, :] != 0.0):   # core repulsion present
        zero = _zero_coefficient_basis(basis)
        res = evaluate(zero, positions, cell, pbc, species, forces=with_forces, neighbour_list=nl)
        baseline_e = res.energy
        if with_forces:
            baseline_f = res.forces.ravel()
            baseline_v = res.virial.ravel()
    return StructureDesign(energy, forces, virial, baseline_e, baseline_f, baseline_v)


def _zero_coefficient_basis(basis: ACEBasis) -> ACEBasis:
    import dataclasses

    return dataclasses.replace(basis, coefficients=np.zeros_like(basis.coefficients))
