"""One evaluation of an ACE potential on one structure, without ASE.

:func:`evaluate` validates the input, builds the neighbour list, calls the Numba kernels and
returns an :class:`Evaluation` (energies in eV, forces in eV/Angstrom, virial in eV, projections).
The ASE calculator is a thin layer over it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .kernels.evaluator import accumulate_forces, evaluate_atoms
from .kernels.neighbours import build_neighbour_list, minimum_pair_distance
from .potential.basis import ACEBasis

#: Pairs closer than this (Angstrom) are rejected: the radial tables of pacemaker start at one knot.
MIN_PAIR_DISTANCE = 1e-3


@dataclass
class Evaluation:
    energy: float                  # eV
    energies: np.ndarray           # (N,) eV
    forces: np.ndarray | None      # (N, 3) eV/A
    virial: np.ndarray | None      # (3, 3) eV, sum_ij (r_ij)_a (dE/dr_ij)_b
    projections: np.ndarray | None           # (N, max nfunc) linear B-projections, pacemaker order
    nonlinear_projections: np.ndarray | None  # (N, max nfunc * max ndensity)
    densities: np.ndarray          # (N, max ndensity)
    dF_drho: np.ndarray            # (N, max ndensity)
    neighbour_count: np.ndarray    # (N,) number of neighbours within the bond cut-offs


def check_structure(positions, cell, pbc):
    """Raise ValueError for non-finite positions or cell (eV/Angstrom units are not checked here)."""
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must have shape (N, 3), found {positions.shape}")
    if not np.all(np.isfinite(positions)):
        bad = np.unique(np.nonzero(~np.isfinite(positions))[0])
        raise ValueError(f"positions of atoms {bad[:10].tolist()} are NaN or infinite")
    if np.any(pbc) and not np.all(np.isfinite(cell)):
        raise ValueError("the cell contains NaN or infinite entries")


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
) -> Evaluation:
    """Energies (and optionally forces, virial, projections) of one structure.

    positions (N, 3) Angstrom; cell (3, 3) rows = lattice vectors, Angstrom; pbc (3,) bool;
    species (N,) species indices of ``basis.elements``.
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    cell = np.ascontiguousarray(cell, dtype=np.float64).reshape(3, 3)
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    species = np.ascontiguousarray(species, dtype=np.int64)
    check_structure(positions, cell, pbc)
    n_atoms = len(positions)
    if neighbour_list is None:
        neighbour_list = build_neighbour_list(positions, cell, pbc, species, basis.cutoff_matrix)
    nl = neighbour_list
    if len(nl.distance):
        dmin, i, j = minimum_pair_distance(nl)
        if dmin < MIN_PAIR_DISTANCE:
            raise ValueError(
                f"atoms {i} and {j} are {dmin:.3g} Angstrom apart (closer than {MIN_PAIR_DISTANCE} Angstrom)"
            )
    max_nd = basis.coefficients.shape[1]
    max_nf = basis.max_nfunc
    npairs = len(nl.distance)
    energies = np.zeros(n_atoms)
    pair_gradient = np.zeros((npairs if forces else 0, 3))
    proj = np.zeros((n_atoms if projections else 0, max_nf))
    nlproj = np.zeros((n_atoms if nonlinear else 0, max_nf * max_nd))
    densities = np.zeros((n_atoms, max_nd))
    dF = np.zeros((n_atoms, max_nd))
    if n_atoms:
        evaluate_atoms(
            species, nl.first, nl.index, nl.vector, nl.distance,
            basis.radial_tables, basis.radial_scale, basis.radial_nlut, basis.bond_r_in, basis.bond_delta_in,
            basis.zbl, basis.cutoff_max,
            basis.nradbase, basis.nradmax, basis.lmax, basis.harmonic_norm,
            basis.function_start, basis.function_rank, basis.function_a1_index, basis.function_ms_start,
            basis.coefficients, basis.ms_coefficient, basis.ms_factor,
            basis.ndensity, basis.embedding_weight, basis.embedding_exponent, basis.embedding_kind,
            basis.rho_core_cut, basis.drho_core_cut,
            forces, projections, nonlinear,
            energies, pair_gradient, proj, nlproj, densities, dF,
        )
    force_arr = virial = None
    if forces:
        force_arr = np.zeros((n_atoms, 3))
        virial = np.zeros((3, 3))
        if n_atoms:
            accumulate_forces(nl.first, nl.index, nl.vector, pair_gradient, force_arr, virial)
    return Evaluation(
        energy=float(energies.sum()),
        energies=energies,
        forces=force_arr,
        virial=virial,
        projections=proj if projections else None,
        nonlinear_projections=nlproj if nonlinear else None,
        densities=densities,
        dF_drho=dF,
        neighbour_count=np.diff(nl.first),
    )
