"""One evaluation of an ACE potential on one structure, without ASE.

:func:`evaluate` validates the input, builds the neighbour list, calls the Numba kernels and
returns an :class:`Evaluation` (energies in eV, forces in eV/Angstrom, virial in eV, projections).
The ASE calculator is a thin layer over it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

from .kernels.checks import all_finite, max_squared_displacement, neighbour_list_summary, species_in_range
from .kernels.evaluator import accumulate_forces, evaluate_atoms
from .kernels.inputs import AtomOutputs
from .model.kernel_inputs import basis_arrays, basis_layout
from .kernels.neighbours import NeighbourList, build_neighbour_list, minimum_pair_distance, refresh_neighbour_list
from .model.basis import ACEBasis

#: Pairs closer than this (Angstrom) are rejected: the radial tables of pacemaker start at one knot.
MIN_PAIR_DISTANCE = 1e-3

#: Structures in which an atom has more neighbours than this within the cut-off are rejected. A solid
#: at twice its normal density with a 12 Angstrom cut-off has about 3000; the limit only stops absurd
#: inputs (a periodic cell far smaller than the cut-off, atoms piled up) from running for minutes or
#: exhausting memory.
MAX_NEIGHBOURS_PER_ATOM = 100_000


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
    """Raise ValueError for malformed or non-finite positions or cell (any entry, periodic or not)."""
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must have shape (N, 3), found {positions.shape}")
    if not np.all(np.isfinite(positions)):
        bad = np.unique(np.nonzero(~np.isfinite(positions))[0])
        raise ValueError(f"positions of atoms {bad[:10].tolist()} are NaN or infinite")
    if not np.all(np.isfinite(cell)):
        raise ValueError(f"the cell contains NaN or infinite entries: {cell.tolist()}")


def _check_species(species, n_atoms: int, n_elements: int):
    if species.shape != (n_atoms,):
        raise ValueError(f"species must have shape ({n_atoms},), found {species.shape}")
    if n_atoms and (species.min() < 0 or species.max() >= n_elements):
        raise ValueError(f"species indices must lie in 0..{n_elements - 1}, found {species.min()}..{species.max()}")


_UNIT_BALL = {1: 2.0, 2: np.pi, 3: 4.0 * np.pi / 3.0}


def _check_image_density(n_atoms: int, cell, pbc, cutoff: float):
    """ValueError before the neighbour list is built when the periodic cell is so small that every atom
    would have more than MAX_NEIGHBOURS_PER_ATOM neighbours (own periodic images, plus the other atoms
    of the cell for three periodic directions). Degenerate cells are left to the neighbour list."""
    periodic_rows = cell[pbc]
    k = len(periodic_rows)
    if k == 0 or n_atoms == 0 or cutoff <= 0.0:
        return
    lengths = np.linalg.norm(periodic_rows, axis=1)
    measure = float(np.sqrt(max(np.linalg.det(periodic_rows @ periodic_rows.T), 0.0)))
    if not measure > 1e-10 * float(np.prod(lengths)):
        return
    images = _UNIT_BALL[k] * cutoff ** k / measure * (n_atoms if k == 3 else 1)
    if images > MAX_NEIGHBOURS_PER_ATOM:
        kind = {1: "length", 2: "area", 3: "volume"}[k]
        raise ValueError(
            f"the periodic cell is far too small for the cut-off {cutoff:g} Angstrom: cell {kind} "
            f"{measure:.3g}, about {images:.3g} neighbours per atom (limit {MAX_NEIGHBOURS_PER_ATOM})"
        )


def _check_duplicate_positions(positions):
    """ValueError for two atoms at exactly the same position, before the neighbour list is built: with
    all positions left at zero (a common scripting slip) the list would hold N^2 pairs and could exhaust
    memory before the distance check below runs. O(N log N)."""
    if len(positions) < 2:
        return
    order = np.lexsort(positions.T[::-1])
    ordered = positions[order]
    same = np.all(ordered[1:] == ordered[:-1], axis=1)
    if same.any():
        k = int(np.argmax(same))
        i, j = sorted((int(order[k]), int(order[k + 1])))
        raise ValueError(
            f"atoms {i} and {j} are 0 Angstrom apart (closer than {MIN_PAIR_DISTANCE} Angstrom): "
            "they sit at the same position"
        )


def _check_neighbour_list(nl, n_atoms: int):
    if len(nl.first) != n_atoms + 1:
        raise ValueError(f"neighbour list is for {len(nl.first) - 1} atoms, the structure has {n_atoms}")
    if len(nl.index) and (nl.index.min() < 0 or nl.index.max() >= n_atoms):
        raise ValueError("neighbour list refers to atoms outside the structure")
    counts = np.diff(nl.first)
    if n_atoms and counts.max() > MAX_NEIGHBOURS_PER_ATOM:
        i = int(np.argmax(counts))
        raise ValueError(
            f"atom {i} has {int(counts[i])} neighbours within the cut-off (limit {MAX_NEIGHBOURS_PER_ATOM}): "
            "atoms piled up far beyond any material density, or a periodic cell far smaller than the cut-off"
        )


def _check_finite(basis: ACEBasis, **arrays):
    """FloatingPointError naming the atoms when a result is NaN or infinite (overflowing parameters)."""
    for name, values in arrays.items():
        if values is None or np.all(np.isfinite(values)):
            continue
        if name != "virial" and 1 <= values.ndim <= 2 and values.shape[0]:
            bad = np.unique(np.nonzero(~np.isfinite(values.reshape(values.shape[0], -1)))[0])
            where = f" of atoms {bad[:10].tolist()}"
        else:
            where = ""
        raise FloatingPointError(
            f"the potential {basis.potential.source} gives non-finite {name}{where}: its parameters "
            "overflow at this geometry"
        )


#: Structures with fewer atoms than this are evaluated by one thread whatever the thread setting: a
#: parallel region costs tens of microseconds on an idle machine and, when another process holds a
#: core, a wait for a scheduler time slice (milliseconds), against about 3 ms of work for 32 atoms.
PARALLEL_MIN_ATOMS = 64


class _Threads:
    """Context manager: run the Numba kernels with ``count`` threads (None: leave the setting), and
    restore the previous setting. ``numba.set_num_threads`` is per Python thread."""

    __slots__ = ("count", "previous")

    def __init__(self, count):
        self.count = count
        self.previous = None

    def __enter__(self):
        if self.count is not None:
            self.previous = numba.get_num_threads()
            if self.count != self.previous:
                numba.set_num_threads(self.count)
        return self

    def __exit__(self, *exc):
        if self.previous is not None and self.previous != self.count:
            numba.set_num_threads(self.previous)
        return False


def kernel_threads(n_atoms: int, num_threads=None) -> int:
    """Threads used for a structure of n_atoms: ``num_threads`` (None: Numba's current setting), but
    one thread below :data:`PARALLEL_MIN_ATOMS` atoms."""
    if n_atoms < PARALLEL_MIN_ATOMS:
        return 1
    return max(1, numba.get_num_threads() if num_threads is None else int(num_threads))


class NeighbourListCache:
    """Neighbour lists reused across calls (molecular dynamics, relaxations) with a skin.

    The list is built with cut-offs + ``skin`` (Angstrom) and kept, with the positions it was built
    at, as long as the cell, pbc and species are unchanged and no atom has moved more than skin / 2
    since; meanwhile each call recomputes the vectors of the kept (i, j, shift) entries from the
    current positions and keeps those within the true cut-offs
    (:func:`~ace_uq_calc.kernels.neighbours.refresh_neighbour_list`). Two atoms that each moved less
    than skin / 2 approached each other by less than skin, so every pair within the cut-off now was
    within cut-off + skin then: the list equals a freshly built one entry for entry (same order, same
    floating-point vectors). ``skin = 0`` builds a new list on every call.
    """

    def __init__(self, skin: float = 0.0):
        skin = float(skin)
        if not (np.isfinite(skin) and skin >= 0.0):
            raise ValueError(f"skin must be a finite number >= 0 Angstrom, got {skin!r}")
        self.skin = skin
        self.builds = 0          # lists built (for tests and diagnostics)
        self.reuses = 0          # calls served by refreshing a kept list
        self._state = None       # (positions, cell, pbc, species, skin list, basis) of the last build

    def clear(self):
        self._state = None

    def neighbour_list(self, basis: ACEBasis, positions, cell, pbc, species) -> NeighbourList:
        """The exact neighbour list (cut-offs of ``basis``) of validated, contiguous inputs."""
        if self.skin > 0.0:
            state = self._state
            if (state is not None and state[5] is basis and state[0].shape == positions.shape
                    and (state[1] == cell).all() and (state[2] == pbc).all() and (state[3] == species).all()
                    and max_squared_displacement(positions, state[0]) < 0.25 * self.skin * self.skin):
                self.reuses += 1
                return refresh_neighbour_list(state[4], positions, cell, pbc, species, basis.cutoff_matrix)
        n_atoms = len(positions)
        _check_duplicate_positions(positions)
        _check_image_density(n_atoms, cell, pbc, basis.cutoff_max)
        self.builds += 1
        if self.skin <= 0.0:
            return build_neighbour_list(positions, cell, pbc, species, basis.cutoff_matrix)
        self._state = None
        try:
            skin_list = build_neighbour_list(positions, cell, pbc, species, basis.cutoff_matrix + self.skin)
        except ValueError:      # e.g. a cell too small for cut-off + skin only: the exact list decides
            return build_neighbour_list(positions, cell, pbc, species, basis.cutoff_matrix)
        self._state = (positions.copy(), cell.copy(), pbc.copy(), species.copy(), skin_list, basis)
        return refresh_neighbour_list(skin_list, positions, cell, pbc, species, basis.cutoff_matrix)


def prepared_structure(basis: ACEBasis, positions, cell, pbc, species):
    """(positions (N, 3), cell (3, 3), pbc (3,), species (N,)) as contiguous float64 / bool / int64 arrays,
    checked (finite positions and cell, species indices of ``basis``); errors name the problem. A scalar
    pbc applies to all three directions."""
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    cell = np.ascontiguousarray(cell, dtype=np.float64).reshape(3, 3)
    pbc = np.array(pbc, dtype=bool)
    if pbc.shape != (3,):
        pbc = np.broadcast_to(pbc, (3,)).copy()
    species = np.ascontiguousarray(species, dtype=np.int64)
    if positions.ndim != 2 or positions.shape[1] != 3 or not (all_finite(positions) and all_finite(cell)):
        check_structure(positions, cell, pbc)          # raises with the details
    n_atoms = len(positions)
    if species.shape != (n_atoms,) or not species_in_range(species, basis.n_elements):
        _check_species(species, n_atoms, basis.n_elements)
    return positions, cell, pbc, species


def checked_neighbour_list(basis: ACEBasis, positions, cell, pbc, species, neighbour_list=None,
                           neighbour_cache: "NeighbourListCache | None" = None):
    """The neighbour list for an evaluation (the caller's, the cache's or a new one), checked: no atom
    with more than :data:`MAX_NEIGHBOURS_PER_ATOM` neighbours, no pair closer than
    :data:`MIN_PAIR_DISTANCE` (ValueError naming the atoms). Inputs as for :func:`evaluate`, already
    converted to contiguous arrays."""
    n_atoms = len(positions)
    if neighbour_list is None:
        if neighbour_cache is not None:
            neighbour_list = neighbour_cache.neighbour_list(basis, positions, cell, pbc, species)
        else:
            _check_duplicate_positions(positions)
            _check_image_density(n_atoms, cell, pbc, basis.cutoff_max)
            neighbour_list = build_neighbour_list(positions, cell, pbc, species, basis.cutoff_matrix)
    else:
        _check_neighbour_list(neighbour_list, n_atoms)      # a list from the caller
    nl = neighbour_list
    most, most_atom, dmin, entry = neighbour_list_summary(nl.first, nl.distance)
    if most > MAX_NEIGHBOURS_PER_ATOM:
        _check_neighbour_list(nl, n_atoms)
    if dmin < MIN_PAIR_DISTANCE:
        dmin, i, j = minimum_pair_distance(nl)
        raise ValueError(
            f"atoms {i} and {j} are {dmin:.3g} Angstrom apart (closer than {MIN_PAIR_DISTANCE} Angstrom)"
        )
    return nl


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
    neighbour_cache: NeighbourListCache | None = None,
    num_threads: int | None = None,
) -> Evaluation:
    """Energies (and optionally forces, virial, projections) of one structure.

    positions (N, 3) Angstrom; cell (3, 3) rows = lattice vectors, Angstrom; pbc (3,) bool;
    species (N,) species indices of ``basis.elements``.
    neighbour_list: a ready :class:`NeighbourList` (else one is built, or taken from
    ``neighbour_cache``, see :class:`NeighbourListCache`). num_threads: Numba threads for the kernels
    (None: the current setting); structures below :data:`PARALLEL_MIN_ATOMS` atoms use one.
    """
    positions, cell, pbc, species = prepared_structure(basis, positions, cell, pbc, species)
    n_atoms = len(positions)
    threads = kernel_threads(n_atoms, num_threads)
    with _Threads(threads):
        nl = checked_neighbour_list(basis, positions, cell, pbc, species, neighbour_list, neighbour_cache)
        max_nd = basis.coefficients.shape[1]
        max_nf = basis.max_nfunc
        npairs = len(nl.distance)
        energies = np.empty(n_atoms)                                  # every entry written by the kernel
        pair_gradient = np.empty((npairs if forces else 0, 3))       # every entry written by the kernel
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
        _check_finite(basis, energies=energies, energy=np.array(energy), forces=force_arr, virial=virial,
                      projections=proj if projections else None,
                      nonlinear_projections=nlproj if nonlinear else None)
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
