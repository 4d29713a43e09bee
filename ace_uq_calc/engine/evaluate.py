"""Evaluation of one basis on one structure, without ASE: a model with its own coefficients
(:func:`evaluate`), or K members that share the basis and differ in their coefficients
(:func:`evaluate_shared`, one descriptor pass).

Both validate the input (:mod:`ace_uq_calc.engine.structure`), take the neighbour list (built, given
or from a :class:`~ace_uq_calc.engine.neighbour_cache.NeighbourListCache`), call the Numba kernels on
the chosen number of threads and check that the results are finite.

Units: positions and cell Angstrom; energies eV; forces eV/Angstrom; virial eV
(sum over pairs of r_ij (x) dE/dr_ij).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..kernels.checks import all_finite
from ..kernels.ensemble import accumulate_ensemble_forces, evaluate_ensemble_atoms
from ..kernels.evaluator import accumulate_forces, evaluate_atoms
from ..kernels.inputs import AtomOutputs, EnsembleTree, ensemble_tree
from ..model.basis import ACEBasis
from ..model.kernel_inputs import basis_arrays, basis_layout
from .structure import checked_neighbour_list, prepared_structure
from .threads import KernelThreads, kernel_threads


@dataclass
class Evaluation:
    """One model on one structure."""

    energy: float                  # eV
    energies: np.ndarray           # (N,) eV
    forces: np.ndarray | None      # (N, 3) eV/A
    virial: np.ndarray | None      # (3, 3) eV, sum_ij (r_ij)_a (dE/dr_ij)_b
    projections: np.ndarray | None           # (N, max nfunc) linear B-projections, pacemaker order
    nonlinear_projections: np.ndarray | None  # (N, max nfunc * max ndensity)
    densities: np.ndarray          # (N, max ndensity)
    dF_drho: np.ndarray            # (N, max ndensity)
    neighbour_count: np.ndarray    # (N,) number of neighbours within the bond cut-offs


@dataclass
class MembersEvaluation:
    """K members of one basis on one structure (reference energies not included)."""

    energies: np.ndarray             # (K, N) eV
    forces: np.ndarray | None        # (K, N, 3) eV/A
    virial: np.ndarray | None        # (K, 3, 3) eV
    projections: np.ndarray | None   # (N, max nfunc) linear B-projections (shared by all members)
    neighbour_count: np.ndarray      # (N,)


def _raise_non_finite(basis: ACEBasis, results) -> None:
    """FloatingPointError for the first non-finite result (overflowing parameters), naming the potential
    and the atoms; ``results``: (name, array or None, axis of the atoms or None)."""
    for name, values, atom_axis in results:
        if values is None or np.all(np.isfinite(values)):
            continue
        where = ""
        if atom_axis is not None and values.shape[atom_axis]:
            atoms = np.unique(np.nonzero(~np.isfinite(values))[atom_axis])
            where = f" of atoms {atoms[:10].tolist()}"
        raise FloatingPointError(
            f"the potential {basis.potential.source} gives non-finite {name}{where}: its parameters "
            "overflow at this geometry"
        )


def evaluate(
    basis: ACEBasis,
    positions,
    cell,
    pbc,
    species,
    forces: bool = True,
    projections: bool = False,
    nonlinear: bool = False,
    neighbour_list=None,
    neighbour_cache=None,
    num_threads: int | None = None,
) -> Evaluation:
    """Energies (and optionally forces, virial, projections) of one structure.

    positions (N, 3) Angstrom; cell (3, 3) rows = lattice vectors, Angstrom; pbc (3,) bool;
    species (N,) species indices of ``basis.elements``.
    neighbour_list: a ready :class:`~ace_uq_calc.kernels.neighbours.NeighbourList` (else one is built,
    or taken from ``neighbour_cache``). num_threads: Numba threads for the kernels (None: the current
    setting); structures below :data:`~ace_uq_calc.engine.threads.PARALLEL_MIN_ATOMS` atoms use one.
    """
    positions, cell, pbc, species = prepared_structure(basis, positions, cell, pbc, species)
    n_atoms = len(positions)
    threads = kernel_threads(n_atoms, num_threads)
    with KernelThreads(threads):
        nl = checked_neighbour_list(basis, positions, cell, pbc, species, neighbour_list, neighbour_cache)
        max_nd = basis.coefficients.shape[1]
        max_nf = basis.max_nfunc
        energies = np.empty(n_atoms)                                       # every entry written by the kernel
        pair_gradient = np.empty((len(nl.distance) if forces else 0, 3))  # every entry written by the kernel
        proj = np.zeros((n_atoms if projections else 0, max_nf))
        nlproj = np.zeros((n_atoms if nonlinear else 0, max_nf * max_nd))
        densities = np.zeros((n_atoms, max_nd))
        dF = np.zeros((n_atoms, max_nd))
        if n_atoms:
            evaluate_atoms(species, nl, basis_arrays(basis), basis_layout(basis), basis.coefficients, forces,
                           projections, nonlinear, min(n_atoms, threads),
                           AtomOutputs(energies, pair_gradient, proj, nlproj, densities, dF))
    force_arr = virial = None
    if forces:
        force_arr = np.empty((n_atoms, 3))
        virial = np.empty((3, 3))
        accumulate_forces(nl.first, nl.index, nl.vector, pair_gradient, force_arr, virial)
    energy = float(energies.sum())
    if not (math.isfinite(energy) and all_finite(energies) and (force_arr is None or all_finite(force_arr))
            and (virial is None or all_finite(virial)) and (not projections or all_finite(proj))
            and (not nonlinear or all_finite(nlproj))):
        _raise_non_finite(basis, [("energies", energies, 0), ("energy", np.array(energy), None),
                                  ("forces", force_arr, 0), ("virial", virial, None),
                                  ("projections", proj, 0), ("nonlinear projections", nlproj, 0)])
    return Evaluation(
        energy=energy,
        energies=energies,
        forces=force_arr,
        virial=virial,
        projections=proj if projections else None,
        nonlinear_projections=nlproj if nonlinear else None,
        densities=densities,
        dF_drho=dF,
        neighbour_count=np.diff(nl.first),
    )


def evaluate_shared(basis: ACEBasis, member_coefficients: np.ndarray, positions, cell, pbc, species,
                    forces: bool = True, projections: bool = False, neighbour_cache=None,
                    num_threads: int | None = None, tree: EnsembleTree | None = None) -> MembersEvaluation:
    """K members sharing ``basis`` and differing in ``member_coefficients`` (F, max ndensity, K).

    ``tree``: the members' :func:`~ace_uq_calc.kernels.inputs.ensemble_tree` if the caller keeps it
    (computed here otherwise). Inputs otherwise as for :func:`evaluate`.
    """
    coef = np.ascontiguousarray(member_coefficients, dtype=np.float64)
    if coef.ndim != 3 or coef.shape[:2] != basis.coefficients.shape or coef.shape[2] < 1:
        raise ValueError(f"member_coefficients must have shape {basis.coefficients.shape + ('K',)} with K >= 1, "
                         f"found {coef.shape}")
    positions, cell, pbc, species = prepared_structure(basis, positions, cell, pbc, species)
    if tree is None:
        tree = ensemble_tree(basis_layout(basis), basis.function_start, coef)
    n_atoms = len(positions)
    n_members = coef.shape[2]
    threads = kernel_threads(n_atoms, num_threads)
    with KernelThreads(threads):
        nl = checked_neighbour_list(basis, positions, cell, pbc, species, neighbour_cache=neighbour_cache)
        energies = np.empty((n_members, n_atoms))
        pair_gradient = np.empty((n_members, len(nl.distance) if forces else 0, 3))
        proj = np.zeros((n_atoms if projections else 0, basis.max_nfunc))
        if n_atoms:
            evaluate_ensemble_atoms(species, nl, basis_arrays(basis), basis_layout(basis), coef, tree, forces,
                                    projections, min(n_atoms, threads), energies, pair_gradient, proj)
    force_arr = virial = None
    if forces:
        force_arr = np.empty((n_members, n_atoms, 3))
        virial = np.empty((n_members, 3, 3))
        accumulate_ensemble_forces(nl.first, nl.index, nl.vector, pair_gradient, force_arr, virial)
    if not (all_finite(energies.ravel()) and (force_arr is None or all_finite(force_arr.reshape(-1, 3)))
            and (virial is None or all_finite(virial.reshape(-1, 3)))):
        _raise_non_finite(basis, [("member energies", energies, 1), ("member forces", force_arr, 1),
                                  ("member virials", virial, None)])
    return MembersEvaluation(energies=energies, forces=force_arr, virial=virial,
                             projections=proj if projections else None, neighbour_count=np.diff(nl.first))
